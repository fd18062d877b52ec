"""A worker's last health report never shows it SERVING once the report is stale: its process stopped,
was killed and replaced, failed its last check, or has not reported for a few health intervals.

ListWorkers marks such a report `health_stale` with status UNSPECIFIED, routing says UNREACHABLE, `scribe
status` gives its age and no figures, and the metrics say serving 0, health_stale 1. The first tests
check the registry, metrics and status table without a fleet; the last two stop and kill -9 a worker.
"""

from __future__ import annotations

import os
import signal
import time
import urllib.request

from prometheus_client import generate_latest
from scribe_client.cli.status import status_rows

from services.gateway.metrics import GatewayStats
from services.gateway.routing.dispatch import Dispatcher
from services.gateway.routing.registry import Registry, WorkerHandle, now, stale_after
from services.gen import fleet_pb2, transcription_pb2, worker_pb2
from tests.conftest import Fleet
from tests.helpers import clip, wait_for

SERVING = worker_pb2.WORKER_STATUS_SERVING
UNSPECIFIED = worker_pb2.WORKER_STATUS_UNSPECIFIED
UNREACHABLE = fleet_pb2.ROUTING_STATE_UNREACHABLE


def _reported(registry: Registry, name: str, pid: int = 100, status: int = SERVING) -> WorkerHandle:
    handle = registry.ensure(name, f"unix:///tmp/{name}.sock")
    handle.supervisor_state, handle.supervisor_pid = "RUNNING", pid
    health = worker_pb2.WorkerHealth(
        worker_id=name, pid=pid, process_rss_bytes=200 << 20, active_requests=1, model_name="tiny.en"
    )
    health.status = status  # type: ignore[assignment]
    handle.record_health(health)
    return handle


def _assert_stale(handle: WorkerHandle, why: str) -> None:
    msg = handle.to_pb()
    assert not handle.serving and msg.routing_state == UNREACHABLE and why in msg.routing_reason, msg
    assert msg.health_stale and msg.health.status == UNSPECIFIED, msg
    assert why in msg.health.status_reason and "last reported WORKER_STATUS_SERVING" in msg.health.status_reason
    assert msg.health.process_rss_bytes == 200 << 20  # the last figures stay, for diagnosis


def test_a_fresh_report_counts_and_keeps_its_status() -> None:
    registry = Registry([])
    fresh = _reported(registry, "a").to_pb()
    assert fresh.routing_state == fleet_pb2.ROUTING_STATE_SERVING and not fresh.health_stale
    assert fresh.health.status == SERVING
    draining = _reported(registry, "b", status=worker_pb2.WORKER_STATUS_DRAINING).to_pb()
    assert draining.routing_state == fleet_pb2.ROUTING_STATE_NOT_SERVING and not draining.health_stale
    assert draining.health.status == worker_pb2.WORKER_STATUS_DRAINING


def test_each_way_a_report_goes_stale() -> None:
    registry = Registry([], health_interval_s=0.25)
    assert stale_after(0.25) == 3 * (0.25 + 1.0)  # three polls, each with its check's 1 s timeout

    old = _reported(registry, "old")
    old.health_time = now() - stale_after(0.25) - 0.5
    _assert_stale(old, "no health report for")

    stopped = _reported(registry, "stopped")
    stopped.supervisor_state, stopped.supervisor_pid = "STOPPED", 0
    _assert_stale(stopped, "supervisor state STOPPED")

    restarted = _reported(registry, "restarted")
    restarted.supervisor_pid = 200  # killed and started again; the new process has not answered yet
    _assert_stale(restarted, "from pid 100, the process now is pid 200")
    restarted.record_health(worker_pb2.WorkerHealth(worker_id="restarted", pid=200, status=SERVING))
    assert restarted.serving and not restarted.to_pb().health_stale

    failed = _reported(registry, "failed")
    failed.mark_unreachable("call failed: Socket closed")
    _assert_stale(failed, "call failed: Socket closed")


def test_metrics_and_status_table_show_a_stale_worker_as_not_serving_with_no_figures() -> None:
    registry = Registry([])
    _reported(registry, "gpu_worker_00")
    stopped = _reported(registry, "gpu_worker_01", pid=101)
    stopped.supervisor_state, stopped.supervisor_pid = "STOPPED", 0

    text = generate_latest(GatewayStats(registry, Dispatcher(registry, 4)).prometheus).decode()
    for line in (
        'scribe_worker_serving{model="tiny.en",worker="gpu_worker_00"} 1.0',
        'scribe_worker_health_stale{model="tiny.en",worker="gpu_worker_00"} 0.0',
        'scribe_worker_rss_bytes{model="tiny.en",worker="gpu_worker_00"} 2.097152e+08',
        'scribe_worker_serving{model="tiny.en",worker="gpu_worker_01"} 0.0',
        'scribe_worker_health_stale{model="tiny.en",worker="gpu_worker_01"} 1.0',
    ):
        assert line in text.splitlines(), (line, text)
    assert 'scribe_worker_rss_bytes{model="tiny.en",worker="gpu_worker_01"}' not in text
    assert 'scribe_worker_active_requests{model="tiny.en",worker="gpu_worker_01"}' not in text

    header, live, gone = status_rows([w.to_pb() for w in registry.sorted()], now_s=now() + 7)
    row = dict(zip(header, gone, strict=True))
    assert row["ROUTING"] == "UNREACHABLE" and row["HEALTH AGE"] == "stale 7s", gone
    assert row["RSS MiB"] == row["ACTIVE"] == row["DONE"] == "-" and row["DEVICE"] == "cpu", gone
    row = dict(zip(header, live, strict=True))
    assert row["ROUTING"] == "SERVING" and row["HEALTH AGE"] == "7.0s" and row["RSS MiB"] == "200", live


def _metrics(fleet: Fleet) -> list[str]:
    with urllib.request.urlopen(f"http://{fleet.metrics}/metrics", timeout=5) as answer:
        return answer.read().decode().splitlines()


def test_a_worker_stopped_with_supervisorctl_is_shown_stale_everywhere(serving_fleet: Fleet) -> None:
    fleet = serving_fleet
    before = fleet.workers()["gpu_worker_01"]
    assert not before.health_stale and before.health.status == SERVING
    try:
        fleet.supervisorctl("stop", "gpu_worker:gpu_worker_01")
        assert wait_for(
            lambda: fleet.workers()["gpu_worker_01"].supervisor_state == fleet_pb2.SUPERVISOR_STATE_STOPPED, 10
        )
        worker = fleet.workers()["gpu_worker_01"]
        assert worker.routing_state == UNREACHABLE and worker.health_stale, worker
        assert worker.health.status == UNSPECIFIED and worker.health.pid == before.health.pid, worker
        assert "last reported WORKER_STATUS_SERVING" in worker.health.status_reason

        status = fleet.scribe("status").stdout
        row = next(line for line in status.splitlines() if line.startswith("gpu_worker_01"))
        assert row.split()[1:4] == ["STOPPED", "UNREACHABLE", "stale"], status
        metrics = _metrics(fleet)
        assert 'scribe_worker_serving{model="tiny.en",worker="gpu_worker_01"} 0.0' in metrics
        assert 'scribe_worker_health_stale{model="tiny.en",worker="gpu_worker_01"} 1.0' in metrics
        assert not any(
            line.startswith('scribe_worker_rss_bytes{model="tiny.en",worker="gpu_worker_01"}') for line in metrics
        )
        assert 'scribe_worker_health_stale{model="tiny.en",worker="gpu_worker_00"} 0.0' in metrics
    finally:
        fleet.supervisorctl("start", "gpu_worker:gpu_worker_01")
        fleet.wait_all_serving(timeout=60)
    worker = fleet.workers()["gpu_worker_01"]
    assert not worker.health_stale and worker.health.status == SERVING
    assert worker.health.pid == worker.supervisor_pid != before.health.pid
    assert 'scribe_worker_health_stale{model="tiny.en",worker="gpu_worker_01"} 0.0' in _metrics(fleet)


def test_a_worker_killed_with_sigkill_is_never_shown_serving_until_its_new_process_reports(
    serving_fleet: Fleet,
) -> None:
    """ListWorkers read every 20 ms from the kill until supervisord's new process serves: once the gateway
    has seen the kill, the dead process's report never reads SERVING, and only a report of the process
    supervisord now runs does."""
    fleet = serving_fleet
    killed = fleet.workers()["gpu_worker_00"].supervisor_pid
    seen: list[fleet_pb2.Worker] = []
    try:
        os.kill(killed, signal.SIGKILL)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            worker = fleet.workers()["gpu_worker_00"]
            seen.append(worker)
            if worker.routing_state == fleet_pb2.ROUTING_STATE_SERVING and worker.health.pid != killed:
                break
            time.sleep(0.02)
    finally:
        fleet.wait_all_serving(timeout=60)
    noticed = next(i for i, w in enumerate(seen) if w.routing_state != fleet_pb2.ROUTING_STATE_SERVING)
    stale = [w for w in seen[noticed:] if w.health_stale]
    assert stale, [(w.routing_state, w.routing_reason) for w in seen]
    assert all(w.health.status == UNSPECIFIED and w.routing_state == UNREACHABLE for w in stale)
    assert any(w.health.pid == killed for w in stale)  # the dead process's figures, marked
    for w in seen[noticed:]:
        if w.health.status == SERVING:
            assert not w.health_stale and w.health.pid == w.supervisor_pid != killed, w
            assert w.supervisor_state == fleet_pb2.SUPERVISOR_STATE_RUNNING
    assert seen[-1].health.status == SERVING and seen[-1].health.pid != killed


def test_a_hung_supervisord_keeps_serving_workers_in_routing(serving_fleet: Fleet) -> None:
    """supervisord stopped (SIGSTOP) holds its socket open without answering: the gateway keeps its last
    process table and goes on checking health, so live workers stay SERVING and calls go through."""
    fleet = serving_fleet
    pid = int((fleet.run_dir / "supervisord.pid").read_text())
    os.kill(pid, signal.SIGSTOP)
    try:
        seen: list[set[str]] = []
        until = time.monotonic() + stale_after(0.25) + 2  # past the age at which reports would go stale
        while time.monotonic() < until:
            seen.append(fleet.serving())
            time.sleep(0.25)
        response = fleet.transcription.Transcribe(
            transcription_pb2.TranscribeRequest(audio_content=clip("speech_short.wav")), timeout=60
        )
    finally:
        os.kill(pid, signal.SIGCONT)
    assert all(s == {"gpu_worker_00", "gpu_worker_01"} for s in seen), seen
    assert "fox" in response.transcript.lower(), response.transcript
    gateway_log = fleet.run_dir / "logs" / "gateway.log"  # written by supervisord, once it runs again
    assert wait_for(lambda: '"event": "supervisor_slow"' in gateway_log.read_text(), 10), gateway_log.read_text()[
        -2000:
    ]
