"""TranscribeWithProgress: segments arrive while a long recording is still being transcribed."""

from __future__ import annotations

import json
import os
import pty
import re
import subprocess
import time
from pathlib import Path

import grpc
import pytest
from scribe_client import ScribeClient

from services.common.errors import error_reason
from services.gen import transcription_pb2 as pb
from tests.conftest import BIN, Fleet
from tests.helpers import ROOT, repeated_wav, wait_for, words_of

# About 143 s: past SHARD_MIN_SECONDS, so the fleet's two workers take a piece of about 72 s each, three of
# Whisper's 30 s windows: the first piece's segments come in at least three batches.
LONG_REPEATS = 12


def seconds(d) -> float:
    return d.ToNanoseconds() / 1e9


@pytest.mark.heavy  # 143 s of audio: make test-heavy
def test_progress_sends_segments_before_the_end_and_reaches_100(serving_fleet: Fleet) -> None:
    audio = repeated_wav("speech_long.wav", LONG_REPEATS)
    arrivals: list[tuple[float, pb.TranscribeWithProgressResponse]] = []
    with ScribeClient(serving_fleet.address) as client:
        started = time.monotonic()
        for report in client.transcribe_with_progress(audio, request_id="progress-test-1"):
            arrivals.append((time.monotonic() - started, report))
    reports = [r for _, r in arrivals]
    first, last = reports[0], reports[-1]
    assert not first.segments and first.progress_percent == 0 and seconds(first.audio_duration) > 140
    assert last.HasField("result") and last.progress_percent == 100
    assert not any(r.HasField("result") for r in reports[:-1])
    percents = [r.progress_percent for r in reports]
    assert percents == sorted(percents)
    assert any(0 < p < 60 for p in percents), percents

    # The segments streamed one by one are the whole transcript, in order, with ids going on.
    streamed = [s for r in reports for s in r.segments]
    assert [s.id for s in streamed] == list(range(len(streamed)))
    assert [(s.text, s.end_offset) for s in streamed] == [(s.text, s.end_offset) for s in last.result.segments]
    assert words_of(last.result.transcript)[:2] == ["good", "morning"]
    assert last.result.request_id == "progress-test-1" and last.result.worker_id.startswith("gpu_worker_")

    # The first segments came well before the end: the user saw progress, not a silent wait.
    first_segment_at = next(t for t, r in arrivals if r.segments)
    total = arrivals[-1][0]
    assert first_segment_at < 0.8 * total, (first_segment_at, total)


def test_progress_of_bad_audio_is_invalid_argument(serving_fleet: Fleet) -> None:
    with ScribeClient(serving_fleet.address) as client, pytest.raises(grpc.RpcError) as caught:
        list(client.transcribe_with_progress(b"definitely not audio" * 50))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error_reason(caught.value.trailing_metadata()) == "UNDECODABLE_AUDIO"


@pytest.mark.heavy  # 143 s of audio: make test-heavy
def test_cli_shows_a_progress_bar_on_a_terminal(serving_fleet: Fleet, tmp_path: Path) -> None:
    audio = tmp_path / "lecture.wav"
    audio.write_bytes(repeated_wav("speech_long.wav", LONG_REPEATS))
    controller, terminal = pty.openpty()  # stderr is a terminal, as in a user's shell; stdout is a pipe
    env = dict(serving_fleet.env, COLUMNS="160")
    proc = subprocess.Popen(
        [str(BIN / "scribe"), "transcribe", str(audio), "--address", serving_fleet.address],
        stdout=subprocess.PIPE,
        stderr=terminal,
        env=env,
        cwd=ROOT,
    )
    os.close(terminal)
    screen = b""
    while True:
        try:
            data = os.read(controller, 65536)
        except OSError:  # EIO: the process closed its end
            break
        if not data:
            break
        screen += data
    stdout = proc.stdout.read() if proc.stdout else b""
    assert proc.wait(timeout=120) == 0
    os.close(controller)
    text = screen.decode(errors="replace")
    shown = [int(p) for p in re.findall(r"(\d+)%", text)]
    assert 100 in shown and any(0 < p < 100 for p in shown), text[-2000:]
    assert re.search(r"\d+/14\d s of audio", text), text[-2000:]
    assert words_of(stdout.decode())[:2] == ["good", "morning"]


def test_a_client_that_goes_away_frees_the_workers_slot_early(serving_fleet: Fleet) -> None:
    """The worker stops decoding at the next segment instead of transcribing to the end for nobody."""
    audio = repeated_wav("speech_long.wav", 8)  # about 96 s: four of Whisper's 30 s windows
    request = pb.TranscribeWithProgressRequest(request=pb.TranscribeRequest(audio_content=audio))
    full = list(serving_fleet.transcription.TranscribeWithProgress(request, timeout=300))
    segments = sum(len(r.segments) for r in full)

    request_id = "progress-abandoned-1"
    reports = serving_fleet.transcription.TranscribeWithProgress(
        request, timeout=300, metadata=(("x-request-id", request_id),)
    )
    worker = next(r for r in reports if r.segments).worker_id
    reports.cancel()  # the caller goes away after the first window's segments

    with ScribeClient(serving_fleet.address) as client:

        def idle() -> bool:
            health = {w.name: w.health for w in client.list_workers().workers}[worker]
            return health.active_requests == 0 and health.queued_requests == 0

        assert wait_for(idle, 120, 0.1)

    # The worker logs how far the abandoned inference got; counted in the thread, not by what reached us.
    def abandoned() -> dict | None:
        for log in (serving_fleet.run_dir / "logs").glob("gpu_worker_*.log"):
            for line in log.read_text().splitlines():
                if request_id in line and "inference_abandoned" in line:
                    return json.loads(line)
        return None

    assert wait_for(lambda: abandoned() is not None, 10)
    line = abandoned()
    assert line is not None
    # Items are the start event plus one per segment: it stopped in the second or third of four windows, not at the end.
    print("abandoned after", line["items_emitted"] - 1, "of", segments, "segments")
    assert line["items_emitted"] - 1 <= 0.75 * segments, (line, segments)


def test_a_progress_call_started_over_on_another_worker_sends_only_what_is_new() -> None:
    from google.protobuf.duration_pb2 import Duration

    from services.gateway.recordings.progress import ProgressSeen

    def report(percent: float, *segments: tuple[int, float, float, str]) -> pb.TranscribeWithProgressResponse:
        out = pb.TranscribeWithProgressResponse(progress_percent=percent)
        out.processed_audio.CopyFrom(Duration(seconds=int(percent)))
        for sid, start, end, text in segments:
            segment = out.segments.add(id=sid, text=text)
            segment.start_offset.FromNanoseconds(round(start * 1e9))
            segment.end_offset.FromNanoseconds(round(end * 1e9))
        return out

    first = [report(0), report(30, (1, 0.0, 3.0, "one")), report(60, (2, 3.0, 6.0, "two"))]
    again = [report(0), report(30, (1, 0.0, 3.0, "one")), report(60, (2, 3.0, 6.0, "two"))]
    again += [report(90, (3, 6.0, 9.0, "three"))]
    last = report(100)
    last.result.transcript = "one two three"
    seen = ProgressSeen()
    sent = [r for r in (seen.new_part(x) for x in [*first, *again, last]) if r is not None]
    assert [s.text for r in sent for s in r.segments] == ["one", "two", "three"]
    assert [s.id for r in sent for s in r.segments] == [1, 2, 3]
    percents = [r.progress_percent for r in sent]
    assert percents == sorted(percents) == [0, 30, 60, 90, 100]
    assert sent[-1].result.transcript == "one two three"
