"""One request id per RPC, bound for every log line, and one canonical line when the RPC ends."""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import grpc
import structlog

from services.common.errors import RequestError

REQUEST_ID_HEADER = "x-request-id"
#: Metadata the gateway puts on a batch job's calls to a worker, whose windows then wait for every interactive call's.
PRIORITY_HEADER = "x-scribe-priority"
BATCH_PRIORITY = "batch"
_SAFE_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
log = structlog.get_logger()


def request_id_from(context: grpc.aio.ServicerContext) -> str:
    """The caller's x-request-id when it is a sane token, else a new one."""
    for key, value in context.invocation_metadata() or ():
        if key == REQUEST_ID_HEADER and isinstance(value, str) and _SAFE_ID.match(value):
            return value
    return uuid.uuid4().hex[:16]


class RequestLine:
    """Fields of the canonical line; handlers add to `fields` and record the status they answer."""

    def __init__(self, method: str, request_id: str) -> None:
        self.method = method
        self.request_id = request_id
        self.code = grpc.StatusCode.OK
        self.reason: str | None = None
        self.fields: dict[str, Any] = {}

    def fail(self, err: RequestError) -> None:
        self.code, self.reason = err.code, err.reason

    def fail_code(self, code: grpc.StatusCode, reason: str | None = None) -> None:
        self.code, self.reason = code, reason


@contextmanager
def request_line(
    method: str,
    context: grpc.aio.ServicerContext,
    observe: Callable[[RequestLine, float], None] | None = None,
) -> Iterator[RequestLine]:
    """Bind the request id for the block; at its end log the canonical line and call `observe`."""
    line = RequestLine(method, request_id_from(context))
    tokens = structlog.contextvars.bind_contextvars(request_id=line.request_id, method=method)
    # Read now: once a client has cancelled, grpc may have freed the call, and peer() then crashes the
    # process with SIGSEGV (seen with grpcio 1.85 when a TranscribeWithProgress client went away).
    peer = context.peer()
    started = time.perf_counter()
    try:
        yield line
    except (asyncio.CancelledError, GeneratorExit):
        # A streaming handler whose client went away is cancelled, or closed at its `yield`.
        line.code = grpc.StatusCode.CANCELLED
        raise
    except Exception as exc:
        if line.code == grpc.StatusCode.OK and not isinstance(exc, grpc.aio.AbortError):
            line.code = grpc.StatusCode.INTERNAL
            log.exception("request_failed")
        raise
    finally:
        elapsed = time.perf_counter() - started
        if observe is not None:
            observe(line, elapsed)
        log.info(
            "request",
            code=line.code.name,
            reason=line.reason,
            duration_ms=round(elapsed * 1000, 1),
            peer=peer,
            **line.fields,
        )
        structlog.contextvars.reset_contextvars(**tokens)
