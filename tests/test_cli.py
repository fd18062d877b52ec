"""The scribe CLI against the live fleet."""

from __future__ import annotations

import io

from scribe_client.cli.main import print_stream

from services.gen import transcription_pb2 as pb
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


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def _result(text: str, final: bool) -> pb.StreamingTranscribeResponse:
    return pb.StreamingTranscribeResponse(
        results=[
            pb.StreamingRecognitionResult(
                alternatives=[pb.SpeechRecognitionAlternative(transcript=text)], is_final=final, stability=0.5
            )
        ]
    )


def test_live_captions_redraw_interims_and_keep_finals() -> None:
    end = pb.StreamingTranscribeResponse(speech_event_type=pb.SPEECH_EVENT_TYPE_SPEECH_ACTIVITY_END)
    responses = [
        _result("Good morning", False),
        _result("Good morning", True),
        _result("every", False),
        _result("everyone.", True),
        end,
        _result("Today", False),
        _result("Today we talk.", True),
    ]
    screen = _Terminal()
    print_stream(iter(responses), out=screen)
    # What stays on screen: the text after the last carriage return of each line.
    lines = [row.rsplit("\r", 1)[-1].replace("\033[K", "") for row in screen.getvalue().split("\n")]
    assert lines == ["Good morning everyone.", "Today we talk.", ""]
    assert "\033[2mevery\033[0m" in screen.getvalue()  # the interim was drawn dim, then replaced


def test_captions_for_a_pipe_are_the_finals_one_per_line() -> None:
    out = io.StringIO()
    print_stream(iter([_result("Good", False), _result("Good morning", True), _result("all", True)]), out=out)
    assert out.getvalue() == "Good morning\nall\n"
