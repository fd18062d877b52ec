"""TranscribeWithProgress: the events of one transcription, from the inference thread to protobuf.

The inference thread decodes the audio and hands its windows to the batch scheduler; each segment is
emitted as soon as every window before it is decoded, so reports come in audio order and the percent
never goes back. The servicer turns each event into one TranscribeWithProgressResponse.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from services.common.audio import SAMPLE_RATE
from services.common.convert import duration
from services.gen import transcription_pb2 as pb
from services.gpu_worker.batching.transcriber import Transcriber
from services.gpu_worker.engines.base import DecodeOptions, EngineResult, Segment
from services.gpu_worker.results import segment_pb, transcribe_response
from services.gpu_worker.speakers.embedder import Embeddings, SpeakerJob


@dataclass(frozen=True)
class Started:
    """The audio is decoded; transcription begins."""

    audio_s: float


@dataclass(frozen=True)
class SegmentDone:
    segment: Segment
    audio_s: float


@dataclass(frozen=True)
class Finished:
    result: EngineResult
    elapsed_s: float
    embeddings: Embeddings | None = None


ProgressEvent = Started | SegmentDone | Finished


def transcribe_with_progress(
    emit: Callable[[ProgressEvent], None],
    engine: Transcriber,
    decode: Callable[[], np.ndarray],
    options: DecodeOptions,
    speakers: SpeakerJob | None = None,
) -> None:
    """Blocking: decode the audio with `decode`, transcribe it, and emit each step."""
    started = time.perf_counter()
    samples = decode()
    audio_s = samples.size / SAMPLE_RATE
    emit(Started(audio_s))

    def transcribe(on_windows: Callable[..., None] | None = None) -> EngineResult:
        return engine.transcribe(
            samples, options, on_segment=lambda s: emit(SegmentDone(s, audio_s)), on_windows=on_windows
        )

    if speakers is None:
        emit(Finished(transcribe(), time.perf_counter() - started))
        return
    result, embeddings = speakers.run(samples, transcribe)
    emit(Finished(result, time.perf_counter() - started, embeddings))


def percent(done_s: float, total_s: float) -> float:
    """Share of the audio done; segment ends can overshoot the audio by a few milliseconds."""
    if total_s <= 0:
        return 0.0
    return round(min(100.0, 100.0 * done_s / total_s), 2)


def progress_pb(event: ProgressEvent, worker_id: str) -> pb.TranscribeWithProgressResponse:
    if isinstance(event, Started):
        return pb.TranscribeWithProgressResponse(
            processed_audio=duration(0.0),
            audio_duration=duration(event.audio_s),
            progress_percent=0.0,
            worker_id=worker_id,
        )
    if isinstance(event, SegmentDone):
        done = min(event.segment.end, event.audio_s)
        return pb.TranscribeWithProgressResponse(
            segments=[segment_pb(event.segment, event.segment.id)],
            processed_audio=duration(done),
            audio_duration=duration(event.audio_s),
            progress_percent=percent(done, event.audio_s),
            worker_id=worker_id,
        )
    result = transcribe_response(event.result, event.elapsed_s, worker_id)
    if event.embeddings is not None:
        result.speaker_embeddings.CopyFrom(event.embeddings.to_pb())
    return pb.TranscribeWithProgressResponse(
        processed_audio=duration(event.result.duration),
        audio_duration=duration(event.result.duration),
        progress_percent=100.0,
        result=result,
        worker_id=worker_id,
    )
