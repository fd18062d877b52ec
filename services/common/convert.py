"""Protobuf helpers the gateway and the worker share: durations, limits, request audio."""

from __future__ import annotations

import numpy as np
from google.protobuf import duration_pb2

from services.common import audio
from services.common.config import Settings
from services.common.config.speakers import MAX_KNOWN_SPEAKERS, MAX_SPEAKER_COUNT
from services.gen import transcription_pb2 as pb


def duration(seconds: float) -> duration_pb2.Duration:
    d = duration_pb2.Duration()
    d.FromNanoseconds(round(max(seconds, 0.0) * 1e9))
    return d


def limits_pb(settings: Settings) -> pb.Limits:
    return pb.Limits(
        max_message_bytes=settings.max_message_bytes,
        max_audio_duration=duration(settings.max_audio_seconds),
        max_stream_duration=duration(settings.max_stream_seconds),
        max_beam_size=settings.max_beam_size,
        max_initial_prompt_chars=settings.max_initial_prompt_chars,
        stream_idle_timeout=duration(settings.stream_idle_timeout_s),
        max_speaker_count=MAX_SPEAKER_COUNT,
        max_known_speakers=MAX_KNOWN_SPEAKERS,
    )


def decode_request_audio(request: pb.TranscribeRequest, max_seconds: float, max_ratio: float = 0.0) -> np.ndarray:
    """Audio of a Transcribe request as 16 kHz mono float32, or AudioError."""
    if request.encoding == pb.AUDIO_ENCODING_LINEAR16:
        return audio.decode_linear16(
            request.audio_content, request.sample_rate_hertz, request.audio_channel_count, max_seconds
        )
    return audio.decode_container(request.audio_content, max_seconds, max_ratio)
