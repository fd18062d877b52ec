"""A request's speaker options, validated: the gateway checks them before it shards a recording, the
worker again before it embeds; every refusal names the field to fix."""

from __future__ import annotations

from dataclasses import dataclass

import grpc
import numpy as np

from services.common import audio
from services.common.config.speakers import MAX_KNOWN_SPEAKERS
from services.common.config.speakers import MAX_SPEAKER_COUNT as MAX_SPEAKERS
from services.common.errors import RequestError
from services.gen import transcription_pb2 as pb

#: Length of a known speaker's clip, in seconds.
CLIP_SECONDS = (2.0, 30.0)
MAX_NAME_CHARS = 64
REASON = "BAD_DIARIZATION_CONFIG"


@dataclass(frozen=True)
class KnownVoice:
    name: str
    audio_content: bytes


@dataclass(frozen=True)
class SpeakerOptions:
    min_speakers: int  # 0: decide
    max_speakers: int  # 0: decide, up to MAX_SPEAKERS
    known: tuple[KnownVoice, ...] = ()


def _invalid(message: str) -> RequestError:
    return RequestError(grpc.StatusCode.INVALID_ARGUMENT, REASON, message)


def speaker_options(config: pb.SpeakerDiarizationConfig, field: str) -> SpeakerOptions:
    """`config` (found at `field`, e.g. "options.diarization_config") checked; raises RequestError."""
    low, high = config.min_speaker_count, config.max_speaker_count
    for name, value in (("min_speaker_count", low), ("max_speaker_count", high)):
        if not 0 <= value <= MAX_SPEAKERS:
            raise _invalid(f"{field}.{name} is {value}: it must be from 0 (decide from the audio) to {MAX_SPEAKERS}")
    if low and high and low > high:
        raise _invalid(f"{field}.min_speaker_count {low} is over {field}.max_speaker_count {high}")
    known = list(config.known_speakers)
    if len(known) > MAX_KNOWN_SPEAKERS:
        raise _invalid(f"{field}.known_speakers has {len(known)} entries; at most {MAX_KNOWN_SPEAKERS} are allowed")
    seen: set[str] = set()
    for i, speaker in enumerate(known):
        where = f"{field}.known_speakers[{i}]"
        name = speaker.name.strip()
        if not name or len(name) > MAX_NAME_CHARS:
            raise _invalid(f"{where}.name must be 1 to {MAX_NAME_CHARS} characters")
        if name.isdigit():
            raise _invalid(f"{where}.name {name!r} is a number; numbers are the labels of unknown voices")
        if name in seen:
            raise _invalid(f"{where}.name {name!r} is given twice")
        seen.add(name)
        if not speaker.audio_content:
            raise _invalid(f"{where}.audio_content is empty: send a {CLIP_SECONDS[0]:g} to {CLIP_SECONDS[1]:g} s clip")
    if known and high and len(known) > high:
        raise _invalid(f"{field}.known_speakers names {len(known)} voices, more than max_speaker_count {high}")
    return SpeakerOptions(low, high, tuple(KnownVoice(s.name.strip(), s.audio_content) for s in known))


def decode_clip(voice: KnownVoice, index: int, field: str, max_decode_ratio: float = 0.0) -> np.ndarray:
    """A known speaker's clip as 16 kHz mono audio; INVALID_ARGUMENT naming it when it is unusable."""
    where = f"{field}.known_speakers[{index}].audio_content"
    low, high = CLIP_SECONDS
    try:
        samples = audio.decode_container(voice.audio_content, high + 1.0, max_decode_ratio)
    except audio.AudioError as err:
        raise _invalid(f"{where} ({voice.name!r}) cannot be used: {err.message}") from None
    seconds = samples.size / audio.SAMPLE_RATE
    if not low <= seconds <= high:
        raise _invalid(f"{where} ({voice.name!r}) is {seconds:.1f} s long; it must be {low:g} to {high:g} s")
    return samples
