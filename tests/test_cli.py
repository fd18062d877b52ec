"""The scribe CLI against the live fleet."""

from __future__ import annotations

from tests.conftest import Fleet
from tests.helpers import DATA


def test_scribe_transcribe_prints_the_transcript(serving_fleet: Fleet) -> None:
    result = serving_fleet.scribe("transcribe", str(DATA / "speech_short.ogg"), "--address", serving_fleet.address)
    assert "lazy dog" in result.stdout.lower()
    assert "gpu_worker_0" in result.stderr


def test_scribe_transcribe_stream_prints_finals(serving_fleet: Fleet) -> None:
    result = serving_fleet.scribe(
        "transcribe",
        str(DATA / "speech_short.wav"),
        "--stream",
        "--speed",
        "2",
        "--address",
        serving_fleet.address,
    )
    text = " ".join(result.stdout.split()).lower()
    assert "lazy dog" in text or ("lazy" in text and "dog" in text), result.stdout


def test_scribe_transcribe_reports_a_bad_file(serving_fleet: Fleet, tmp_path) -> None:
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"nope" * 100)
    result = serving_fleet.scribe("transcribe", str(bad), "--address", serving_fleet.address, check=False)
    assert result.returncode != 0
    assert "INVALID_ARGUMENT" in result.stderr
