"""The fleet's one bounded queue: unary work waits here for a free worker slot.

Work waits in the gateway rather than in a worker's own queue, so a worker that dies holds no queued
audio, a worker that comes back is used at once, and a full queue is refused at the door with
RESOURCE_EXHAUSTED and a retry delay instead of slowing every client down.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager

import grpc

from services.common.errors import RequestError
from services.gateway.registry import Registry, WorkerHandle


def free_worker(workers: Iterable[WorkerHandle], exclude: set[str], turn: int = 0) -> WorkerHandle | None:
    """The least busy SERVING worker with a free slot, or None; ties rotate with `turn`."""
    free = [
        w
        for w in sorted(workers, key=lambda w: w.name)
        if w.name not in exclude and w.serving and w.in_flight < w.capacity
    ]
    if not free:
        return None
    best = min((w.in_flight / w.capacity, w.streams) for w in free)
    tied = [w for w in free if (w.in_flight / w.capacity, w.streams) == best]
    return tied[turn % len(tied)]


class Dispatcher:
    def __init__(self, registry: Registry, queue_size: int) -> None:
        self._registry = registry
        self.queue_size = queue_size
        self.waiting = 0
        self._changed = asyncio.Condition()
        self._turns = itertools.count()
        self._service_s = 1.0  # moving average of one call's time on a worker, for the retry delay

    def capacity(self) -> int:
        return sum(w.capacity for w in self._registry.workers.values() if w.serving)

    def retry_after_s(self) -> float:
        """About when a slot frees up: the queue ahead, spread over the fleet's slots."""
        slots = max(1, self.capacity())
        return round(min(30.0, max(0.5, self._service_s * (self.waiting + 1) / slots)), 1)

    async def notify(self) -> None:
        """Wake waiters: a slot freed up or a worker's state changed."""
        async with self._changed:
            self._changed.notify_all()

    async def wait_for_serving(self, timeout: float) -> bool:
        """Wait until some worker serves; False when `timeout` passed first."""

        def serving() -> bool:
            return any(w.serving for w in self._registry.workers.values())

        async with self._changed:
            try:
                await asyncio.wait_for(self._changed.wait_for(serving), timeout)
            except TimeoutError:
                return False
        return True

    def _no_worker(self) -> RequestError:
        return RequestError(
            grpc.StatusCode.UNAVAILABLE,
            "NO_WORKER_SERVING",
            f"no transcription worker is serving ({self._registry.summary()}); "
            "check `scribe status` or `supervisorctl status`",
        )

    @asynccontextmanager
    async def slot(self, exclude: set[str], timeout: float | None) -> AsyncIterator[WorkerHandle]:
        """Hold one slot on a worker for the duration of the block."""
        # Calls already queued go first: a newcomer only takes a free slot when nobody waits.
        handle = None if self.waiting else free_worker(self._registry.workers.values(), exclude, next(self._turns))
        if handle is None:
            if not any(w.serving and w.name not in exclude for w in self._registry.workers.values()):
                raise self._no_worker()
            if self.waiting >= self.queue_size:
                raise RequestError(
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                    "QUEUE_FULL",
                    f"all {self.capacity()} worker slots are busy and {self.waiting} requests are queued "
                    f"(GATEWAY_QUEUE_SIZE={self.queue_size}): retry after the delay in RetryInfo",
                    retry_after_s=self.retry_after_s(),
                )
            handle = await self._wait(exclude, timeout)
        handle.in_flight += 1
        started = time.monotonic()
        try:
            yield handle
        finally:
            handle.in_flight -= 1
            self._service_s = 0.8 * self._service_s + 0.2 * (time.monotonic() - started)
            await self.notify()

    async def _wait(self, exclude: set[str], timeout: float | None) -> WorkerHandle:
        self.waiting += 1
        try:
            async with self._changed:
                found: list[WorkerHandle] = []

                def ready() -> bool:
                    handle = free_worker(self._registry.workers.values(), exclude, next(self._turns))
                    if handle is not None:
                        found.append(handle)
                        return True
                    return not any(w.serving and w.name not in exclude for w in self._registry.workers.values())

                try:
                    await asyncio.wait_for(self._changed.wait_for(ready), timeout)
                except TimeoutError:
                    raise RequestError(
                        grpc.StatusCode.DEADLINE_EXCEEDED,
                        "QUEUED_PAST_DEADLINE",
                        "the deadline passed while the request waited for a free worker",
                    ) from None
                if not found:
                    raise self._no_worker()
                return found[-1]
        finally:
            self.waiting -= 1
