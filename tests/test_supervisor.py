"""Operators drive workers with supervisorctl; the gateway follows without a restart."""

from __future__ import annotations

import time
from pathlib import Path

from services.gen import fleet_pb2
from services.gen import transcription_pb2 as pb
from tests.conftest import Fleet
from tests.helpers import clip, wait_for


def test_stopped_worker_leaves_routing_within_2s_and_requests_still_succeed(serving_fleet: Fleet) -> None:
    fleet = serving_fleet
    try:
        stopped_at = time.monotonic()
        result = fleet.supervisorctl("stop", "gpu_worker:gpu_worker_01")
        assert "stopped" in result.stdout, result.stdout + result.stderr

        def shown_stopped() -> bool:
            w = fleet.workers()["gpu_worker_01"]
            return (
                w.supervisor_state == fleet_pb2.SUPERVISOR_STATE_STOPPED
                and w.routing_state == fleet_pb2.ROUTING_STATE_UNREACHABLE
            )

        assert wait_for(shown_stopped, 2.0 - (time.monotonic() - stopped_at) + 2.0)  # stop itself may take a moment
        assert time.monotonic() - stopped_at < 4.0
        request = pb.TranscribeRequest(audio_content=clip("speech_short.flac"))
        for _ in range(3):
            response = fleet.transcription.Transcribe(request, timeout=60)
            assert response.worker_id == "gpu_worker_00"
            assert "fox" in response.transcript.lower()
    finally:
        fleet.supervisorctl("start", "gpu_worker:gpu_worker_01")
    fleet.wait_all_serving(timeout=60)


def test_restart_is_followed_live(serving_fleet: Fleet) -> None:
    fleet = serving_fleet
    old_pid = fleet.workers()["gpu_worker_00"].supervisor_pid
    result = fleet.supervisorctl("restart", "gpu_worker:gpu_worker_00")
    assert "started" in result.stdout, result.stdout + result.stderr
    fleet.wait_all_serving(timeout=60)
    worker = fleet.workers()["gpu_worker_00"]
    assert worker.supervisor_pid != old_pid
    assert worker.health.pid == worker.supervisor_pid


def test_scribe_status_agrees_with_supervisorctl(serving_fleet: Fleet) -> None:
    status = serving_fleet.scribe("status").stdout
    ctl = serving_fleet.supervisorctl("status").stdout
    for line in ctl.splitlines():
        name, state = line.split()[:2]
        if name.startswith("gpu_worker:"):
            row = next(r for r in status.splitlines() if r.startswith(name.split(":")[1]))
            assert row.split()[1] == state, (status, ctl)
    assert status.count("SERVING") == 2
    assert "cpu" in status


def test_scale_up_and_down_under_load_fails_nothing(serving_fleet: Fleet) -> None:
    import threading

    import grpc

    fleet = serving_fleet
    request = pb.TranscribeRequest(audio_content=clip("speech_short.flac"))
    stop = threading.Event()
    failures: list[str] = []
    served: list[str] = []

    def load() -> None:
        while not stop.is_set():
            try:
                served.append(fleet.transcription.Transcribe(request, timeout=60).worker_id)
            except grpc.RpcError as err:
                failures.append(f"{err.code()}: {err.details()}")

    threads = [threading.Thread(target=load) for _ in range(2)]
    for t in threads:
        t.start()
    try:
        up = fleet.scribe("scale", "3")
        assert "3 workers" in up.stderr
        fleet.wait_all_serving(("gpu_worker_00", "gpu_worker_01", "gpu_worker_02"), timeout=60)
        assert "gpu_worker_02" in fleet.supervisorctl("status").stdout
        assert wait_for(lambda: "gpu_worker_02" in served, 30)  # the new worker takes work
        fleet.scribe("scale", "1")
        assert wait_for(lambda: fleet.serving() == {"gpu_worker_00"}, 10), fleet.workers()
        assert wait_for(lambda: "gpu_worker_02" not in fleet.workers(), 2)  # its group is gone, not just stopped
        count = len(served)
        assert wait_for(lambda: len(served) >= count + 3, 30)
        fleet.scribe("scale", "2")
        fleet.wait_all_serving(timeout=60)
    finally:
        stop.set()
        for t in threads:
            t.join(60)
    assert failures == []
    assert "GPU_SCALE_WORKERS=2" in Path(fleet.env["SCRIBE_ENV_FILE"]).read_text()
