"""The fleet's one bounded queue: unary work waits here for a free worker slot.

Work waits in the gateway rather than in a worker's own queue, so a worker that dies holds no queued
audio, a worker that comes back is used at once, and a full queue is refused at the door with
RESOURCE_EXHAUSTED and a retry delay instead of slowing every client down.

Batch jobs' pieces (`batch=True`) queue here too, below interactive work: a piece takes a free slot only
while no interactive call waits, is never refused for a full queue (the job runner bounds how many it
asks for), and waits for a worker however long the fleet is down.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager

import grpc

from services.common.errors import RequestError
from services.gateway.routing.registry import Registry, WorkerHandle

#: Workers one unary call tries before it gives the client the last one's UNAVAILABLE.
MAX_TRIES = 6


def free_worker(workers: Iterable[WorkerHandle], exclude: set[str], turn: int = 0) -> WorkerHandle | None:
    """The least busy SERVING worker with a free slot, or None; ties rotate with `turn`.

    `exclude` (the workers a call already failed on) is a preference: a worker a call lost is marked
    unreachable until its health comes back, and then it is a new process that may serve the call."""
    serving = [w for w in sorted(workers, key=lambda w: w.name) if w.serving and w.in_flight < w.capacity]
    free = [w for w in serving if w.name not in exclude] or serving
    if not free:
        return None
    best = min((w.in_flight / w.capacity, w.streams) for w in free)
    tied = [w for w in free if (w.in_flight / w.capacity, w.streams) == best]
    return tied[turn % len(tied)]


class Dispatcher:
    def __init__(self, registry: Registry, queue_size: int, wait_s: float = 30.0) -> None:
        self._registry = registry
        self.queue_size = queue_size
        self._wait_s = wait_s  # how long a call waits in the queue while no worker serves at all
        self.waiting = 0  # interactive calls waiting
        self.batch_waiting = 0  # batch jobs' pieces waiting
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
    async def slot(self, exclude: set[str], timeout: float | None, batch: bool = False) -> AsyncIterator[WorkerHandle]:
        """Hold one slot on a worker for the duration of the block; `batch` for a batch job's piece."""
        handle: WorkerHandle | None
        if batch:
            handle = await self._wait_batch(exclude)
        else:
            # Calls already queued go first: a newcomer only takes a free slot when nobody waits.
            handle = None if self.waiting else free_worker(self._registry.workers.values(), exclude, next(self._turns))
        if handle is None:
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
            if not batch:  # a piece's minutes on a worker say nothing of when an interactive slot frees
                self._service_s = 0.8 * self._service_s + 0.2 * (time.monotonic() - started)
            await self.notify()

    async def _wait_batch(self, exclude: set[str]) -> WorkerHandle:
        """A free slot that no interactive call is waiting for."""
        self.batch_waiting += 1
        try:
            async with self._changed:
                while True:
                    if not self.waiting:
                        handle = free_worker(self._registry.workers.values(), exclude, next(self._turns))
                        if handle is not None:
                            return handle
                    await self._changed.wait()
        finally:
            self.batch_waiting -= 1

    async def _wait(self, exclude: set[str], timeout: float | None) -> WorkerHandle:
        """The next free slot, within `timeout`. While no worker serves at all (every worker restarting,
        as after `supervisorctl restart gpu_worker:*`), the call waits up to `wait_s` for one to come up,
        as a stream does, instead of failing while the fleet is seconds from serving again."""
        self.waiting += 1
        now = time.monotonic()
        deadline = None if timeout is None else now + timeout
        unserved_since: float | None = None
        try:
            async with self._changed:
                while True:
                    handle = free_worker(self._registry.workers.values(), exclude, next(self._turns))
                    if handle is not None:
                        return handle
                    now = time.monotonic()
                    limits = [] if deadline is None else [deadline - now]
                    if any(w.serving for w in self._registry.workers.values()):
                        unserved_since = None
                    else:
                        unserved_since = now if unserved_since is None else unserved_since
                        limits.append(unserved_since + self._wait_s - now)
                        if limits[-1] <= 0:
                            raise self._no_worker()
                    if deadline is not None and limits[0] <= 0:
                        raise RequestError(
                            grpc.StatusCode.DEADLINE_EXCEEDED,
                            "QUEUED_PAST_DEADLINE",
                            "the deadline passed while the request waited for a free worker",
                        )
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._changed.wait(), min(limits) if limits else None)
        finally:
            self.waiting -= 1
