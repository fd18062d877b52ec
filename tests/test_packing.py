"""Short windows of several calls packed into one Whisper window, and each call's words given back
(pure functions, no model)."""

from __future__ import annotations

import numpy as np
import pytest

from services.common.audio import SAMPLE_RATE
from services.gpu_worker.batching.packing import GAP_S, pack, plan, unpack
from services.gpu_worker.engines.base import DecodeOptions, Segment, WindowJob, WindowResult, Word

pytestmark = pytest.mark.fast


def job(seconds: float, **options: object) -> WindowJob:
    return WindowJob(np.ones(round(seconds * SAMPLE_RATE), dtype=np.float32), DecodeOptions(**options))  # type: ignore[arg-type]


def test_short_windows_with_the_same_options_are_packed_up_to_the_limit() -> None:
    jobs = [job(5), job(6), job(8), job(20), job(4), job(4, beam_size=1), job(3)]
    # 5 + 1 + 6 + 1 + 8 = 21 s; the 20 s window is too long to pack; beam 1 differs from the open pack.
    assert plan(jobs, [True] * len(jobs), limit_s=25) == [[0, 1, 2], [3], [4], [5], [6]]
    assert plan(jobs[:2], [True, False], limit_s=25) == [[0], [1]]


def test_a_pack_is_the_audio_with_silence_between_and_asks_for_word_times() -> None:
    p = pack([job(2), job(3)])
    assert p.offsets == (0.0, 2.0 + GAP_S) and p.durations == (2.0, 3.0)
    assert p.job.audio.size == round((2 + GAP_S + 3) * SAMPLE_RATE) and p.job.options.word_timestamps
    assert not p.job.audio[round(2.2 * SAMPLE_RATE) : round(2.8 * SAMPLE_RATE)].any()


def words(*items: tuple[float, float, str]) -> tuple[Word, ...]:
    return tuple(Word(a, b, w, 0.9) for a, b, w in items)


def test_each_call_gets_its_own_words_even_from_a_segment_that_spans_two() -> None:
    p = pack([job(2), job(3), job(2)])  # members at 0, 3 and 7 s
    spanning = Segment(
        0,
        0.1,
        4.9,
        "one two three four",
        words((0.1, 0.6, "one"), (1.0, 1.8, "two"), (3.2, 3.9, "three"), (4.1, 4.9, "four")),
    )
    last = Segment(1, 7.2, 8.6, "five six.", words((7.2, 7.8, "five"), (8.0, 8.6, "six.")))
    result = WindowResult((spanning, last), "en", 1.0)
    first, second, third = unpack(result, p, [True, False, True])
    assert first is not None and second is not None and third is not None
    assert [(s.text, s.start, s.end) for s in first.segments] == [("one two", 0.1, 1.8)]
    assert [(s.text, round(s.start, 2), round(s.end, 2), s.words) for s in second.segments] == [
        ("three four", 0.2, 1.9, ())
    ]
    assert [(s.text, round(s.start, 2), round(s.end, 2)) for s in third.segments] == [("five six.", 0.2, 1.6)]
    assert [w.word for w in third.segments[0].words] == ["five", "six."]


def test_members_after_an_early_stop_or_in_a_bad_decode_are_decoded_again_alone() -> None:
    p = pack([job(2), job(3)])
    said = Segment(0, 0.0, 1.5, "hello", words((0.0, 1.5, "hello")))
    stopped = WindowResult((said,), "en", 1.0, covered_s=1.6)
    first, second = unpack(stopped, p, [False, False])
    assert first is not None and [s.text for s in first.segments] == ["hello"] and second is None
    assert unpack(WindowResult((said,), "en", 1.0, needs_fallback=True), p, [False, False]) == [None, None]
