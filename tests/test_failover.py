"""A worker killed with SIGKILL mid-stream: the client's stream goes on, with the same words."""

from __future__ import annotations

import os
import signal
import threading
import time

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.gen import transcription_pb2 as pb
from tests.conftest import Fleet
from tests.helpers import clip, read_wav, speech_recording, stream_requests, wait_for, words_of


def finals(responses: list[pb.StreamingTranscribeResponse]) -> list[pb.StreamingRecognitionResult]:
    return [r for resp in responses for r in resp.results if r.is_final]


def final_words(responses: list[pb.StreamingTranscribeResponse]) -> list[pb.WordInfo]:
    return [w for r in finals(responses) for w in r.alternatives[0].words]


def run_stream(fleet: Fleet, kill_after: int | None = None) -> list[pb.StreamingTranscribeResponse]:
    pcm, rate, _ = read_wav("speech_long.wav")
    options = pb.RecognitionOptions(enable_word_time_offsets=True)
    # At real-time pace a worker is never behind, so what it decodes depends on the audio alone.
    call = fleet.transcription.StreamingTranscribe(
        stream_requests(pcm, rate, pace=1.0, interim_results=True, options=options), timeout=120
    )
    responses = []
    for response in call:
        responses.append(response)
        if kill_after is not None and len(finals(responses)) == kill_after:
            pid = fleet.workers()[response.worker_id].supervisor_pid
            os.kill(pid, signal.SIGKILL)
            kill_after = None
    return responses


def test_sigkill_mid_stream_loses_and_repeats_nothing(serving_fleet: Fleet) -> None:
    reference = run_stream(serving_fleet)
    moved = run_stream(serving_fleet, kill_after=2)
    try:
        assert len({r.worker_id for r in moved}) == 2, "the stream did not move to another worker"
        expected = words_of(" ".join(r.alternatives[0].transcript for r in finals(reference)))
        got = words_of(" ".join(r.alternatives[0].transcript for r in finals(moved)))
        assert got == expected  # WER 0 against the uninterrupted run
        starts = [w.start_offset.ToNanoseconds() for w in final_words(moved)]
        assert starts == sorted(starts)
        assert [w.word for w in final_words(moved)] == [w.word for w in final_words(reference)]
    finally:
        serving_fleet.wait_all_serving(timeout=60)  # supervisord restarts the killed worker


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
