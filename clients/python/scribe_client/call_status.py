"""The real final status of a stream call to a worker, even when grpc.aio loses it.

When a worker ends a stream (a bad config, a limit) while the gateway is still forwarding the client's
audio, the forwarded write fails, and grpc.aio marks the call INTERNAL "Internal error from Core" — over
the worker's own status if that had already arrived (grpc/grpc#36066, fix pending in grpc/grpc#43486).
The client would then see INTERNAL instead of, say, INVALID_ARGUMENT with its ErrorInfo.

`StatusKeeper` records every status grpc sets on the call, as it is set, and gives back the worker's.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Coroutine
from typing import Any, TypeVar

import grpc

#: The details grpc.aio gives a call whose write failed because the call had ended.
WRITE_RACE_DETAILS = "Internal error from Core"

T = TypeVar("T")
Status = tuple[grpc.StatusCode, str, tuple[tuple[str, Any], ...]]


def _ready(coroutine: Coroutine[Any, Any, T]) -> T:
    """The value of a coroutine that completes without waiting (a call's status accessors, once the call
    has a status); raises RuntimeError if it would have to wait."""
    try:
        coroutine.send(None)
    except StopIteration as done:
        return done.value
    coroutine.close()
    raise RuntimeError("the call has no status yet")


def is_write_race(code: grpc.StatusCode | None, details: str | None) -> bool:
    return code == grpc.StatusCode.INTERNAL and details == WRITE_RACE_DETAILS


class StatusKeeper:
    """Watches one call; `settle(exc)` is the worker's status for the error `exc` the call raised."""

    def __init__(self, call: grpc.aio.Call) -> None:
        self._real: Status | None = None
        self._arrived = asyncio.Event()
        call.add_done_callback(self._record)

    def _record(self, call: grpc.aio.Call) -> None:
        # Runs inside grpc each time it sets the status, so the status read here is the one just set.
        try:
            code = _ready(call.code())
            details = _ready(call.details()) or ""
            trailing = tuple(_ready(call.trailing_metadata()) or ())
        except RuntimeError:
            return
        if self._real is None and not is_write_race(code, details):
            self._real = (code, details, trailing)
            self._arrived.set()

    async def settle(self, exc: grpc.aio.AioRpcError, wait_s: float = 1.0) -> Status:
        """`exc`'s status, unless it is the write race: then the worker's, waited for up to `wait_s`."""
        if is_write_race(exc.code(), exc.details()):
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._arrived.wait(), wait_s)
            if self._real is not None:
                return self._real
        return exc.code(), exc.details() or "", tuple(exc.trailing_metadata() or ())
