"""The encoder-length rule (services.gpu_worker.engines.encoder_length): pure, no model."""

from __future__ import annotations

import pytest

from services.gpu_worker.engines.encoder_length import EncoderLengths

pytestmark = pytest.mark.fast


def test_the_rule_rounds_up_to_buckets_from_the_minimum() -> None:
    rule = EncoderLengths(10.0, margin_s=5.0)
    assert rule.buckets == (10.0, 15.0, 20.0, 25.0, 30.0)
    assert [rule.seconds(s) for s in (0.5, 5.0, 5.1, 14.9, 20.0, 24.0, 29.0, 40.0)] == [
        10.0,
        10.0,
        15.0,
        20.0,
        25.0,
        30.0,
        30.0,
        30.0,
    ]
    assert EncoderLengths(30.0).buckets == (30.0,)
    assert EncoderLengths(7.0, margin_s=1.0).seconds(2.0) == 7.0


def test_a_caller_named_length_stays_between_the_audio_and_30_s() -> None:
    rule = EncoderLengths(10.0)
    assert rule.at_least(3.0, None) == 10.0
    assert rule.at_least(3.0, 6.0) == 6.0
    assert rule.at_least(12.0, 6.0) == 12.0
    assert rule.at_least(3.0, 45.0) == 30.0
