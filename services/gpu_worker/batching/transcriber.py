"""A recording (or a stream's buffer) through the batch scheduler: cut into windows, decoded in
batches with other calls' windows, and put back together in audio order with exact times."""

from __future__ import annotations

import contextvars
from collections.abc import Callable
from typing import Protocol

import numpy as np

from services.common.audio import SAMPLE_RATE
from services.gpu_worker.batching.chunking import Window, cut_recording
from services.gpu_worker.batching.scheduler import BatchScheduler, CallToken, Priority, WindowFuture
from services.gpu_worker.engines.base import (
    WINDOW_SECONDS,
    DecodeOptions,
    EngineInfo,
    EngineResult,
    Segment,
    WindowJob,
    WindowResult,
    Word,
)

#: Times one window's leftover speech is decoded again after its decoder stopped early.
_MAX_RESTS = 3

#: The call the current inference thread works for; the runtime sets it, so a cancelled RPC can drop
#: its windows from the queue.
current_call: contextvars.ContextVar[CallToken | None] = contextvars.ContextVar("current_call", default=None)
#: The priority of the current call's windows: BULK, or BATCH for a batch job's piece (the servicer sets it
#: from the gateway's metadata before the call's thread starts).
call_priority: contextvars.ContextVar[Priority] = contextvars.ContextVar("call_priority", default=Priority.BULK)


def _shift(segment: Segment, offset: float, limit: float, index: int) -> Segment:
    """A window's segment in recording time, clipped to the window (Whisper may stamp past its end)."""

    def at(t: float) -> float:
        return offset + min(max(t, 0.0), limit)

    return Segment(
        id=index,
        start=at(segment.start),
        end=at(segment.end),
        text=segment.text,
        words=tuple(Word(at(w.start), at(w.end), w.word, w.probability) for w in segment.words),
        avg_logprob=segment.avg_logprob,
        no_speech_prob=segment.no_speech_prob,
        language=segment.language,
    )


def timings(futures: list[WindowFuture]) -> dict[str, float]:
    """Where the windows' time went (`WindowTiming`), summed: a live stream's one window, or a call's."""
    done = [f.timing for f in futures if f.timing is not None]
    if not done:
        return {}
    return {
        "queue_s": sum(t.queue_s for t in done),
        "form_s": sum(t.form_s for t in done),
        "encode_s": sum(t.encode_s for t in done),
        "decode_s": sum(t.decode_s for t in done),
        "align_s": sum(t.align_s for t in done),
        "batch": float(max(t.batch for t in done)),
    }


class LanguageTally:
    """A recording's language: the one most of its speech was decoded in (each window detects its own)."""

    def __init__(self) -> None:
        self._seconds: dict[str, float] = {}
        self._weighted: dict[str, float] = {}
        self._first: tuple[str, float] | None = None

    def add(self, result: WindowResult) -> None:
        if self._first is None:
            self._first = (result.language, result.language_probability)
        speech = sum(max(0.0, s.end - s.start) for s in result.segments)
        if speech <= 0:
            return
        self._seconds[result.language] = self._seconds.get(result.language, 0.0) + speech
        self._weighted[result.language] = (
            self._weighted.get(result.language, 0.0) + speech * result.language_probability
        )

    def result(self, fallback: str) -> tuple[str, float]:
        """(language, probability averaged over its speech); the first window's without any speech."""
        if not self._seconds:
            return self._first or (fallback, 1.0)
        language = max(self._seconds, key=lambda code: self._seconds[code])
        return language, self._weighted[language] / self._seconds[language]


class Decoder(Protocol):
    """What a streaming session needs: `Transcriber`, or a scripted stand-in in unit tests."""

    def transcribe(
        self,
        audio: np.ndarray,
        options: DecodeOptions,
        on_segment: Callable[[Segment], None] | None = None,
        priority: Priority = Priority.BULK,
        encode_s: float | None = None,
    ) -> EngineResult: ...


class Transcriber:
    """What the servicer and streaming sessions call: `transcribe` blocks its (inference) thread while the
    scheduler decodes the windows."""

    def __init__(self, scheduler: BatchScheduler) -> None:
        self.scheduler = scheduler
        self.info: EngineInfo = scheduler.engine.info

    def transcribe(
        self,
        audio: np.ndarray,
        options: DecodeOptions,
        on_segment: Callable[[Segment], None] | None = None,
        priority: Priority = Priority.BULK,
        encode_s: float | None = None,
        on_windows: Callable[[list[Window]], None] | None = None,
    ) -> EngineResult:
        """`encode_s`: a single window's encoder input (`WindowJob.encode_s`); None lets the engine choose.
        `on_windows` is told the windows (with their VAD speech spans) once they are queued, while the
        scheduler decodes them: speaker embedding uses the same spans, so Silero runs once."""
        if options.single_window:
            windows = [Window(0, min(audio.size, int(WINDOW_SECONDS * SAMPLE_RATE)))] if audio.size else []
        else:
            windows = cut_recording(audio)
        call = current_call.get()
        if priority == Priority.BULK:
            priority = call_priority.get()
        first = options.temperatures[0] if options.temperatures and not options.single_window else 0.0

        def submit(window: Window) -> WindowFuture:
            job = WindowJob(
                audio[window.start : window.end],
                options,
                first,
                flexible_prompt=options.single_window,
                encode_s=encode_s,
            )
            return self.scheduler.submit(job, priority, call)

        futures = [submit(w) for w in windows]
        if on_windows is not None:
            try:
                on_windows(windows)
            except BaseException:
                for pending in futures:
                    pending.cancel()
                raise
        rests: list[WindowFuture] = []
        segments: list[Segment] = []
        heard = LanguageTally()
        try:
            for window, future in zip(windows, futures, strict=True):
                part, result = window, future.result()  # in audio order: all before it are out
                for attempt in range(_MAX_RESTS + 1):
                    heard.add(result)
                    for segment in result.segments:
                        shifted = _shift(segment, part.start / SAMPLE_RATE, part.seconds, len(segments))
                        segments.append(shifted)
                        if on_segment is not None:
                            on_segment(shifted)
                    # The decoder stopped before the window's speech ended: decode the rest, like
                    # Whisper's own seek, before any later window's segments go out.
                    rest = None if options.single_window or attempt == _MAX_RESTS else part.rest(result.covered_s)
                    if rest is None:
                        break
                    rests.append(submit(rest))
                    part, result = rest, rests[-1].result()
        finally:
            for pending in (*futures, *rests):
                pending.cancel()  # when a callback or a window failed: nobody waits for the others
        language, probability = heard.result(options.language or self._default_language())
        return EngineResult(
            segments=tuple(segments),
            language=language,
            language_probability=probability,
            duration=audio.size / SAMPLE_RATE,
            extra=timings([*futures, *rests]),
        )

    def _default_language(self) -> str:
        return "en" if not self.info.multilingual else self.info.languages[0]
