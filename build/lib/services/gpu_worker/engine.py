"""The engine interface the worker's servicer talks to, and the results it returns.

A second engine (another Whisper runtime, another model family) implements `Engine`; the servicer,
the streaming session and the gateway do not change.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np


@dataclass(frozen=True)
class DecodeOptions:
    """Decoding options, already validated."""

    language: str | None = None
    task: str = "transcribe"
    beam_size: int = 5
    word_timestamps: bool = False
    vad_filter: bool = False
    initial_prompt: str | None = None
    # Temperatures tried in turn when a decode looks wrong (faster-whisper's fallback); above 0 it samples.
    temperatures: tuple[float, ...] = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)
    # Decode the audio (at most 30 s) as one Whisper window and nothing more: no second window
    # after the last word, no temperature fallback. A streaming session re-decodes its buffer
    # every second; a second window costs another encoder pass and fills the pause after the
    # speech with the prompt's words.
    single_window: bool = False


@dataclass(frozen=True)
class Word:
    start: float
    end: float
    word: str
    probability: float


@dataclass(frozen=True)
class Segment:
    id: int
    start: float
    end: float
    text: str
    words: tuple[Word, ...] = ()
    avg_logprob: float = 0.0
    no_speech_prob: float = 0.0


@dataclass(frozen=True)
class EngineResult:
    segments: tuple[Segment, ...]
    language: str
    language_probability: float
    duration: float
    extra: dict[str, float] = field(default_factory=dict)

    @property
    def text(self) -> str:
        return " ".join(s.text.strip() for s in self.segments if s.text.strip())


@dataclass(frozen=True)
class EngineInfo:
    name: str
    model: str
    device: str
    device_kind: str  # "cpu" or "cuda"
    compute_type: str
    multilingual: bool
    languages: tuple[str, ...]


class Engine(Protocol):
    """A loaded speech model. `transcribe` blocks; the worker calls it off the event loop.

    `on_segment`, when given, is called with each segment as soon as it is decoded (on the inference
    thread), which is how TranscribeWithProgress reports progress; an exception it raises ends the call.
    """

    info: EngineInfo

    def transcribe(
        self, audio: np.ndarray, options: DecodeOptions, on_segment: Callable[[Segment], None] | None = None
    ) -> EngineResult: ...
