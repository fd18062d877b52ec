"""The worker's speaker-embedding scheduler: every stretch of speech any call or stream wants embedded
waits in one queue beside the decode queue, and one thread embeds them in batches.

It follows the batch scheduler's priority rules (services.gpu_worker.batching.scheduler): a live
stream's final goes before bulk windows of recordings, oldest first within a priority, and while a stream
is live a bulk batch is cut to a quarter of the batch size, so a stream's labels wait for a few bulk
stretches, not for a full batch. Stretches batch together when they have the same number of frames (the
network pools statistics over all frames, so padding would change an embedding). A cancelled call's
stretches leave the queue.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Sequence
from concurrent.futures import CancelledError, Future
from dataclasses import dataclass, field

import numpy as np
import structlog

from services.gpu_worker.batching.scheduler import STREAM_RECENT_S, CallToken, Priority
from services.gpu_worker.speakers.fbank import FRAME_SHIFT, SAMPLE_RATE
from services.gpu_worker.speakers.model import SpeakerModel

log = structlog.get_logger()


@dataclass
class _Queued:
    features: np.ndarray  # (frames, 80)
    priority: Priority
    seq: int
    call: CallToken | None
    future: Future[np.ndarray]
    enqueued: float


@dataclass
class SpeakerStats:
    """What the scheduler did, for health reports and Prometheus."""

    windows_embedded: int = 0
    audio_seconds: float = 0.0
    busy_s: float = 0.0
    batches: int = 0
    windows_queued: int = 0
    batch_sizes: list[int] = field(default_factory=list)


class SpeakerScheduler:
    def __init__(self, model: SpeakerModel, max_batch: int = 16, window_s: float = 0.005) -> None:
        self.model = model
        self.max_batch = max(1, max_batch)
        self.window_s = max(0.0, window_s)
        self.stats = SpeakerStats()
        self._queue: list[_Queued] = []
        self._seq = itertools.count()
        self._cond = threading.Condition()
        self._closed = False
        self._streams_open = 0
        self._stream_seen = float("-inf")
        self._thread = threading.Thread(target=self._run, name="speaker-scheduler", daemon=True)
        self._thread.start()

    def submit(self, features: np.ndarray, priority: Priority, call: CallToken | None = None) -> Future[np.ndarray]:
        """Queue one stretch's features; the future ends with its unit-length embedding."""
        future: Future[np.ndarray] = Future()
        item = _Queued(features, priority, next(self._seq), call, future, time.monotonic())
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

    def embed(
        self, features: Sequence[np.ndarray], priority: Priority = Priority.BULK, call: CallToken | None = None
    ) -> np.ndarray:
        """Blocking: embed every stretch (on the scheduler's thread, batched with other calls'); (n, dim)."""
        futures = [self.submit(f, priority, call) for f in features]
        try:
            vectors = [f.result() for f in futures]
        finally:
            for f in futures:
                f.cancel()
        if not vectors:
            return np.zeros((0, self.model.info.dimension), dtype=np.float32)
        return np.stack(vectors)

    def stream_opened(self) -> None:
        with self._cond:
            self._streams_open += 1

    def stream_closed(self) -> None:
        with self._cond:
            self._streams_open -= 1
            self._stream_seen = time.monotonic()

    def cancel(self, call: CallToken) -> int:
        with self._cond:
            dropped = [q for q in self._queue if q.call is call]
            self._queue = [q for q in self._queue if q.call is not call]
            self.stats.windows_queued = len(self._queue)
        for q in dropped:
            q.future.cancel()
        return len(dropped)

    def close(self) -> None:
        with self._cond:
            self._closed = True
            dropped, self._queue = self._queue, []
            self._cond.notify_all()
        for q in dropped:
            q.future.cancel()

    def _next_batch(self) -> list[_Queued] | None:
        with self._cond:
            while True:
                if self._closed:
                    return None
                self._queue = [q for q in self._queue if not q.future.cancelled()]
                if not self._queue:
                    self.stats.windows_queued = 0
                    self._cond.wait()
                    continue
                head = min(self._queue, key=lambda q: (q.priority, q.seq))
                frames = head.features.shape[0]
                mates = sorted(
                    (q for q in self._queue if q.features.shape[0] == frames),
                    key=lambda q: (q.priority, q.seq),
                )
                now = time.monotonic()
                size = self.max_batch
                live = self._streams_open > 0 or now - self._stream_seen < STREAM_RECENT_S
                if head.priority == Priority.BULK and live:
                    size = max(1, self.max_batch // 4)
                waited = now - head.enqueued
                if len(mates) < size and waited < self.window_s:
                    self._cond.wait(self.window_s - waited)
                    continue
                batch = mates[:size]
                taken = {id(q) for q in batch}
                self._queue = [q for q in self._queue if id(q) not in taken]
                self.stats.windows_queued = len(self._queue)
                return batch

    def _run(self) -> None:
        while (batch := self._next_batch()) is not None:
            batch = [q for q in batch if q.future.set_running_or_notify_cancel()]
            if not batch:
                continue
            started = time.monotonic()
            try:
                vectors = self.model.embed(np.stack([q.features for q in batch]))
            except Exception as exc:  # every stretch of this batch fails with the model's error; others go on
                log.warning("speaker_batch_failed", windows=len(batch), error=str(exc))
                for q in batch:
                    q.future.set_exception(exc)
                continue
            stats = self.stats
            stats.busy_s += time.monotonic() - started
            stats.batches += 1
            stats.windows_embedded += len(batch)
            # A stretch of n frames covers (n - 1) shifts plus one 25 ms frame: about n * 10 ms.
            stats.audio_seconds += sum(q.features.shape[0] for q in batch) * FRAME_SHIFT / SAMPLE_RATE
            for q, vector in zip(batch, vectors, strict=True):
                q.future.set_result(vector)


def cancelled_error() -> CancelledError:
    return CancelledError()
