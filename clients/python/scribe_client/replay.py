"""Audio chunks a stream can send again when its first attempt is refused as busy.

A caller hands `stream` an iterator that can be read only once (a microphone, a file reader). If the
server answers RESOURCE_EXHAUSTED with a RetryInfo before any result, the next attempt must start
over with the same audio, so the chunks are kept until the call is committed (its first response
arrived), then forgotten as they are sent.

The caller's iterator is read in one place only: a superseded attempt that is still blocked on it
adds what it gets to the shared log, where the next attempt finds it. The async version awaits the
next chunk in a task of its own and shields it, so cancelling a failed attempt never cancels (and
closes) the caller's async generator.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Iterator
from typing import Generic, TypeVar

T = TypeVar("T")
_END = object()


class _Log(Generic[T]):
    """The chunks read so far and not yet forgotten; positions count from the first chunk ever read."""

    def __init__(self) -> None:
        self.items: list[T] = []
        self.base = 0
        self.ended = False
        self.committed = False
        self.current = 0

    def has(self, position: int) -> bool:
        return position < self.base + len(self.items)

    def take(self, position: int) -> T:
        item = self.items[position - self.base]
        if self.committed:  # no attempt can come after this one: forget what it has sent
            del self.items[: position + 1 - self.base]
            self.base = position + 1
        return item


class Replay(Generic[T]):
    """Thread-safe: gRPC reads each attempt's requests on a thread of its own."""

    def __init__(self, source: Iterator[T]) -> None:
        self._source = source
        self._log: _Log[T] = _Log()
        self._lock = threading.Lock()

    def commit(self) -> None:
        with self._lock:
            self._log.committed = True

    @property
    def committed(self) -> bool:
        return self._log.committed

    def attempt(self) -> Iterator[T]:
        """The chunks from the first one, for a new attempt; earlier attempts stop at their next read."""
        with self._lock:
            self._log.current += 1
            me = self._log.current
        position = 0
        while True:
            with self._lock:
                log = self._log
                if me != log.current:
                    return
                if not log.has(position):
                    if log.ended:
                        return
                    item = next(self._source, _END)  # blocking with the lock held: one reader at a time
                    if item is _END:
                        log.ended = True
                        return
                    log.items.append(item)  # type: ignore[arg-type]
                    if me != log.current:
                        return  # superseded while waiting: the new attempt sends it
                chunk = log.take(position)
            position += 1
            yield chunk


class AsyncReplay(Generic[T]):
    """The same for an async iterator, on one event loop."""

    def __init__(self, source: AsyncIterator[T]) -> None:
        self._source = source
        self._log: _Log[T] = _Log()
        self._pending: asyncio.Future[object] | None = None

    def commit(self) -> None:
        self._log.committed = True

    @property
    def committed(self) -> bool:
        return self._log.committed

    async def _read(self) -> None:
        if self._pending is None:
            self._pending = asyncio.ensure_future(anext(self._source, _END))
        pending = self._pending
        item = await asyncio.shield(pending)
        if self._pending is pending:  # the first reader to wake files the chunk
            self._pending = None
            if item is _END:
                self._log.ended = True
            else:
                self._log.items.append(item)  # type: ignore[arg-type]

    async def attempt(self) -> AsyncIterator[T]:
        self._log.current += 1
        me = self._log.current
        position = 0
        while me == self._log.current:
            if not self._log.has(position):
                if self._log.ended:
                    return
                await self._read()
                continue
            chunk = self._log.take(position)
            position += 1
            yield chunk

    def close(self) -> None:
        if self._pending is not None:
            self._pending.cancel()
