"""WORKER_IDLE_UNLOAD_S for real: a supervisord fleet of one worker that gives its model's memory back after
2 s idle (same pid: supervisord sees no restart), says so in health, and loads the model again for the next
call through the gateway. The memory is the worker's own RSS from its health report; the benchmark
(`make bench-models`) has the figures for both models."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from services.gen import fleet_pb2, worker_pb2
from services.gen import transcription_pb2 as pb
from tests.conftest import Fleet, running_fleet
from tests.helpers import clip, wait_for

UNLOADED = worker_pb2.MODEL_STATE_UNLOADED
LOADED = worker_pb2.MODEL_STATE_LOADED


@pytest.fixture(scope="module")
def idle_fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    with running_fleet(
        tmp_path_factory.mktemp("idle"), GPU_SCALE_WORKERS="1", WORKER_IDLE_UNLOAD_S="2", HTTP_ADDRESS=""
    ) as f:
        yield f


def worker(fleet: Fleet) -> fleet_pb2.Worker:
    return fleet.workers()["gpu_worker_00"]


def test_an_idle_worker_unloads_its_model_and_reloads_it_for_the_next_call(idle_fleet: Fleet) -> None:
    request = pb.TranscribeRequest(audio_content=clip("speech_short.wav"))
    assert "lazy" in idle_fleet.transcription.Transcribe(request, timeout=60).transcript.lower()
    loaded = worker(idle_fleet)
    assert loaded.health.model_state == LOADED and loaded.health.model_name == "tiny.en"
    assert loaded.health.model_load_time.ToNanoseconds() > 0
    pid = loaded.supervisor_pid

    def unloaded() -> bool:
        w = worker(idle_fleet)
        return w.health.model_state == UNLOADED and w.routing_state == fleet_pb2.ROUTING_STATE_SERVING

    assert wait_for(unloaded, 30, 0.1), worker(idle_fleet)
    idle = worker(idle_fleet)
    # The same process, still RUNNING for supervisord: it re-executed itself without the model.
    assert idle.supervisor_pid == idle.health.pid == pid
    assert idle.supervisor_state == fleet_pb2.SUPERVISOR_STATE_RUNNING
    assert idle.health.model == "" and idle.health.idle_time.ToNanoseconds() >= 0
    rss_loaded, rss_idle = loaded.health.process_rss_bytes, idle.health.process_rss_bytes
    assert rss_idle < 0.3 * rss_loaded, (rss_idle >> 20, rss_loaded >> 20)
    status = idle_fleet.scribe("status").stdout
    assert "tiny.en (unloaded)" in status and "0 loaded" not in status, status

    # The next call loads the model again and succeeds; the worker is loaded afterwards.
    assert "lazy" in idle_fleet.transcription.Transcribe(request, timeout=60).transcript.lower()
    again = worker(idle_fleet)
    assert again.health.model_state == LOADED and again.supervisor_pid == pid
    assert again.health.model_load_time.ToNanoseconds() > 0
    log = (idle_fleet.run_dir / "logs" / "supervisord.log").read_text()
    assert log.count("spawned: 'gpu_worker_00'") == 1, log  # never restarted by supervisord
