"""What a gateway's job runs wait on: fair slots for their pieces, and notices that a job changed.

`FairSlots` bounds the pieces of batch jobs on the workers at once (JOB_WORKER_SLOTS per serving worker,
so interactive calls always find slots free) and, when pieces of several clients wait, hands the next
free slot to each client in turn: one client's ten thousand files queue behind each other, not in front
of another client's ten.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import OrderedDict, deque
from collections.abc import AsyncIterator, Callable, Iterator

#: How often waiters look at the slot count again (it follows the serving workers).
RECHECK_S = 1.0


class FairSlots:
    def __init__(self, capacity: Callable[[], int]) -> None:
        self._capacity = capacity
        self.in_use = 0
        self._waiting: OrderedDict[str, deque[asyncio.Future[None]]] = OrderedDict()
        self._wake = asyncio.Event()

    @property
    def waiting(self) -> int:
        return sum(len(q) for q in self._waiting.values())

    def _grant(self) -> None:
        """Give free slots to the waiters, one client at a time in turn."""
        while self._waiting and self.in_use < self._capacity():
            owner, queue = next(iter(self._waiting.items()))
            future = queue.popleft()
            if queue:
                self._waiting.move_to_end(owner)  # this client goes to the back of the line
            else:
                del self._waiting[owner]
            if not future.done():
                future.set_result(None)
                self.in_use += 1

    @contextlib.asynccontextmanager
    async def take(self, owner: str) -> AsyncIterator[None]:
        """Hold one slot for `owner` for the duration of the block."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting.setdefault(owner, deque()).append(future)
        self._grant()
        try:
            while not future.done():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(future), RECHECK_S)
                self._grant()  # the fleet may have grown meanwhile
        except BaseException:
            if future.done() and not future.cancelled():
                self.in_use -= 1  # granted just as the waiter was cancelled: give it back
            else:
                future.cancel()
                queue = self._waiting.get(owner)
                if queue is not None and future in queue:
                    queue.remove(future)
                    if not queue:
                        del self._waiting[owner]
            self._grant()
            raise
        try:
            yield
        finally:
            self.in_use -= 1
            self._grant()


class JobEvents:
    """Wakes the watchers of a job on this gateway when it changes here; changes made by another gateway
    are seen by the watchers' polling (JOB_POLL_S)."""

    def __init__(self) -> None:
        self._waiters: dict[str, set[asyncio.Event]] = {}

    def changed(self, job_id: str) -> None:
        for event in self._waiters.get(job_id, ()):
            event.set()

    @contextlib.contextmanager
    def watch(self, job_id: str) -> Iterator[asyncio.Event]:
        event = asyncio.Event()
        self._waiters.setdefault(job_id, set()).add(event)
        try:
            yield event
        finally:
            waiters = self._waiters.get(job_id)
            if waiters is not None:
                waiters.discard(event)
                if not waiters:
                    del self._waiters[job_id]
