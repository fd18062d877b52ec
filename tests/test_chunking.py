"""Cutting recordings into windows, and timestamp tokens into segments (pure functions, no model)."""

from __future__ import annotations

import numpy as np
import pytest

from services.common.audio import SAMPLE_RATE, decode_container
from services.gpu_worker.batching.chunking import MAX_WINDOW_S, Window, cut_recording, plan_windows, quietest_cut
from services.gpu_worker.engines.timestamps import split_by_timestamps
from tests.helpers import clip, read_wav

pytestmark = pytest.mark.fast

SR = SAMPLE_RATE


def seconds(s: float) -> int:
    return round(s * SR)


def test_spans_merge_into_windows_no_longer_than_the_limit() -> None:
    audio = np.zeros(seconds(100), dtype=np.float32)
    spans = [(seconds(t), seconds(t + 4)) for t in range(0, 96, 5)]  # 4 s of speech, 1 s pauses
    windows = plan_windows(audio, spans, max_window_s=25)
    assert all(w.seconds <= 25 for w in windows)
    assert [s for w in windows for s in w.speech] == spans  # every stretch of speech in exactly one window
    assert len(windows) == 4  # 5 stretches of 5 s fit in 25 s, minus the last pause: 24 s windows


def test_a_long_pause_starts_a_new_window_and_silence_is_dropped() -> None:
    audio = np.zeros(seconds(60), dtype=np.float32)
    spans = [(seconds(0), seconds(3)), (seconds(10), seconds(13)), (seconds(50), seconds(52))]
    windows = plan_windows(audio, spans, max_window_s=25, max_gap_s=3)
    assert [(w.start, w.end) for w in windows] == spans
    assert sum(w.seconds for w in windows) == 8


def test_speech_longer_than_a_window_is_cut_at_its_quietest_frame() -> None:
    rng = np.random.default_rng(1)
    audio = (0.3 * rng.standard_normal(seconds(60))).astype(np.float32)
    quiet = seconds(21.0)
    audio[quiet : quiet + seconds(0.1)] = 0.0  # the one pause a word boundary would leave
    windows = plan_windows(audio, [(0, audio.size)], max_window_s=25)
    assert all(w.seconds <= 25 for w in windows)
    assert quiet <= windows[0].end <= quiet + seconds(0.1)
    assert windows[1].start == windows[0].end and windows[-1].end == audio.size


def test_quietest_cut_without_a_whole_frame_is_the_end() -> None:
    audio = np.ones(100, dtype=np.float32)
    assert quietest_cut(audio, 0, 100) == 100


def test_rest_of_a_window_is_decoded_only_where_speech_is_left() -> None:
    window = Window(seconds(10), seconds(30), ((seconds(10), seconds(15)), (seconds(20), seconds(30))))
    rest = window.rest(8.0)  # the decoder stopped at 18 s: 20-30 s is speech nobody decoded
    assert rest is not None and rest.start == seconds(18) and rest.speech == ((seconds(20), seconds(30)),)
    assert window.rest(19.6) is None  # 0.4 s of speech left: not worth another decode
    assert window.rest(0.0) is None  # no progress at all: decoding again would loop
    assert window.rest(float("inf")) is None and window.rest(20.0) is None  # all of it decoded


def test_recorded_speech_is_found_and_nothing_but_silence_is_dropped() -> None:
    pcm, _, _ = read_wav("speech_long.wav")
    speech = np.frombuffer(pcm, "<i2").astype(np.float32) / 32768
    silence = np.zeros(seconds(20), dtype=np.float32)
    audio = np.concatenate([silence, speech, silence, speech])
    windows = cut_recording(audio)
    assert 1 <= len(windows) <= 3 and all(w.seconds <= MAX_WINDOW_S for w in windows)
    covered = sum(w.seconds for w in windows)
    assert 2 * speech.size / SR - 1 <= covered <= 2 * speech.size / SR + 4  # both sentences, not the silence
    first = seconds(20)
    assert windows[0].start <= first <= windows[0].start + seconds(0.5)


def test_silence_and_a_tone_give_no_window() -> None:
    assert cut_recording(decode_container(clip("silence.wav"), 10)) == []
    assert cut_recording(np.zeros(0, dtype=np.float32)) == []


TB, EOT = 1000, 900  # a timestamp token t means (t - TB) * 0.02 s


def test_timestamps_make_segments_and_keep_text_after_the_last_one() -> None:
    tokens = [TB + 0, 1, 2, TB + 100, TB + 100, 3, 4, TB + 250, TB + 250, 5, 6]  # the last sentence runs on
    segments = split_by_timestamps(tokens, TB, EOT, 0.02, duration=6.0)
    assert [(s.start, s.end, s.tokens) for s in segments] == [
        (0.0, 2.0, (1, 2)),
        (2.0, 5.0, (3, 4)),
        (5.0, 6.0, (5, 6)),
    ]


def test_timestamps_past_the_window_are_clipped_and_no_timestamps_is_one_segment() -> None:
    segments = split_by_timestamps([TB + 10, 7, TB + 1400], TB, EOT, 0.02, duration=10.0)
    assert [(s.start, s.end) for s in segments] == [(0.2, 10.0)]
    assert [(s.start, s.end, s.tokens) for s in split_by_timestamps([7, 8], TB, EOT, 0.02, 3.0)] == [(0.0, 3.0, (7, 8))]
    assert split_by_timestamps([TB, TB + 5], TB, EOT, 0.02, 3.0) == []
