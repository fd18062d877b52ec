"""Engine results to protobuf messages (pure functions shared by worker and tests)."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
from google.protobuf import duration_pb2

from services.common import audio
from services.common.config import Settings
from services.gen import transcription_pb2 as pb
from services.gpu_worker.engine import EngineResult, Segment, Word


def duration(seconds: float) -> duration_pb2.Duration:
    d = duration_pb2.Duration()
    d.FromNanoseconds(round(max(seconds, 0.0) * 1e9))
    return d


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


def limits_pb(settings: Settings) -> pb.Limits:
    return pb.Limits(
        max_message_bytes=settings.max_message_bytes,
        max_audio_duration=duration(settings.max_audio_seconds),
        max_stream_duration=duration(settings.max_stream_seconds),
        max_beam_size=settings.max_beam_size,
        max_initial_prompt_chars=settings.max_initial_prompt_chars,
        stream_idle_timeout=duration(settings.stream_idle_timeout_s),
    )


def decode_request_audio(request: pb.TranscribeRequest, max_seconds: float, max_ratio: float = 0.0) -> np.ndarray:
    """Audio of a Transcribe request as 16 kHz mono float32, or AudioError."""
    if request.encoding == pb.AUDIO_ENCODING_LINEAR16:
        return audio.decode_linear16(
            request.audio_content, request.sample_rate_hertz, request.audio_channel_count, max_seconds
        )
    return audio.decode_container(request.audio_content, max_seconds, max_ratio)
