"""A recording's voice embeddings on a worker, for the gateway's clustering.

The inference thread that transcribes a recording also queues its speech for embedding: as soon as the
transcriber has cut the recording at silences (the windows' VAD spans, so Silero runs once), each stretch
of speech is cut into windows (`windows.py`), turned into fbank features and queued on the speaker
scheduler; the embeddings are collected after the transcript, so the speaker model runs while Whisper
decodes. Known speakers' clips are embedded the same way, one mean embedding per clip.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import TypeVar

import grpc
import numpy as np

from services.common.audio import SAMPLE_RATE
from services.common.errors import RequestError
from services.gen import transcription_pb2 as pb
from services.gpu_worker.batching.chunking import Window, speech_spans
from services.gpu_worker.batching.scheduler import CallToken, Priority
from services.gpu_worker.batching.transcriber import current_call
from services.gpu_worker.speakers.fbank import normalised
from services.gpu_worker.speakers.options import REASON, SpeakerOptions, decode_clip
from services.gpu_worker.speakers.scheduler import SpeakerScheduler
from services.gpu_worker.speakers.windows import speech_windows

T = TypeVar("T")


@dataclass
class Embeddings:
    """Windows of speech (seconds, from the start of the audio) and their unit-length embeddings."""

    starts: np.ndarray
    ends: np.ndarray
    vectors: np.ndarray
    reference_names: tuple[str, ...] = ()
    references: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), dtype=np.float32))

    def to_pb(self) -> pb.SpeakerEmbeddings:
        return pb.SpeakerEmbeddings(
            starts=[float(s) for s in self.starts],
            ends=[float(e) for e in self.ends],
            dimension=int(self.vectors.shape[1]) if self.vectors.ndim == 2 else 0,
            vectors=self.vectors.astype("<f4").tobytes(),
            reference_names=list(self.reference_names),
            reference_vectors=self.references.astype("<f4").tobytes() if self.references.size else b"",
        )


class RecordingEmbedder:
    """Embeds one recording's speech alongside its transcription: `start` when the windows are known
    (Transcriber's on_windows), `result` once the transcript is done."""

    def __init__(
        self,
        scheduler: SpeakerScheduler,
        audio: np.ndarray,
        priority: Priority = Priority.BULK,
        call: CallToken | None = None,
    ) -> None:
        self._scheduler = scheduler
        self._audio = audio
        self._priority = priority
        self._call = call
        self._windows: list[tuple[int, int]] = []
        self._futures: list[Future[np.ndarray]] = []
        self._started = False

    def start(self, windows: Sequence[Window]) -> None:
        spans = [span for w in windows for span in (w.speech or ((w.start, w.end),))]
        self._queue(spans)

    def _queue(self, spans: list[tuple[int, int]]) -> None:
        self._started = True
        self._windows = speech_windows(spans)
        self._futures = [
            self._scheduler.submit(normalised(self._audio[a:b]), self._priority, self._call) for a, b in self._windows
        ]

    def result(self) -> Embeddings:
        if not self._started:  # the transcriber never cut the audio (nothing to decode): find speech here
            self._queue(speech_spans(self._audio) if self._audio.size else [])
        try:
            vectors = [f.result() for f in self._futures]
        finally:
            for f in self._futures:
                f.cancel()
        dim = self._scheduler.model.info.dimension
        bounds = np.array(self._windows, dtype=np.float64).reshape(-1, 2) / SAMPLE_RATE
        return Embeddings(
            starts=bounds[:, 0],
            ends=bounds[:, 1],
            vectors=np.stack(vectors) if vectors else np.zeros((0, dim), dtype=np.float32),
        )


def clip_embedding(scheduler: SpeakerScheduler, clip: np.ndarray, call: CallToken | None = None) -> np.ndarray | None:
    """One voice print of a clip of one person: the normalised mean of its windows' embeddings; None
    when the clip holds too little speech."""
    windows = speech_windows(speech_spans(clip))
    if not windows:
        return None
    vectors = scheduler.embed([normalised(clip[a:b]) for a, b in windows], Priority.BULK, call)
    mean = vectors.mean(axis=0)
    return (mean / max(float(np.linalg.norm(mean)), 1e-9)).astype(np.float32)


@dataclass(frozen=True)
class SpeakerJob:
    """What one call needs for speaker labels: the worker's scheduler and the request's validated options."""

    scheduler: SpeakerScheduler
    options: SpeakerOptions
    field: str  # where the config sits in the request, for error messages
    max_decode_ratio: float = 0.0

    def references(self, call: CallToken | None = None) -> tuple[tuple[str, ...], np.ndarray]:
        """The known speakers' names and voice prints; INVALID_ARGUMENT naming a clip that is unusable."""
        names, vectors = [], []
        for i, voice in enumerate(self.options.known):
            clip = decode_clip(voice, i, self.field, self.max_decode_ratio)
            vector = clip_embedding(self.scheduler, clip, call)
            if vector is None:
                raise RequestError(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    REASON,
                    f"{self.field}.known_speakers[{i}].audio_content ({voice.name!r}) holds too little speech",
                )
            names.append(voice.name)
            vectors.append(vector)
        dim = self.scheduler.model.info.dimension
        return tuple(names), np.stack(vectors) if vectors else np.zeros((0, dim), dtype=np.float32)

    def run(
        self,
        audio: np.ndarray,
        transcribe: Callable[[Callable[[list[Window]], None]], T],
        priority: Priority = Priority.BULK,
    ) -> tuple[T, Embeddings]:
        """`transcribe(on_windows)` with this recording's speech embedded alongside; blocking."""
        call = current_call.get()
        names, references = self.references(call)
        embedder = RecordingEmbedder(self.scheduler, audio, priority, call)
        result = transcribe(embedder.start)
        embeddings = embedder.result()
        embeddings.reference_names, embeddings.references = names, references
        return result, embeddings
