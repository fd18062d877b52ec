"""A stream decode's result turned into the stream's new words (pure).

Whisper re-hears audio whose words are already committed (the context kept before the tail), drifts its
word times, and fills a pause at the end of its input with text it has seen. The session's state at the
time the decode was asked for (`DecodeContext`) is enough to undo all three, so an interim decoded while
the stream goes on is judged exactly as the session would have judged it then.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from services.common.audio import SAMPLE_RATE
from services.gpu_worker.engines.base import DecodeOptions, EngineResult, Word
from services.gpu_worker.streaming.agreement import after_committed, drop_repeated_tail, monotonic
from services.gpu_worker.streaming.vad import WINDOW

NO_SPEECH = 0.5  # no-speech probability above which a segment in silence is dropped
RECENT = 20  # committed words a decode is aligned against


@dataclass(frozen=True)
class DecodeContext:
    """What judging one decode needs, captured when it was asked for."""

    committed: tuple[Word, ...]  # the latest committed words (at most RECENT)
    speech_start: int  # sample where the current utterance's speech began
    judged: tuple[tuple[int, float], ...]  # (window start sample, speech probability) of the buffered audio
    threshold: float  # the VAD's speech threshold


@dataclass(frozen=True)
class InterimRequest:
    """An interim decode asked for while the stream goes on: its audio (a copy) and how to judge it."""

    audio: np.ndarray
    options: DecodeOptions
    offset: float  # stream time of the audio's start, s
    until: int  # stream sample where the audio ends
    context: DecodeContext
    committed_count: int  # the session's counts when asked: an interim overtaken by finals is dropped
    utterances: int


def new_words(result: EngineResult, offset: float, ctx: DecodeContext) -> list[Word]:
    """The decoded words after those already committed, in stream time (`offset`: the audio's start, s)."""
    committed_end = ctx.committed[-1].end if ctx.committed else 0.0
    words = [
        Word(w.start + offset, w.end + offset, w.word, w.probability)
        for s in result.segments
        # Whisper fills a pause at the end of the buffer with text it has seen (often the prompt
        # again); a segment the model doubts that lies where the VAD heard no speech is that.
        if not (s.no_speech_prob > NO_SPEECH and silent(ctx, s.start + offset, s.end + offset))
        for w in s.words
        if w.word
    ]
    in_buffer = [w for w in ctx.committed if w.end > offset]
    if in_buffer:
        words = after_committed(in_buffer, words, committed_end)
        if committed_end > ctx.speech_start / SAMPLE_RATE:
            # Only inside one utterance: across a pause, a repeated word was said twice.
            words = drop_repeated_tail(list(ctx.committed), words)
    return monotonic(words, committed_end)


def silent(ctx: DecodeContext, start: float, end: float) -> bool:
    """Whether the VAD judged every window of the stream span [start, end] (seconds) silent."""
    first, last = round(start * SAMPLE_RATE) - WINDOW, round(end * SAMPLE_RATE)
    inside = [p for at, p in ctx.judged if first < at < last]
    return bool(inside) and max(inside) < ctx.threshold
