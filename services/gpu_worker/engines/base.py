"""The engine interface, and the results every layer above it shares.

An engine decodes *windows*: pieces of at most 30 s of 16 kHz audio that Whisper reads in one pass.
`decode_batch` takes several compatible windows and decodes them together (one encoder pass, one
generate call), which is where a GPU's throughput comes from. Cutting a recording into windows, queueing
them and putting segments back in order is the engine-independent work of `chunking`, `scheduler` and
`transcriber`; a second engine (another Whisper runtime, another model family) implements `Engine` only.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

#: Whisper hears at most this much audio in one window.
WINDOW_SECONDS = 30.0


@dataclass(frozen=True)
class DecodeOptions:
    """Decoding options, already validated."""

    language: str | None = None
    # Detection only among these (RecognitionOptions.language_code "de,fr"); empty: any language.
    candidates: tuple[str, ...] = ()
    task: str = "transcribe"
    beam_size: int = 5
    word_timestamps: bool = False
    vad_filter: bool = False
    initial_prompt: str | None = None
    # Temperatures tried in turn when a window's decode looks wrong (faster-whisper's fallback);
    # above 0 it samples.
    temperatures: tuple[float, ...] = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)
    # Decode the audio (at most 30 s) as one Whisper window and nothing more: no cutting at silences,
    # no temperature fallback. A streaming session re-decodes its buffer every second; its decodes run
    # at temperature 0 so a stream moved to another worker decodes exactly what the first one would have.
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
    language: str = ""  # the language its window was decoded in


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


@dataclass(frozen=True)
class WindowJob:
    """One window to decode: at most `WINDOW_SECONDS` of audio, with the options of its call.

    `flexible_prompt` lets the engine shorten the prompt to a fixed bucket of tokens so that windows of
    different live streams batch together (CTranslate2 wants <|startoftranscript|> at the same position
    in every prompt of a batch); bulk windows keep the caller's prompt whole.

    `encode_s` is how many seconds of input the encoder reads for this window (the audio, then
    silence): None lets the engine choose by the window's length (`Engine.encoder_seconds`, set by
    ENCODER_MIN_SECONDS); a caller that knows better (a live stream decoding its tail) names it. It is
    never less than the audio nor more than `WINDOW_SECONDS`.
    """

    audio: np.ndarray
    options: DecodeOptions
    temperature: float = 0.0
    flexible_prompt: bool = False
    encode_s: float | None = None


@dataclass(frozen=True)
class WindowResult:
    """A decoded window: segments with times relative to the window's start."""

    segments: tuple[Segment, ...]
    language: str
    language_probability: float
    # The decode looks wrong (repetitive, or improbable while not silent): try the next temperature.
    needs_fallback: bool = False
    avg_logprob: float = 0.0
    # Where the decode stopped, in seconds from the window's start: Whisper sometimes ends a window
    # early (at a change of speaker, after a long pause), and the audio after this is decoded again.
    covered_s: float = float("inf")


class Engine(Protocol):
    """A loaded speech model. `decode_batch` blocks; the worker calls it from its batch scheduler's thread.

    `batch_key` says which windows may share a batch: windows with equal keys are decoded together by
    one `decode_batch`, in order, and their results come back in the same order. The key holds the
    window's `encoder_seconds`, so a batch's windows share one encoder input length and each decodes as
    it would alone.
    """

    info: EngineInfo

    def batch_key(self, job: WindowJob) -> Hashable: ...

    def encoder_seconds(self, job: WindowJob) -> float:
        """Seconds of input the encoder reads for this window (its audio, then silence)."""
        ...

    def decode_batch(self, jobs: Sequence[WindowJob]) -> list[WindowResult]: ...
