"""Audio decoding and resampling (PyAV), without the service."""

from __future__ import annotations

import numpy as np
import pytest

from services.common.audio import SUPPORTED_SAMPLE_RATES, AudioError, PcmResampler, decode_container, decode_linear16
from tests.helpers import clip, read_wav


@pytest.mark.parametrize(
    "name", ["speech_short.wav", "speech_short.flac", "speech_short.ogg", "speech_short_44k_stereo.wav"]
)
def test_containers_decode_to_16k_mono(name: str) -> None:
    audio = decode_container(clip(name), max_seconds=60)
    assert audio.dtype == np.float32
    assert abs(audio.size / 16000 - 3.44) < 0.05
    assert 0.05 < np.abs(audio).max() <= 1.0


def test_chunked_resampling_equals_whole_buffer() -> None:
    pcm, rate, channels = read_wav("speech_short_44k_stereo.wav")
    whole = decode_linear16(pcm, rate, channels, max_seconds=60)
    resampler = PcmResampler(rate, channels)
    # Odd chunk sizes split samples and frames; the resampler must carry the remainder.
    parts = [resampler.feed(pcm[i : i + 1001]) for i in range(0, len(pcm), 1001)] + [resampler.flush()]
    np.testing.assert_allclose(np.concatenate(parts), whole, atol=1e-6)


def test_too_long_audio_is_refused_while_decoding() -> None:
    with pytest.raises(AudioError) as info:
        decode_container(clip("speech_long.wav"), max_seconds=2)
    assert info.value.reason == "AUDIO_TOO_LONG"


@pytest.mark.parametrize("data", [b"", b"RIFF", b"\x00" * 1000, b"garbage" * 300])
def test_undecodable_bytes_raise_audio_error(data: bytes) -> None:
    with pytest.raises(AudioError):
        decode_container(data, max_seconds=60)


def test_supported_rates_and_channels() -> None:
    for rate in SUPPORTED_SAMPLE_RATES:
        out = decode_linear16(np.zeros(rate, dtype="<i2").tobytes(), rate, 1, max_seconds=60)
        assert abs(out.size - 16000) <= 32
    with pytest.raises(AudioError):
        PcmResampler(16000, 3)
