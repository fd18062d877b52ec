"""Cutting a recording into pieces while it is decoded (services.gateway.recordings.pieces): pure, no fleet."""

from __future__ import annotations

import numpy as np
import pytest

from services.common.audio import SAMPLE_RATE, AudioError, decode_container, decode_linear16
from services.gateway.recordings import shard
from services.gateway.recordings.pieces import SEARCH_S, Cutter, Source, iter_pieces
from services.gen import transcription_pb2 as pb
from tests.bad_audio import cut_wav
from tests.helpers import clip, read_wav, speech_recording

pytestmark = pytest.mark.fast


def _speech_with_pauses(seconds: float, pause_every_s: float, seed: int = 1) -> tuple[np.ndarray, list[int]]:
    """Loud noise with a 0.3 s silence every `pause_every_s`; returns the samples and the pauses' middles."""
    rng = np.random.default_rng(seed)
    audio = rng.integers(-8000, 8000, int(seconds * SAMPLE_RATE)).astype(np.int16)
    pauses = []
    for at in np.arange(pause_every_s, seconds, pause_every_s):
        start = int(at * SAMPLE_RATE)
        audio[start : start + int(0.3 * SAMPLE_RATE)] = 0
        pauses.append(start + int(0.15 * SAMPLE_RATE))
    return audio, pauses


def test_pieces_join_back_into_the_recording_and_end_in_pauses() -> None:
    audio, pauses = _speech_with_pauses(200, 7.0)
    cutter = Cutter(piece_s=40)
    pieces = []
    for start in range(0, audio.size, 3000):  # chunks of odd sizes, as a decoder gives them
        pieces += list(cutter.feed(audio[start : start + 3000]))
    pieces += list(cutter.finish())
    joined = np.frombuffer(b"".join(p.pcm for p in pieces), dtype="<i2")
    assert np.array_equal(joined, audio)
    assert [p.index for p in pieces] == list(range(len(pieces)))
    offsets = np.cumsum([0] + [len(p.pcm) // 2 for p in pieces])[:-1] / SAMPLE_RATE
    assert [p.offset_s for p in pieces] == pytest.approx(list(offsets))
    for piece in pieces[:-1]:
        assert 40 - SEARCH_S <= piece.seconds <= 40 + SEARCH_S
        cut = round((piece.offset_s + piece.seconds) * SAMPLE_RATE)
        assert min(abs(cut - p) for p in pauses) < 0.15 * SAMPLE_RATE, "a cut fell in the middle of sound"


def test_a_container_and_linear16_decode_to_the_same_audio_as_a_whole_file_decode() -> None:
    wav = speech_recording(100)
    pieces = list(iter_pieces(Source(wav), 30, 3600, 1000))
    assert 3 <= len(pieces) <= 5  # 100 s in pieces of 30 +- 8 s
    joined = np.frombuffer(b"".join(p.pcm for p in pieces), dtype="<i2").astype(np.float32) / 32768
    assert np.allclose(joined, decode_container(wav, 3600), atol=1 / 32768)

    pcm, rate, channels = read_wav("speech_short_44k_stereo.wav")
    source = Source(pcm, pb.AUDIO_ENCODING_LINEAR16, rate, channels)
    assert source.declared_seconds() == pytest.approx(3.438, abs=0.01)
    streamed = np.frombuffer(b"".join(p.pcm for p in iter_pieces(source, 30, 3600, 0)), dtype="<i2")
    whole = decode_linear16(pcm, rate, channels, 3600)
    assert abs(streamed.size - whole.size) <= 1
    n = min(streamed.size, whole.size)
    assert np.allclose(streamed[:n].astype(np.float32) / 32768, whole[:n], atol=2 / 32768)


def test_bad_sources_raise_audio_errors() -> None:
    with pytest.raises(AudioError) as garbage:
        next(iter_pieces(Source(b"not audio at all" * 100), 30, 3600, 1000))
    assert garbage.value.reason == "UNDECODABLE_AUDIO"
    with pytest.raises(AudioError) as too_long:  # a WAV's header is not trusted: decoding finds out
        list(iter_pieces(Source(speech_recording(100)), 30, 60, 1000))
    assert too_long.value.reason == "AUDIO_TOO_LONG"
    with pytest.raises(AudioError) as rate:
        Source(clip("speech_short.wav"), pb.AUDIO_ENCODING_LINEAR16, 12345, 1).declared_seconds()
    assert rate.value.reason == "UNSUPPORTED_SAMPLE_RATE"


def test_a_truncated_recording_raises_after_its_pieces_and_before_its_last() -> None:
    """The pipeline learns of a cut-off upload from the decoder's last step, before the final piece goes out
    and so before any final result: the pieces already sent are all the client could have had."""
    cut = cut_wav(speech_recording(100), 80.0)
    pieces = []
    with pytest.raises(AudioError) as info:
        for piece in iter_pieces(Source(cut), piece_s=30, max_seconds=3600, max_ratio=0):
            pieces.append(piece)
    assert info.value.reason == "TRUNCATED_AUDIO"
    assert "declares 100.00 s" in info.value.message and "only 80.00 s" in info.value.message
    assert len(pieces) >= 1 and sum(p.seconds for p in pieces) < 80 - 1


def test_a_cut_falls_in_the_longest_pause_not_in_a_short_dip_inside_a_word() -> None:
    """A 40 ms closure (the silence of a "t") right at the ideal point, a 0.6 s pause 5 s away: the cut goes
    in the pause, where no word is, even though the closure is quieter."""
    rng = np.random.default_rng(3)
    audio = rng.integers(-8000, 8000, 60 * SAMPLE_RATE).astype(np.int16)
    closure = 30 * SAMPLE_RATE
    audio[closure : closure + int(0.04 * SAMPLE_RATE)] = 0
    pause = 35 * SAMPLE_RATE
    audio[pause : pause + int(0.6 * SAMPLE_RATE)] = rng.integers(-30, 30, int(0.6 * SAMPLE_RATE))
    cuts = shard.split_points(audio, 2)
    assert len(cuts) == 1
    assert pause <= cuts[0] <= pause + int(0.6 * SAMPLE_RATE), cuts[0] / SAMPLE_RATE


def test_only_idle_serving_workers_take_pieces() -> None:
    """A busy worker would only queue a piece behind its work: the recording is cut for the idle ones."""

    class W:
        def __init__(self, serving: bool, idle: bool) -> None:
            self.serving, self.idle = serving, idle

    assert shard.idle_workers([W(True, True), W(True, False), W(False, True), W(True, True)]) == 2
    assert shard.idle_workers([W(True, True), W(True, False)]) == 1  # fewer than two: sent whole
    assert shard.piece_count(600, shard.idle_workers([W(True, True)] * 3)) == 3
    assert shard.piece_count(45, 3) == 1  # no piece shorter than a window
