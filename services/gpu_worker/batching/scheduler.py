"""The worker's batch scheduler: every window any call wants decoded waits in one queue, and one
thread decodes them in batches.

Batches are formed by priority (live-stream windows that may become final, then live-stream interims,
then bulk windows of Transcribe and TranscribeWithProgress, then the pieces of batch jobs, which the
gateway marks), oldest first, and filled with windows the engine can decode together (equal
`Engine.batch_key`), from any call, where batching pays (a GPU; see `BatchScheduler`). A batch waits at
most `window_s` for more windows when it is not full. A live stream's decode waits for the batch in
progress, never for a queue of them: streams go first.

A window whose decode looks wrong is queued again at the next temperature, on its own, so it never holds
back the batch it came in. A call's windows that are still queued leave the queue when the call is
cancelled; windows of other calls in the same batch are not affected.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections import Counter, deque
from collections.abc import Hashable, Iterable
from concurrent.futures import CancelledError, Future
from dataclasses import dataclass, field, replace
from enum import IntEnum

import structlog

from services.common.audio import SAMPLE_RATE
from services.gpu_worker.batching import packing
from services.gpu_worker.engines.base import Engine, WindowJob, WindowResult

log = structlog.get_logger()

#: Live streams count as live this long after their last window (see BatchScheduler).
STREAM_RECENT_S = 5.0


class Priority(IntEnum):
    FINAL = 0  # a live stream's decode that may become final
    INTERIM = 1  # a live stream's interim hypothesis
    BULK = 2  # a window of a recording
    BATCH = 3  # a window of a batch job's piece: after every interactive call and stream


class CallToken:
    """Identifies one call's windows in the queue, and cancels them together."""

    _ids = itertools.count(1)

    def __init__(self) -> None:
        self.id = next(self._ids)
        self.cancelled = threading.Event()


@dataclass(frozen=True)
class WindowTiming:
    """Where one window's time went, in seconds: waiting behind other batches (`queue_s`), waiting for
    batch-mates (`form_s`), and its batch's encoder pass, decoder and word alignment (`encode_s`,
    `decode_s`, `align_s`: the whole batch's, which is what the window waited for)."""

    queue_s: float
    form_s: float
    encode_s: float
    decode_s: float
    align_s: float
    batch: int  # windows in its batch

    @property
    def total_s(self) -> float:
        return self.queue_s + self.form_s + self.encode_s + self.decode_s + self.align_s


class WindowFuture(Future[WindowResult]):
    """A window's result, and once it is decoded, where its time went."""

    timing: WindowTiming | None = None


@dataclass
class _Queued:
    job: WindowJob
    priority: Priority
    seq: int
    key: Hashable
    call: CallToken | None
    future: WindowFuture
    enqueued: float
    form_s: float = 0.0  # time its batch waited for more windows
    tried: list[WindowResult] = field(default_factory=list)
    packable: bool = True  # False once a packed window failed it: it is then decoded alone
    counted: bool = False  # its audio is in BatchStats.audio_s (once, however often it is decoded)


@dataclass
class BatchStats:
    """What the scheduler did, for health reports and Prometheus (read on the event loop)."""

    batches_by_size: Counter[int] = field(default_factory=Counter)
    windows_decoded: int = 0
    windows_queued: int = 0
    mixed_batches: int = 0  # batches that held windows of more than one call
    packed_windows: int = 0  # short windows decoded inside a packed window
    fallbacks: int = 0
    queue_wait_s: float = 0.0
    busy_s: float = 0.0
    # Engine time by phase, summed over batches (see WindowTiming).
    encode_s: float = 0.0
    decode_s: float = 0.0
    align_s: float = 0.0
    # Live streams' windows that may become final: how many, and how long they waited before decoding.
    final_windows: int = 0
    final_wait_s: float = 0.0
    audio_s: float = 0.0  # audio decoded, each window counted once (not again for a fallback or an unpack)
    # Recent (time, windows) pairs for a windows-per-second rate.
    recent: deque[tuple[float, int]] = field(default_factory=lambda: deque(maxlen=256))
    # Recent (start, end) of batches, for how busy the decode thread has been lately.
    busy: deque[tuple[float, float]] = field(default_factory=lambda: deque(maxlen=256))

    def busy_fraction(self, horizon_s: float = 3.0, now: float | None = None) -> float:
        """The share of the last `horizon_s` the decode thread spent decoding."""
        now = time.monotonic() if now is None else now
        since = now - horizon_s
        batches = tuple(self.busy)  # one copy under the GIL: the decode thread appends meanwhile
        return sum(max(0.0, end - max(start, since)) for start, end in batches if end > since) / horizon_s

    def windows_per_second(self, horizon_s: float = 30.0) -> float:
        now = time.monotonic()
        counted = sum(n for t, n in self.recent if now - t <= horizon_s)
        return counted / horizon_s


class BatchScheduler:
    """`streams_with_bulk`: whether batching pays on this device. On a GPU a batch of sixteen costs about
    what one window does, so a batch led by a live stream's window is filled up with other windows (bulk
    ones included), and a stream's decode waits at most for the batch in progress.

    On a CPU a batch costs what its windows cost one after another, so a batch only makes its first window
    wait for the others. There, a live stream's window is decoded alone, a window that may become final
    before any interim, and while streams are live (a stream is open, or a stream window came in the last
    `STREAM_RECENT_S`) bulk windows are decoded one at a time too: a final then waits for at most one
    window of other work, never for a batch of them. An open stream counts even while none of its windows
    is queued: on a loaded CPU its next decode may come many seconds after the last one."""

    def __init__(
        self,
        engine: Engine,
        max_batch: int,
        window_s: float,
        streams_with_bulk: bool = True,
        pack_short: bool = False,
    ) -> None:
        self.engine = engine
        self.max_batch = max(1, max_batch)
        self.window_s = max(0.0, window_s)
        self.streams_with_bulk = streams_with_bulk
        self.pack_short = pack_short  # short bulk windows of several calls share one window (see packing)
        self._stream_seen = float("-inf")  # when a live stream's window last came in
        self._streams_open = 0
        self.stats = BatchStats()
        self._queue: list[_Queued] = []
        self._seq = itertools.count()
        self._cond = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="batch-scheduler", daemon=True)
        self._thread.start()

    def submit(self, job: WindowJob, priority: Priority, call: CallToken | None = None) -> WindowFuture:
        """Queue one window; thread-safe. The future ends with its result, the engine's error, or cancelled."""
        future = WindowFuture()
        item = _Queued(job, priority, next(self._seq), self.engine.batch_key(job), call, future, time.monotonic())
        with self._cond:
            if self._closed:
                future.cancel()
                return future
            if priority < Priority.BULK:
                self._stream_seen = item.enqueued
            self._queue.append(item)
            self.stats.windows_queued = len(self._queue)
            self._cond.notify()
        return future

    def stream_opened(self) -> None:
        with self._cond:
            self._streams_open += 1

    def stream_closed(self) -> None:
        with self._cond:
            self._streams_open -= 1
            self._stream_seen = time.monotonic()

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

    def _next_batch(self) -> list[list[_Queued]] | None:
        """Wait for work and take the next batch off the queue: windows to decode, each one queued window
        or several packed into one; None when closed."""
        ready_since: float | None = None  # when this thread was free and had work
        with self._cond:
            while True:
                if self._closed:
                    return None
                # Windows whose caller stopped waiting (a failed sibling window) take no batch place.
                self._queue = [q for q in self._queue if not q.future.cancelled()]
                if not self._queue:
                    self.stats.windows_queued = 0
                    ready_since = None
                    self._cond.wait()
                    continue
                if ready_since is None:
                    ready_since = time.monotonic()
                head = min(self._queue, key=lambda q: (q.priority, q.seq))
                now = time.monotonic()
                size, mates = self._mates(head, now)
                waited = now - head.enqueued
                if len(mates) < size and waited < self.window_s:
                    self._cond.wait(self.window_s - waited)
                    continue
                groups = self._group(mates, head, size)
                taken = {id(q) for group in groups for q in group}
                for group in groups:
                    for q in group:
                        q.form_s = max(0.0, now - max(ready_since, q.enqueued))
                self._queue = [q for q in self._queue if id(q) not in taken]
                self.stats.windows_queued = len(self._queue)
                return groups

    def _mates(self, head: _Queued, now: float) -> tuple[int, list[_Queued]]:
        """How many windows the batch led by `head` may hold, and the queued windows that may join it."""
        if self.streams_with_bulk:
            return self.max_batch, self._sorted(q for q in self._queue if q.key == head.key)
        if head.priority < Priority.BULK:
            return 1, [head]
        if head.priority == Priority.BATCH:
            # On a CPU a batch costs the sum of its windows: one window at a time, an interactive call that
            # comes in waits for at most one window of a batch job before its own.
            return 1, [head]
        live = self._streams_open > 0 or now - self._stream_seen < STREAM_RECENT_S
        bulk = self._sorted(q for q in self._queue if q.key == head.key and q.priority == Priority.BULK)
        return (1 if live else self.max_batch), bulk

    @staticmethod
    def _sorted(queued: Iterable[_Queued]) -> list[_Queued]:
        return sorted(queued, key=lambda q: (q.priority, q.seq))

    def _group(self, mates: list[_Queued], head: _Queued, size: int) -> list[list[_Queued]]:
        """The first `size` windows to decode, short bulk windows packed together where that is on."""
        if not self.pack_short or head.priority != Priority.BULK:
            return [[q] for q in mates[:size]]
        candidates = [q for q in mates if q.priority == Priority.BULK]
        allowed = [q.packable and q.job.temperature == 0 for q in candidates]
        groups = packing.plan([q.job for q in candidates], allowed)
        return [[candidates[i] for i in group] for group in groups[:size]]

    def _run(self) -> None:
        while (groups := self._next_batch()) is not None:
            # A window queued again (fallback, or out of a pack) is already running.
            groups = [
                [q for q in group if q.future.running() or q.future.set_running_or_notify_cancel()] for group in groups
            ]
            groups = [group for group in groups if group]
            if groups:
                self._decode(groups)

    def _decode(self, groups: list[list[_Queued]]) -> None:
        packs = [packing.pack([q.job for q in group]) if len(group) > 1 else None for group in groups]
        jobs = [p.job if p else group[0].job for p, group in zip(packs, groups, strict=True)]
        members = [q for group in groups for q in group]
        started = time.monotonic()
        try:
            results = self.engine.decode_batch(jobs)
        except Exception as exc:  # every call in this batch fails with the engine's error; others go on
            log.warning("batch_failed", windows=len(jobs), error=str(exc))
            for q in members:
                q.future.set_exception(exc)
            return
        finished = time.monotonic()
        phases = dict(getattr(self.engine, "last_phases", None) or {})
        stats = self.stats
        stats.batches_by_size[len(jobs)] += 1
        stats.windows_decoded += len(jobs)
        stats.packed_windows += sum(len(group) for group in groups if len(group) > 1)
        stats.queue_wait_s += sum(started - q.enqueued for q in members)
        for q in members:
            if not q.counted:
                q.counted = True
                stats.audio_s += q.job.audio.size / SAMPLE_RATE
        stats.busy_s += finished - started
        encode, align = phases.get("encode", 0.0), phases.get("align", 0.0)
        # Whatever the engine did not name (generate, language, segments) counts as decoding.
        decode = max(0.0, finished - started - encode - align)
        stats.encode_s += encode
        stats.decode_s += decode
        stats.align_s += align
        for q in members:
            queue = max(0.0, started - q.enqueued - q.form_s)
            q.future.timing = WindowTiming(queue, q.form_s, encode, decode, align, len(jobs))
            if q.priority == Priority.FINAL:
                stats.final_windows += 1
                stats.final_wait_s += started - q.enqueued
        stats.recent.append((finished, len(jobs)))
        stats.busy.append((started, finished))
        if len({q.call.id if q.call else -q.seq for q in members}) > 1:
            stats.mixed_batches += 1
        for group, p, result in zip(groups, packs, results, strict=True):
            own: list[WindowResult | None] = (
                packing.unpack(result, p, [q.job.options.word_timestamps for q in group]) if p else [result]
            )
            for q, mine in zip(group, own, strict=True):
                try:
                    if mine is None:
                        self._requeue(q, q.job, unpack=True)
                    else:
                        self._settle(q, mine)
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
        self._requeue(q, replace(q.job, temperature=later[0]))

    def _requeue(self, q: _Queued, job: WindowJob, unpack: bool = False) -> None:
        """Queue a window again (the future stays RUNNING meanwhile): at a higher temperature, on its own,
        or out of a packed window that did not cover it, first in line among its mates."""
        with self._cond:
            if self._closed or (q.call is not None and q.call.cancelled.is_set()):
                _cancel(q.future)
                return
            if unpack:
                q.packable = False
                q.key = self.engine.batch_key(job)
            else:
                q.key = ("fallback", q.seq, self.engine.batch_key(job))
                q.enqueued = time.monotonic()
            q.job = job
            self._queue.append(q)
            self.stats.windows_queued = len(self._queue)
            self._cond.notify()

    @staticmethod
    def _best(q: _Queued, result: WindowResult) -> WindowResult:
        """faster-whisper's rule when every temperature failed: the most probable decode."""
        if not q.tried or not result.needs_fallback:
            return result
        return max([*q.tried, result], key=lambda r: r.avg_logprob)


def _cancel(future: WindowFuture) -> None:
    """Cancel a queued window; one queued again for a fallback is already running, so fail it instead."""
    if not future.cancel() and not future.done():
        future.set_exception(CancelledError())
