"""A worker killed with SIGKILL mid-stream: the client's stream goes on, with the same words.

The moved streams play a committed recording of real read speech (tests/data/read_speech_lj001.ogg):
synthetic voices hid that a moved stream decoded differently from an undisturbed one."""

from __future__ import annotations

import itertools
import json
import os
import signal
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.common.audio import decode_container
from services.common.errors import error_reason
from services.gateway.relay import CrashWatch
from services.gen import transcription_pb2 as pb
from tests.conftest import Fleet
from tests.helpers import DATA, clip, read_wav, speech_recording, stream_requests, wait_for, words_of

READ_SPEECH = "read_speech_lj001.ogg"  # 57.5 s of real read speech, eight sentences (tests/data/README.md)


def finals(responses: list[pb.StreamingTranscribeResponse]) -> list[pb.StreamingRecognitionResult]:
    return [r for resp in responses for r in resp.results if r.is_final]


def final_words(responses: list[pb.StreamingTranscribeResponse]) -> list[pb.WordInfo]:
    return [w for r in finals(responses) for w in r.alternatives[0].words]


def read_speech() -> bytes:
    audio = decode_container((DATA / READ_SPEECH).read_bytes(), 3600)
    return (np.clip(audio, -1, 1) * 32767).astype("<i2").tobytes()


def spoken(responses: list[pb.StreamingTranscribeResponse]) -> list[tuple[str, float, float]]:
    """The finals' words as Whisper spelled them (case and punctuation too), with their times."""
    return [
        (w.word, w.start_offset.ToNanoseconds() / 1e9, w.end_offset.ToNanoseconds() / 1e9)
        for w in final_words(responses)
    ]


@dataclass
class Played:
    responses: list[pb.StreamingTranscribeResponse] = field(default_factory=list)
    killed: list[str] = field(default_factory=list)

    @property
    def workers(self) -> list[str]:
        """The workers that answered, in turn."""
        out: list[str] = []
        for r in self.responses:
            if r.worker_id and r.worker_id not in out[-1:]:
                out.append(r.worker_id)
        return out


def play(fleet: Fleet, pace: float, kill: Callable[[Played], bool] | None = None) -> Played:
    """Stream the real speech clip at `pace`; after each response `kill(played)` says whether to SIGKILL
    the worker that sent it."""
    options = pb.RecognitionOptions(enable_word_time_offsets=True)
    requests = stream_requests(
        read_speech(), 16000, pace=pace, interim_results=True, enable_voice_activity_events=True, options=options
    )
    played = Played()
    for response in fleet.transcription.StreamingTranscribe(requests, timeout=600):
        played.responses.append(response)
        if kill is not None and kill(played):
            os.kill(fleet.workers()[response.worker_id].supervisor_pid, signal.SIGKILL)
            played.killed.append(response.worker_id)
    return played


class Decodes:
    """The `stream_decoding` lines the workers log for one stream: each worker writes one just after telling
    the gateway where a decode that makes finals will go, and just before making it."""

    def __init__(self, fleet: Fleet, request_id: str) -> None:
        self.request_id = request_id
        self.logs = sorted((fleet.run_dir / "logs").glob("gpu_worker_*.log"))
        self.read = {log: log.stat().st_size for log in self.logs}

    def new(self) -> list[tuple[str, float]]:
        """(worker, until_s) of the lines written since the last call."""
        out = []
        for log in self.logs:
            with log.open() as f:
                f.seek(self.read[log])
                lines = f.readlines()
                self.read[log] = f.tell()
            out += [
                (log.stem, float(json.loads(line)["until_s"]))
                for line in lines
                if self.request_id in line and '"stream_decoding"' in line
            ]
        return out


@pytest.fixture(scope="module")
def undisturbed(fleet: Fleet) -> list[tuple[str, float, float]]:
    """The real speech clip's finals with nothing killed, sent as fast as it goes (the worker far behind
    the audio: no interims, audio taken in large pieces): what every moved stream must give, word for word."""
    fleet.wait_all_serving()
    words = spoken(play(fleet, pace=0).responses)
    assert len(words) > 100
    return words


def test_sigkill_mid_stream_gives_the_undisturbed_finals_on_real_speech(
    serving_fleet: Fleet, undisturbed: list[tuple[str, float, float]]
) -> None:
    # Twice real time, its worker killed with kill -9 once the third sentence is final (about 20 s in).
    try:
        moved = play(serving_fleet, 2.0, lambda p: not p.killed and len(finals(p.responses)) >= 3)
    finally:
        serving_fleet.wait_all_serving(timeout=60)  # supervisord restarts the killed worker
    assert len(moved.workers) == 2 and moved.killed == moved.workers[:1], moved.workers
    assert spoken(moved.responses) == undisturbed  # every word as spelt, and where it was said


# Ten kills on two workers wait for ten restarts: about a minute on an idle machine, minutes on a loaded one,
# so it runs in `make test-heavy`, not `make test`.
@pytest.mark.heavy
@pytest.mark.timeout(900)
def test_a_stream_moved_ten_times_by_kill_9_ends_whole(
    serving_fleet: Fleet, undisturbed: list[tuple[str, float, float]]
) -> None:
    # At real time, the worker holding the stream is killed ten times, as bad luck would have it: each time
    # right as it starts a decode further into the stream than the last kill (so mid-decode, mid-speech),
    # and once the speech is over, two seconds after the stream came to it. However long the killed
    # workers take to restart, the client keeps the stream open with silence until the ten kills are done:
    # silence is never decoded, so the finals are still the undisturbed run's.
    request_id = f"ten-moves-{uuid.uuid4().hex[:8]}"
    decodes = Decodes(serving_fleet, request_id)
    killed: list[str] = []
    spoken_out = threading.Event()
    done = threading.Event()

    def requests() -> Iterator[pb.StreamingTranscribeRequest]:
        options = pb.RecognitionOptions(enable_word_time_offsets=True)
        yield from stream_requests(read_speech(), 16000, pace=1.0, interim_results=True, options=options)
        spoken_out.set()
        while len(killed) < 10:
            time.sleep(0.1)
            yield pb.StreamingTranscribeRequest(audio_content=bytes(3200))

    def kill(name: str) -> None:
        os.kill(serving_fleet.workers()[name].supervisor_pid, signal.SIGKILL)
        killed.append(name)

    def killer() -> None:
        furthest, since = -1.0, time.monotonic()
        while not done.is_set() and len(killed) < 10:
            for name, until in decodes.new():
                if until > furthest and name not in killed[-1:] and len(killed) < 10:
                    kill(name)
                    furthest, since = until, time.monotonic()
            if spoken_out.is_set() and time.monotonic() - since >= 2.0:
                holders = [n for n, w in serving_fleet.workers().items() if w.streams and n not in killed[-1:]]
                if holders:
                    kill(holders[0])
                    since = time.monotonic()
            time.sleep(0.01)

    thread = threading.Thread(target=killer, daemon=True)
    thread.start()
    try:
        call = serving_fleet.transcription.StreamingTranscribe(
            requests(), metadata=(("x-request-id", request_id),), timeout=900
        )
        responses = list(call)
    finally:
        done.set()
        thread.join(10)
        serving_fleet.wait_all_serving(timeout=90)
    assert len(killed) == 10 and all(a != b for a, b in itertools.pairwise(killed)), killed
    assert spoken(responses) == undisturbed


def test_drained_worker_hands_its_stream_over(serving_fleet: Fleet) -> None:
    pcm, rate, _ = read_wav("speech_long.wav")
    call = serving_fleet.transcription.StreamingTranscribe(
        stream_requests(pcm, rate, pace=2.0, interim_results=True), timeout=120
    )
    responses = [next(call)]
    first_worker = responses[0].worker_id
    serving_fleet.supervisorctl("stop", f"gpu_worker:{first_worker}")
    try:
        responses.extend(call)  # no error: the stream continues elsewhere
        assert responses[-1].worker_id != first_worker
        text = words_of(" ".join(r.alternatives[0].transcript for r in finals(responses)))
        assert "coat" in text and "morning" in text
    finally:
        serving_fleet.supervisorctl("start", f"gpu_worker:{first_worker}")
        serving_fleet.wait_all_serving(timeout=60)


def test_sigterm_turns_health_watch_not_serving_first(serving_fleet: Fleet) -> None:
    socket = serving_fleet.run_dir / "worker-01.sock"
    seen: list[int] = []
    with grpc.insecure_channel(f"unix://{socket}") as channel:
        watch = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest(service=""), timeout=60)

        def follow() -> None:
            try:
                for update in watch:
                    seen.append(update.status)
            except grpc.RpcError:
                pass  # the worker exits after it reported NOT_SERVING

        thread = threading.Thread(target=follow)
        thread.start()
        try:
            assert wait_for(lambda: seen[-1:] == [health_pb2.HealthCheckResponse.SERVING], 5)
            serving_fleet.supervisorctl("stop", "gpu_worker:gpu_worker_01")
            thread.join(30)
            assert seen[-1] == health_pb2.HealthCheckResponse.NOT_SERVING
        finally:
            watch.cancel()
            serving_fleet.supervisorctl("start", "gpu_worker:gpu_worker_01")
    serving_fleet.wait_all_serving(timeout=60)


def test_stream_waits_for_a_worker_when_none_is_up(serving_fleet: Fleet) -> None:
    serving_fleet.supervisorctl("stop", "gpu_worker:*")
    responses: list[pb.StreamingTranscribeResponse] = []
    try:
        assert wait_for(lambda: serving_fleet.serving() == set(), 5)
        pcm, rate, _ = read_wav("speech_short.wav")

        def stream() -> None:
            responses.extend(
                serving_fleet.transcription.StreamingTranscribe(stream_requests(pcm, rate, pace=0), timeout=60)
            )

        thread = threading.Thread(target=stream)
        thread.start()
        time.sleep(2)  # the stream is waiting, not failed
        assert thread.is_alive()
        serving_fleet.supervisorctl("start", "gpu_worker:gpu_worker_00")
        thread.join(60)
        assert "lazy" in " ".join(r.alternatives[0].transcript for x in responses for r in x.results).lower()
    finally:
        serving_fleet.supervisorctl("start", "gpu_worker:*")
        serving_fleet.wait_all_serving(timeout=60)


def test_progress_call_goes_on_on_another_worker_after_a_kill(serving_fleet: Fleet) -> None:
    audio = speech_recording(17)  # under SHARD_MIN_SECONDS: one worker decodes it whole
    request = pb.TranscribeWithProgressRequest(request=pb.TranscribeRequest(audio_content=audio))
    reference = list(serving_fleet.transcription.TranscribeWithProgress(request, timeout=120))[-1].result
    reports: list[pb.TranscribeWithProgressResponse] = []
    try:
        for report in serving_fleet.transcription.TranscribeWithProgress(request, timeout=120):
            if not reports:  # the worker's first report, sent before it decodes: kill it then
                os.kill(serving_fleet.workers()[report.worker_id].supervisor_pid, signal.SIGKILL)
            reports.append(report)
        assert reports[-1].result.worker_id != reports[0].worker_id, "the call did not move to another worker"
        percents = [r.progress_percent for r in reports]
        assert percents == sorted(percents) and percents[-1] == 100
        segments = [s for r in reports for s in r.segments]
        assert [s.id for s in segments] == sorted({s.id for s in segments})  # none twice
        assert words_of(" ".join(s.text for s in segments)) == words_of(reports[-1].result.transcript)
        assert words_of(reports[-1].result.transcript) == words_of(reference.transcript)
    finally:
        serving_fleet.wait_all_serving(timeout=60)


def test_call_waits_for_a_worker_while_the_group_restarts(serving_fleet: Fleet) -> None:
    serving_fleet.supervisorctl("stop", "gpu_worker:*")
    answers: list[pb.TranscribeResponse] = []
    try:
        assert wait_for(lambda: serving_fleet.serving() == set(), 5)
        request = pb.TranscribeRequest(audio_content=clip("speech_short.wav"))
        # The stub, not the client library: no retry of the client's hides what the gateway answers.
        thread = threading.Thread(
            target=lambda: answers.append(serving_fleet.transcription.Transcribe(request, timeout=60))
        )
        thread.start()
        time.sleep(2)  # the call is queued, not refused
        assert thread.is_alive()
        serving_fleet.supervisorctl("start", "gpu_worker:gpu_worker_00")
        thread.join(60)
        assert "lazy" in answers[0].transcript.lower()
    finally:
        serving_fleet.supervisorctl("start", "gpu_worker:*")
        serving_fleet.wait_all_serving(timeout=60)


def test_crash_watch_tells_a_crash_loop_from_bad_luck() -> None:
    watch = CrashWatch(limit=3)
    # Killed at random moments: between decodes, or inside different decodes. Never a loop.
    for worker, decoding in [("a", None), ("b", 4.8), ("a", None), ("b", 9.6), ("a", 9.6), ("b", 12.0)]:
        watch.point(decoding)
        assert not watch.failed(worker, fleet_size=2)
    # Dying inside the decode up to 20.0 s, worker after worker: the third in a row ends the stream.
    watch.point(20.0)
    assert not watch.failed("a", fleet_size=2)
    watch.point(None)  # the new worker's first points come before it starts that decode again
    watch.point(20.0)
    assert not watch.failed("b", fleet_size=2)
    watch.point(20.0)
    assert watch.failed("a", fleet_size=2)
    error = watch.error("req-1")
    assert error.code == grpc.StatusCode.INTERNAL and error.reason == "STREAM_CRASH_LOOP"
    assert "a, b, a" in error.message and "20.0 s" in error.message and "req-1" in error.message
    # One worker failing three times is not "every worker in turn" where the fleet has two.
    watch = CrashWatch(limit=3)
    for _ in range(3):
        watch.point(5.0)
        done = watch.failed("a", fleet_size=2)
    assert not done
    # ... but it is where that worker is the whole fleet.
    watch.point(5.0)
    assert watch.failed("a", fleet_size=1)


def test_a_stream_whose_workers_die_in_the_same_decode_ends_with_crash_loop(serving_fleet: Fleet) -> None:
    # What a stream whose audio crashes the model looks like: every worker that takes it dies in the
    # same decode. The test plays the crash: it kills each worker as soon as the worker logs that it is
    # decoding the stream (just after telling the gateway where that decode goes).
    request_id = f"crash-loop-{uuid.uuid4().hex[:8]}"
    decodes = Decodes(serving_fleet, request_id)
    kills: list[tuple[str, float]] = []
    killed_pids: dict[str, int] = {}
    done = threading.Event()

    def killer() -> None:
        while not done.is_set():
            for name, until in decodes.new():
                pid = serving_fleet.workers()[name].supervisor_pid
                os.kill(pid, signal.SIGKILL)
                kills.append((name, until))
                killed_pids[name] = pid
            time.sleep(0.005)

    thread = threading.Thread(target=killer, daemon=True)
    thread.start()
    requests = stream_requests(read_speech(), 16000, pace=0, options=pb.RecognitionOptions())
    try:
        with pytest.raises(grpc.RpcError) as info:
            list(
                serving_fleet.transcription.StreamingTranscribe(
                    requests, metadata=(("x-request-id", request_id),), timeout=300
                )
            )
    finally:
        done.set()
        thread.join(5)
        # The last kill may be newer than the fleet's view: wait for every killed worker's successor, or the
        # next test would meet a worker that is dying as it starts.
        assert wait_for(
            lambda: all(serving_fleet.workers()[n].supervisor_pid not in (0, pid) for n, pid in killed_pids.items()),
            90,
            0.1,
        ), serving_fleet.workers()
        serving_fleet.wait_all_serving(timeout=90)
    err = info.value
    assert err.code() == grpc.StatusCode.INTERNAL, err.details()
    assert error_reason(err.trailing_metadata()) == "STREAM_CRASH_LOOP"
    assert request_id in err.details()
    # Three workers in a row (two different ones) died in the same decode; before it, kills may have
    # come between the worker's point and the gateway's reading of it (one more at most).
    assert 3 <= len(kills) <= 4, kills
    assert len({at for _, at in kills[-3:]}) == 1 and len({name for name, _ in kills[-3:]}) == 2, kills
