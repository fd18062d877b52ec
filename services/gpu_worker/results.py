"""Engine results to protobuf messages (pure functions)."""

from __future__ import annotations

from collections.abc import Iterable

from services.common.convert import duration
from services.gen import transcription_pb2 as pb
from services.gen import worker_pb2
from services.gpu_worker.batching.scheduler import BatchScheduler
from services.gpu_worker.engines.base import EngineResult, Segment, Word


def word_pb(word: Word, offset: float = 0.0) -> pb.WordInfo:
    return pb.WordInfo(
        start_offset=duration(word.start + offset),
        end_offset=duration(word.end + offset),
        word=word.word,
        probability=word.probability,
    )


def segment_pb(segment: Segment, index: int, offset: float = 0.0) -> pb.Segment:
    return pb.Segment(
        id=index,
        start_offset=duration(segment.start + offset),
        end_offset=duration(segment.end + offset),
        text=segment.text,
        words=[word_pb(w, offset) for w in segment.words],
        avg_logprob=segment.avg_logprob,
        no_speech_probability=segment.no_speech_prob,
        language_code=segment.language,
    )


def transcribe_response(result: EngineResult, processing_s: float, worker_id: str) -> pb.TranscribeResponse:
    return pb.TranscribeResponse(
        segments=[segment_pb(s, i) for i, s in enumerate(result.segments)],
        transcript=result.text,
        language_code=result.language,
        language_probability=result.language_probability,
        audio_duration=duration(result.duration),
        processing_time=duration(processing_s),
        worker_id=worker_id,
    )


def alternative(words: Iterable[Word], text: str, offset: float, with_words: bool) -> pb.SpeechRecognitionAlternative:
    words = list(words)
    confidence = sum(w.probability for w in words) / len(words) if words else 0.0
    return pb.SpeechRecognitionAlternative(
        transcript=text,
        confidence=confidence,
        words=[word_pb(w, offset) for w in words] if with_words else [],
    )


def batch_pb(scheduler: BatchScheduler) -> worker_pb2.BatchStats:
    stats = scheduler.stats
    largest = max([scheduler.max_batch, *stats.batches_by_size])
    return worker_pb2.BatchStats(
        max_batch_size=scheduler.max_batch,
        batches_by_size=[stats.batches_by_size.get(size, 0) for size in range(1, largest + 1)],
        windows_decoded=stats.windows_decoded,
        windows_queued=stats.windows_queued,
        mixed_batches=stats.mixed_batches,
        fallback_decodes=stats.fallbacks,
        queue_wait_seconds_total=stats.queue_wait_s,
        busy_seconds_total=stats.busy_s,
        windows_per_second=stats.windows_per_second(),
        audio_seconds_decoded=stats.audio_s,
        encode_seconds_total=stats.encode_s,
        decode_seconds_total=stats.decode_s,
        align_seconds_total=stats.align_s,
        final_windows=stats.final_windows,
        final_wait_seconds_total=stats.final_wait_s,
    )
