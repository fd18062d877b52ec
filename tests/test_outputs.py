"""Transcripts as files: every --format through the CLI against the live fleet, subtitles parsed by
independent libraries (srt, webvtt-py), and batch mode over a folder with a corrupt file."""

from __future__ import annotations

import html
import io
import json
import shutil
from datetime import timedelta
from pathlib import Path

import pytest
import srt
import webvtt
from scribe_client import ScribeClient, TranscribeOptions, render
from scribe_client.formats import timestamp, to_srt, to_vtt

from services.gen import transcription_pb2 as pb
from tests.conftest import Fleet
from tests.helpers import DATA, words_of


def ms(d) -> int:
    return round(d.ToNanoseconds() / 1e6)


def segment_times(response: pb.TranscribeResponse) -> list[tuple[int, int, str]]:
    return [(ms(s.start_offset), ms(s.end_offset), s.text) for s in response.segments if s.text.strip()]


@pytest.fixture(scope="module")
def long_response(fleet: Fleet) -> pb.TranscribeResponse:
    """The three-sentence clip as the CLI transcribes it by default (no word times)."""
    fleet.wait_all_serving()
    with ScribeClient(fleet.address) as client:
        return client.transcribe(DATA / "speech_long.wav")


def test_timestamps_roll_over_hours_and_keep_milliseconds() -> None:
    assert timestamp(0, ",") == "00:00:00,000"
    assert timestamp(3_723_004, ".") == "01:02:03.004"
    assert timestamp(100 * 3_600_000 + 1, ",") == "100:00:00,001"


def test_subtitles_escape_markup_and_keep_each_cue_on_one_line() -> None:
    response = pb.TranscribeResponse(
        segments=[
            pb.Segment(text="a <b> & c --> d\n\ne"),
            pb.Segment(text="   "),  # no speech: no cue
        ]
    )
    response.segments[0].end_offset.FromMilliseconds(1500)
    vtt = to_vtt(response)
    assert "&lt;b&gt; &amp; c --&gt; d e" in vtt
    assert [html.unescape(c.text) for c in webvtt.from_buffer(io.StringIO(vtt)).captions] == ["a <b> & c --> d e"]
    assert [c.content for c in srt.parse(to_srt(response))] == ["a <b> & c --> d e"]


def test_srt_and_vtt_of_a_live_transcript_parse_and_match_the_segments(long_response: pb.TranscribeResponse) -> None:
    expected = segment_times(long_response)
    assert len(expected) >= 2
    cues = list(srt.parse(render(long_response, "srt")))
    assert [c.index for c in cues] == list(range(1, len(expected) + 1))
    one_ms = timedelta(milliseconds=1)
    assert [(c.start // one_ms, c.end // one_ms, c.content) for c in cues] == expected
    vtt = webvtt.from_buffer(io.StringIO(render(long_response, "vtt"))).captions
    assert [(c.start_time.in_milliseconds(), c.end_time.in_milliseconds(), c.text) for c in vtt] == [
        (start, end, text) for start, end, text in expected
    ]


@pytest.mark.parametrize("fmt", ["txt", "srt", "vtt", "json", "tsv"])
def test_cli_writes_every_format_beside_the_file(
    serving_fleet: Fleet, tmp_path: Path, long_response: pb.TranscribeResponse, fmt: str
) -> None:
    audio = tmp_path / "meeting.wav"
    shutil.copy(DATA / "speech_long.wav", audio)
    result = serving_fleet.scribe("transcribe", str(audio), "--format", fmt, "--address", serving_fleet.address)
    written = (tmp_path / f"meeting.{fmt}").read_text(encoding="utf-8")
    assert str(tmp_path / f"meeting.{fmt}") in result.stderr
    assert result.stdout == ""
    expected = segment_times(long_response)
    if fmt == "txt":
        assert written.splitlines() == [text for _, _, text in expected]
    elif fmt == "srt":
        cues = list(srt.parse(written))
        assert [(c.start.total_seconds(), c.end.total_seconds()) for c in cues] == [
            (start / 1000, end / 1000) for start, end, _ in expected
        ]
    elif fmt == "vtt":
        vtt_cues = webvtt.from_buffer(io.StringIO(written)).captions
        assert [(c.start_time.in_milliseconds(), c.end_time.in_milliseconds()) for c in vtt_cues] == [
            (start, end) for start, end, _ in expected
        ]
    elif fmt == "tsv":
        rows = [line.split("\t") for line in written.splitlines()]
        assert rows[0] == ["start", "end", "text"]
        assert [(int(a), int(b), t) for a, b, t in rows[1:]] == expected
    else:
        doc = json.loads(written)
        assert words_of(doc["text"])[:2] == ["good", "morning"]
        assert doc["language"] == "en" and doc["duration"] > 10
        words = [w for s in doc["segments"] for w in s["words"]]
        assert len(words) >= 20, "--format json asks for word times"
        assert all(s["start"] <= w["start"] <= w["end"] <= s["end"] + 0.01 for s in doc["segments"] for w in s["words"])


def test_cli_writes_to_stdout_or_to_a_named_file(serving_fleet: Fleet, tmp_path: Path) -> None:
    clip = str(DATA / "speech_short.wav")
    out = serving_fleet.scribe(
        "transcribe", clip, "--format", "srt", "--output", "-", "--address", serving_fleet.address
    )
    (cue,) = srt.parse(out.stdout)
    assert "lazy dog" in cue.content.lower()
    target = tmp_path / "sub" / "named.vtt"
    serving_fleet.scribe(
        "transcribe", clip, "--format", "vtt", "--output", str(target), "--address", serving_fleet.address
    )
    assert "lazy dog" in webvtt.read(str(target)).captions[0].text.lower()


def test_batch_over_a_folder_transcribes_the_rest_and_reports_the_corrupt_file(
    serving_fleet: Fleet, tmp_path: Path
) -> None:
    folder = tmp_path / "recordings"
    (folder / "day2").mkdir(parents=True)
    shutil.copy(DATA / "speech_short.wav", folder / "a.wav")
    shutil.copy(DATA / "speech_short.ogg", folder / "day2" / "b.ogg")
    shutil.copy(DATA / "speech_long.wav", folder / "c.wav")
    (folder / "corrupt.mp3").write_bytes(b"ID3" + bytes(range(256)) * 40)
    (folder / "notes.txt").write_text("not audio: skipped")
    result = serving_fleet.scribe(
        "transcribe", f"{folder}/", "--jobs", "2", "--format", "srt", "--address", serving_fleet.address, check=False
    )
    assert result.returncode == 1, result.stderr
    for done in (folder / "a.srt", folder / "day2" / "b.srt", folder / "c.srt"):
        assert list(srt.parse(done.read_text())), done
    assert "lazy dog" in (folder / "a.srt").read_text().lower()
    assert not (folder / "corrupt.srt").exists()
    assert not (folder / "notes.srt").exists()
    assert "3 of 4 files transcribed" in result.stderr
    failed = [line for line in result.stderr.splitlines() if "FAILED" in line]
    assert len(failed) == 1 and "corrupt.mp3" in failed[0] and "UNDECODABLE_AUDIO" in failed[0], result.stderr


def test_batch_of_named_files_into_an_output_folder(serving_fleet: Fleet, tmp_path: Path) -> None:
    result = serving_fleet.scribe(
        "transcribe",
        str(DATA / "speech_short.flac"),
        str(DATA / "speech_short.ogg"),
        "--format",
        "json",
        "--output",
        str(tmp_path / "out"),
        "--address",
        serving_fleet.address,
    )
    assert "2 of 2 files transcribed" in result.stderr and "RTF" in result.stderr
    # Same name, two containers: each keeps its extension rather than one overwriting the other.
    for name in ("speech_short.flac.json", "speech_short.ogg.json"):
        doc = json.loads((tmp_path / "out" / name).read_text())
        assert "lazy" in doc["text"].lower()


def test_transcribe_options_reject_an_unknown_task() -> None:
    with pytest.raises(ValueError, match="task"):
        TranscribeOptions(task="summarise").to_pb()
