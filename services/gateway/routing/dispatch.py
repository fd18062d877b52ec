"""The fleet's bounded queues, one a model: unary work waits here for a free slot on a worker of its model.

Each model has its own queue of GATEWAY_QUEUE_SIZE places, its own retry delay and its own wait for a
worker to come up: a burst of calls for one model never fills the queue or delays the calls of another.
Work waits in the gateway rather than in a worker's own queue, so a worker that dies holds no queued
audio, a worker that comes back is used at once, and a full queue is refused at the door with
RESOURCE_EXHAUSTED and a retry delay instead of slowing every client down.

Batch jobs' pieces (`batch=True`) queue here too, below interactive work: a piece takes a free slot of
its model only while no interactive call waits for one of that model's workers, is never refused for a
full queue (the job runner bounds how many it asks for), and waits for a worker however long the fleet is
down (a model scaled to no workers at all is refused, MODEL_NOT_SERVING, as for every call).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager

import grpc

from services.common.errors import RequestError
from services.gateway.routing.registry import Registry, WorkerHandle

#: Workers one unary call tries before it gives the client the last one's UNAVAILABLE.
MAX_TRIES = 6


def free_worker(workers: Iterable[WorkerHandle], exclude: set[str], turn: int = 0) -> WorkerHandle | None:
    """The least busy SERVING worker with a free slot, or None; ties rotate with `turn`. A worker with its
    model in memory comes before one that would load it first (WORKER_IDLE_UNLOAD_S).

    `exclude` (the workers a call already failed on) is a preference: a worker a call lost is marked
    unreachable until its health comes back, and then it is a new process that may serve the call."""
    serving = [w for w in sorted(workers, key=lambda w: w.name) if w.serving and w.in_flight < w.capacity]
    free = [w for w in serving if w.name not in exclude] or serving
    if not free:
        return None

    def rank(w: WorkerHandle) -> tuple[bool, float, int]:
        return (not w.loaded, w.in_flight / w.capacity, w.streams)

    best = min(rank(w) for w in free)
    tied = [w for w in free if rank(w) == best]
    return tied[turn % len(tied)]


class Dispatcher:
    def __init__(self, registry: Registry, queue_size: int, wait_s: float = 30.0) -> None:
        self._registry = registry
        self.queue_size = queue_size  # per model
        self._wait_s = wait_s  # how long a call waits in the queue while no worker of its model serves
        self.queued: Counter[str | None] = Counter()  # interactive calls waiting, by model
        self.batch_waiting = 0  # batch jobs' pieces waiting
        self._changed = asyncio.Condition()
        self._turns = itertools.count()
        # moving average of one call's time on a worker, by model, for the retry delay
        self._service_s: dict[str | None, float] = {}

    @property
    def waiting(self) -> int:
        """Calls waiting, all models together."""
        return sum(self.queued.values())

    def capacity(self, model: str | None = None) -> int:
        return sum(w.capacity for w in self._registry.of(model) if w.serving)

    def retry_after_s(self, model: str | None = None) -> float:
        """About when a slot frees up: the model's queue ahead, spread over its slots."""
        slots = max(1, self.capacity(model))
        service = self._service_s.get(model, 1.0)
        return round(min(30.0, max(0.5, service * (self.queued[model] + 1) / slots)), 1)

    async def notify(self) -> None:
        """Wake waiters: a slot freed up or a worker's state changed."""
        async with self._changed:
            self._changed.notify_all()

    async def wait_for_serving(self, timeout: float, model: str | None = None) -> bool:
        """Wait until some worker of `model` serves; False when `timeout` passed first."""

        def serving() -> bool:
            return any(w.serving for w in self._registry.of(model))

        async with self._changed:
            try:
                await asyncio.wait_for(self._changed.wait_for(serving), timeout)
            except TimeoutError:
                return False
        return True

    def no_worker(self, model: str | None, waited_s: float | None = None) -> RequestError:
        """UNAVAILABLE: NO_WORKER_SERVING when no worker serves at all, MODEL_NOT_SERVING when others do."""
        waited = f" within {waited_s:.0f} s" if waited_s is not None else ""
        if model is None or not any(w.serving for w in self._registry.workers.values()):
            return RequestError(
                grpc.StatusCode.UNAVAILABLE,
                "NO_WORKER_SERVING",
                f"no transcription worker came up{waited} ({self._registry.summary(model)}); "
                "check `scribe status` or `supervisorctl status`",
            )
        return RequestError(
            grpc.StatusCode.UNAVAILABLE,
            "MODEL_NOT_SERVING",
            f"no worker of model {model} is serving{waited} ({self._registry.summary(model)}); other models are: "
            f"start its workers (`scribe scale {model}=1`) or name another model",
        )

    @asynccontextmanager
    async def slot(
        self, exclude: set[str], timeout: float | None, model: str | None = None, batch: bool = False
    ) -> AsyncIterator[WorkerHandle]:
        """Hold one slot on a worker of `model` (any worker for None) for the duration of the block;
        `batch` for a batch job's piece. A call that already held a slot (`exclude` names the workers it
        tried: it is being retried after its worker went away) is never refused QUEUE_FULL: it was admitted,
        and refusing it now would fail a call the fleet accepted because a worker restarted under it."""
        if model is not None and not self._registry.of(model):
            raise self.no_worker(model)  # no worker at all (scaled to 0): nothing to wait for
        handle: WorkerHandle | None
        if batch:
            handle = await self._wait_batch(exclude, model)
        else:
            # Calls already queued go first: a newcomer only takes a free slot when nobody waits.
            free = free_worker(self._registry.of(model), exclude, next(self._turns))
            handle = None if self.queued[model] else free
        if handle is None:
            if self.queued[model] >= self.queue_size and not exclude:
                named = f" of model {model}" if model is not None else ""
                raise RequestError(
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                    "QUEUE_FULL",
                    f"all {self.capacity(model)} worker slots{named} are busy and {self.queued[model]} requests "
                    f"are queued (GATEWAY_QUEUE_SIZE={self.queue_size}): retry after the delay in RetryInfo",
                    retry_after_s=self.retry_after_s(model),
                )
            handle = await self._wait(exclude, timeout, model)
        handle.in_flight += 1
        started = time.monotonic()
        try:
            yield handle
        finally:
            handle.in_flight -= 1
            if not batch:  # a piece's minutes on a worker say nothing of when an interactive slot frees
                took = time.monotonic() - started
                self._service_s[model] = 0.8 * self._service_s.get(model, 1.0) + 0.2 * took
            await self.notify()

    def interactive_waits(self, model: str | None) -> bool:
        """Whether an interactive call waits for a worker a piece of `model` could take: one of the same
        model, or of any model (None). A worker serves one model, so calls waiting for another model's
        workers never hold back this model's pieces, and this model's pieces never take their slots."""
        if model is None:
            return self.waiting > 0
        return self.queued[model] > 0 or self.queued[None] > 0

    async def _wait_batch(self, exclude: set[str], model: str | None) -> WorkerHandle:
        """A free slot of `model` while no interactive call waits for one of its workers."""
        self.batch_waiting += 1
        try:
            async with self._changed:
                while True:
                    if not self.interactive_waits(model):
                        handle = free_worker(self._registry.of(model), exclude, next(self._turns))
                        if handle is not None:
                            return handle
                    await self._changed.wait()
        finally:
            self.batch_waiting -= 1

    async def _wait(self, exclude: set[str], timeout: float | None, model: str | None) -> WorkerHandle:
        """The next free slot, within `timeout`. While no worker serves at all (every worker restarting,
        as after `supervisorctl restart gpu_worker:*`), the call waits up to `wait_s` for one to come up,
        as a stream does, instead of failing while the fleet is seconds from serving again."""
        self.queued[model] += 1
        now = time.monotonic()
        deadline = None if timeout is None else now + timeout
        unserved_since: float | None = None
        try:
            async with self._changed:
                while True:
                    workers = self._registry.of(model)
                    handle = free_worker(workers, exclude, next(self._turns))
                    if handle is not None:
                        if self.batch_waiting:
                            # a piece held back by this call may take a slot still free once it leaves
                            # the queue (the finally below runs before any waiter wakes)
                            self._changed.notify_all()
                        return handle
                    if model is not None and not workers:
                        raise self.no_worker(model)  # its workers went away (scaled to 0) while it waited
                    now = time.monotonic()
                    limits = [] if deadline is None else [deadline - now]
                    if any(w.serving for w in workers):
                        unserved_since = None
                    else:
                        unserved_since = now if unserved_since is None else unserved_since
                        limits.append(unserved_since + self._wait_s - now)
                        if limits[-1] <= 0:
                            raise self.no_worker(model, self._wait_s)
                    if deadline is not None and limits[0] <= 0:
                        raise RequestError(
                            grpc.StatusCode.DEADLINE_EXCEEDED,
                            "QUEUED_PAST_DEADLINE",
                            "the deadline passed while the request waited for a free worker",
                        )
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._changed.wait(), min(limits) if limits else None)
        finally:
            self.queued[model] -= 1
