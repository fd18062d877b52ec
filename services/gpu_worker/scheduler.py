"""The worker's batch scheduler: every window any call wants decoded waits in one queue, and one
thread decodes them in batches.

Batches are formed by priority (live-stream finals, then live-stream interims, then bulk windows of
Transcribe and TranscribeWithProgress), oldest first, and filled with windows the engine can decode
together (equal `Engine.batch_key`), from any call (on a CPU, a stream's batch takes only stream windows). A batch waits at most `window_s` for more windows
when it is not full. Because a batch is at most `max_batch` windows, a live stream waits for at most one
batch of a long file, never for the whole file; because streams go first, bulk work never starves them.

A window whose decode looks wrong is queued again at the next temperature, on its own, so it never holds
back the batch it came in. A call's windows that are still queued leave the queue when the call is
cancelled; windows of other calls in the same batch are not affected.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections import Counter, deque
from collections.abc import Hashable
from concurrent.futures import CancelledError, Future
from dataclasses import dataclass, field, replace
from enum import IntEnum

import structlog

from services.gpu_worker.engine import Engine, WindowJob, WindowResult

log = structlog.get_logger()


class Priority(IntEnum):
    FINAL = 0  # a live stream's decode that may become final
    INTERIM = 1  # a live stream's interim hypothesis
    BULK = 2  # a window of a recording


class CallToken:
    """Identifies one call's windows in the queue, and cancels them together."""

    _ids = itertools.count(1)

    def __init__(self) -> None:
        self.id = next(self._ids)
        self.cancelled = threading.Event()


@dataclass
class _Queued:
    job: WindowJob
    priority: Priority
    seq: int
    key: Hashable
    call: CallToken | None
    future: Future[WindowResult]
    enqueued: float
    tried: list[WindowResult] = field(default_factory=list)


@dataclass
class BatchStats:
    """What the scheduler did, for health reports and Prometheus (read on the event loop)."""

    batches_by_size: Counter[int] = field(default_factory=Counter)
    windows_decoded: int = 0
    windows_queued: int = 0
    mixed_batches: int = 0  # batches that held windows of more than one call
    fallbacks: int = 0
    queue_wait_s: float = 0.0
    busy_s: float = 0.0
    # Recent (time, windows) pairs for a windows-per-second rate.
    recent: deque[tuple[float, int]] = field(default_factory=lambda: deque(maxlen=256))

    def windows_per_second(self, horizon_s: float = 30.0) -> float:
        now = time.monotonic()
        counted = sum(n for t, n in self.recent if now - t <= horizon_s)
        return counted / horizon_s


class BatchScheduler:
    """`streams_with_bulk`: whether a batch led by a live stream's window is filled up with bulk windows.
    On a GPU a batch of eight costs about what one window does, so it is; on a CPU the encoder's cost
    grows with every window in the batch, and a stream's final would wait for seven bulk windows."""

    def __init__(self, engine: Engine, max_batch: int, window_s: float, streams_with_bulk: bool = True) -> None:
        self.engine = engine
        self.max_batch = max(1, max_batch)
        self.window_s = max(0.0, window_s)
        self.streams_with_bulk = streams_with_bulk
        self.stats = BatchStats()
        self._queue: list[_Queued] = []
        self._seq = itertools.count()
        self._cond = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="batch-scheduler", daemon=True)
        self._thread.start()

    def submit(self, job: WindowJob, priority: Priority, call: CallToken | None = None) -> Future[WindowResult]:
        """Queue one window; thread-safe. The future ends with its result, the engine's error, or cancelled."""
        future: Future[WindowResult] = Future()
        item = _Queued(job, priority, next(self._seq), self.engine.batch_key(job), call, future, time.monotonic())
        with self._cond:
            if self._closed:
                future.cancel()
                return future
            self._queue.append(item)
            self.stats.windows_queued = len(self._queue)
            self._cond.notify()
        return future

    def queued(self, up_to: Priority = Priority.BULK) -> int:
        """Windows waiting with this priority or a higher one."""
        with self._cond:
            return sum(1 for q in self._queue if q.priority <= up_to)

    def cancel(self, call: CallToken) -> int:
        """Drop the call's queued windows (their futures are cancelled); a batch already running finishes."""
        call.cancelled.set()
        with self._cond:
            dropped = [q for q in self._queue if q.call is call]
            self._queue = [q for q in self._queue if q.call is not call]
            self.stats.windows_queued = len(self._queue)
        for item in dropped:
            _cancel(item.future)
        return len(dropped)

    def close(self) -> None:
        with self._cond:
            self._closed = True
            dropped, self._queue = self._queue, []
            self._cond.notify_all()
        for item in dropped:
            _cancel(item.future)

    # --- the scheduler thread -------------------------------------------------------------------

    def _next_batch(self) -> list[_Queued] | None:
        """Wait for work and take the next batch off the queue; None when closed."""
        with self._cond:
            while True:
                if self._closed:
                    return None
                # Windows whose caller stopped waiting (a failed sibling window) take no batch place.
                self._queue = [q for q in self._queue if not q.future.cancelled()]
                if not self._queue:
                    self.stats.windows_queued = 0
                    self._cond.wait()
                    continue
                head = min(self._queue, key=lambda q: (q.priority, q.seq))
                lowest = Priority.BULK if self.streams_with_bulk or head.priority == Priority.BULK else Priority.INTERIM
                mates = sorted(
                    (q for q in self._queue if q.key == head.key and q.priority <= lowest),
                    key=lambda q: (q.priority, q.seq),
                )
                waited = time.monotonic() - head.enqueued
                if len(mates) < self.max_batch and waited < self.window_s:
                    self._cond.wait(self.window_s - waited)
                    continue
                batch = mates[: self.max_batch]
                taken = {id(q) for q in batch}
                self._queue = [q for q in self._queue if id(q) not in taken]
                self.stats.windows_queued = len(self._queue)
                return batch

    def _run(self) -> None:
        while (batch := self._next_batch()) is not None:
            # A window queued again for a fallback is already running.
            batch = [q for q in batch if q.future.running() or q.future.set_running_or_notify_cancel()]
            if batch:
                self._decode(batch)

    def _decode(self, batch: list[_Queued]) -> None:
        started = time.monotonic()
        try:
            results = self.engine.decode_batch([q.job for q in batch])
        except Exception as exc:  # every call in this batch fails with the engine's error; others go on
            log.warning("batch_failed", windows=len(batch), error=str(exc))
            for q in batch:
                q.future.set_exception(exc)
            return
        finished = time.monotonic()
        stats = self.stats
        stats.batches_by_size[len(batch)] += 1
        stats.windows_decoded += len(batch)
        stats.queue_wait_s += sum(started - q.enqueued for q in batch)
        stats.busy_s += finished - started
        stats.recent.append((finished, len(batch)))
        if len({q.call.id if q.call else -q.seq for q in batch}) > 1:
            stats.mixed_batches += 1
        for q, result in zip(batch, results, strict=True):
            try:
                self._settle(q, result)
            except Exception as exc:  # the scheduler thread must outlive any one window
                log.exception("window_settle_failed")
                if not q.future.done():
                    q.future.set_exception(exc)

    def _settle(self, q: _Queued, result: WindowResult) -> None:
        temperatures = q.job.options.temperatures
        later = [t for t in temperatures if t > q.job.temperature]
        if not result.needs_fallback or not later or q.job.options.single_window:
            q.future.set_result(self._best(q, result))
            return
        # Decode again at the next temperature, alone: this batch's other windows are done.
        q.tried.append(result)
        self.stats.fallbacks += 1
        with self._cond:
            if self._closed or (q.call is not None and q.call.cancelled.is_set()):
                _cancel(q.future)
                return
            retry = replace(q.job, temperature=later[0])
            q.job, q.key = retry, ("fallback", q.seq, self.engine.batch_key(retry))
            q.enqueued = time.monotonic()
            # set_running_or_notify_cancel() was called: the future stays RUNNING while it waits again.
            self._queue.append(q)
            self.stats.windows_queued = len(self._queue)
            self._cond.notify()

    @staticmethod
    def _best(q: _Queued, result: WindowResult) -> WindowResult:
        """faster-whisper's rule when every temperature failed: the most probable decode."""
        if not q.tried or not result.needs_fallback:
            return result
        return max([*q.tried, result], key=lambda r: r.avg_logprob)


def _cancel(future: Future[WindowResult]) -> None:
    """Cancel a queued window; one queued again for a fallback is already running, so fail it instead."""
    if not future.cancel() and not future.done():
        future.set_exception(CancelledError())
