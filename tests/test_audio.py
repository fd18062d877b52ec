"""Audio decoding and resampling (PyAV), without the service."""

from __future__ import annotations

import io
import re
import struct
from pathlib import Path

import numpy as np
import pytest

from services.common.audio import (
    SUPPORTED_SAMPLE_RATES,
    AudioError,
    PcmResampler,
    decode_container,
    decode_linear16,
    iter_container,
)
from services.common.truncation import wav_declared_seconds
from tests.bad_audio import cut_wav, m4a_bytes, unknown_length_wav
from tests.helpers import clip, read_wav

pytestmark = pytest.mark.fast


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


def _flac_cut_in_half() -> bytes:
    flac = clip("speech_short.flac")
    return flac[: len(flac) // 2]


def _m4a_cut() -> bytes:
    m4a = m4a_bytes(clip("speech_short.wav"))
    return m4a[: len(m4a) * 2 // 3]


@pytest.mark.parametrize(
    ("label", "make", "declared", "decoded"),
    [
        ("wav cut 8 ms into its audio", lambda: cut_wav(clip("speech_short.wav"), 0.008), 3.44, (0.01, 0.01)),
        ("wav cut at 2 s", lambda: cut_wav(clip("speech_short.wav"), 2.0), 3.44, (2.0, 2.0)),
        ("44.1 kHz stereo wav cut at 1 s", lambda: cut_wav(clip("speech_short_44k_stereo.wav"), 1.0), 3.44, (1.0, 1.0)),
        ("flac cut in half", _flac_cut_in_half, 3.44, (1.0, 1.8)),
        ("flac cut inside its first frame", lambda: clip("speech_short.flac")[:200], 3.44, (0.0, 0.0)),
        ("m4a cut at two thirds", _m4a_cut, 3.5, (1.5, 2.5)),
    ],
)
def test_audio_short_of_its_header_is_refused_as_truncated(
    label: str, make: object, declared: float, decoded: tuple[float, float]
) -> None:
    with pytest.raises(AudioError) as info:
        decode_container(make(), max_seconds=60)  # type: ignore[operator]
    assert info.value.reason == "TRUNCATED_AUDIO", info.value.message
    found = re.search(r"declares ([\d.]+) s of audio but its bytes hold only ([\d.]+) s", info.value.message)
    assert found, info.value.message
    assert float(found[1]) == declared and decoded[0] <= float(found[2]) <= decoded[1], info.value.message


def test_a_truncated_file_on_disk_is_refused_after_its_last_chunk(tmp_path: Path) -> None:
    """A spooled upload is decoded from its path, chunk by chunk: every chunk it holds comes out, then the error."""
    path = tmp_path / "upload.wav"
    path.write_bytes(cut_wav(clip("speech_short.wav"), 2.0))
    chunks = []
    with pytest.raises(AudioError) as info:
        for chunk in iter_container(path, max_seconds=60):
            chunks.append(chunk)
    assert info.value.reason == "TRUNCATED_AUDIO"
    assert abs(sum(c.size for c in chunks) / 16000 - 2.0) < 0.01


@pytest.mark.parametrize("marker", [0, 0xFFFFFFFF, 0x7FFFF000])
def test_streamed_wav_of_unknown_length_is_whatever_its_bytes_hold(marker: int) -> None:
    streamed = unknown_length_wav(clip("speech_short.wav"), marker)
    assert abs(decode_container(streamed, max_seconds=60).size / 16000 - 3.44) < 0.01
    assert decode_container(cut_wav(streamed, 0.008), max_seconds=60).size == 128


@pytest.mark.parametrize(
    ("label", "make", "seconds"),
    [
        ("wav missing its last 50 ms", lambda: cut_wav(clip("speech_short.wav"), 3.39), 3.39),
        (
            "whole m4a (AAC priming makes it decode longer than it declares)",
            lambda: m4a_bytes(clip("speech_short.wav")),
            3.5,
        ),
    ],
)
def test_headers_that_round_are_not_truncation(label: str, make: object, seconds: float) -> None:
    assert abs(decode_container(make(), max_seconds=60).size / 16000 - seconds) < 0.05  # type: ignore[operator]


def test_wav_header_is_walked_past_other_chunks_to_its_data() -> None:
    """A LIST chunk of odd size (padded) between fmt and data, as tagging tools write it."""
    wav = clip("speech_short.wav")
    start = wav.index(b"data")
    tagged = wav[:start] + b"LIST" + struct.pack("<I", 5) + b"INFO\x01\x00" + wav[start:]
    cut = tagged[: start + 14 + 8 + 1000]  # 1000 bytes of audio
    assert wav_declared_seconds(io.BytesIO(cut)) == pytest.approx(3.4384375)
    assert wav_declared_seconds(io.BytesIO(tagged)) is None  # whole: nothing to check
    assert decode_container(tagged, max_seconds=60).size == decode_container(wav, max_seconds=60).size
    with pytest.raises(AudioError, match=r"declares 3\.44 s .* only 0\.03 s"):
        decode_container(cut, max_seconds=60)
    assert wav_declared_seconds(io.BytesIO(b"RF64" + wav[4:])) is None


def test_a_wrong_byte_rate_in_a_wav_header_never_makes_a_whole_file_truncated() -> None:
    """Some writers get nAvgBytesPerSec wrong; FFmpeg decodes PCM by block size and rate, and so does the check."""
    whole, cut = bytearray(clip("speech_short.wav")), bytearray(cut_wav(clip("speech_short.wav"), 1.0))
    whole[28:32] = cut[28:32] = struct.pack("<I", 1000)
    assert abs(decode_container(bytes(whole), max_seconds=60).size / 16000 - 3.44) < 0.01
    with pytest.raises(AudioError, match=r"declares 3\.44 s .* only 1\.00 s"):
        decode_container(bytes(cut), max_seconds=60)
