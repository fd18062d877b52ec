"""Shared fixtures. The `fleet` fixture is a real supervisord with a gateway and two workers on the embedded
model, started once per session by `scribe start` in a temporary folder, so tests never touch a fleet
that `make run` may have up in the checkout."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.gen import fleet_pb2, fleet_pb2_grpc, transcription_pb2_grpc
from tests.helpers import ROOT, free_port, wait_for

BIN = Path(sys.executable).parent


@dataclass
class Fleet:
    address: str
    conf: Path
    run_dir: Path
    env: dict[str, str]
    channel: grpc.Channel

    @property
    def transcription(self) -> transcription_pb2_grpc.TranscriptionServiceStub:
        return transcription_pb2_grpc.TranscriptionServiceStub(self.channel)

    @property
    def fleet(self) -> fleet_pb2_grpc.FleetServiceStub:
        return fleet_pb2_grpc.FleetServiceStub(self.channel)

    def run(
        self, *args: str, check: bool = True, timeout: float = 120, input: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        """Run a command of the venv (scribe, supervisorctl, grpcurl) against this fleet."""
        cmd = [str(BIN / args[0]), *args[1:]]
        return subprocess.run(
            cmd,
            env=self.env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=check,
            timeout=timeout,
            input=input,
        )

    def supervisorctl(self, *args: str) -> subprocess.CompletedProcess[str]:
        return self.run("supervisorctl", "-c", str(self.conf), *args, check=False)

    def scribe(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.run("scribe", "--config", str(self.conf), *args, check=check)

    def workers(self) -> dict[str, fleet_pb2.Worker]:
        listed = self.fleet.ListWorkers(fleet_pb2.ListWorkersRequest(), timeout=5).workers
        return {w.name: w for w in listed}

    def serving(self) -> set[str]:
        return {n for n, w in self.workers().items() if w.routing_state == fleet_pb2.ROUTING_STATE_SERVING}

    def wait_all_serving(
        self, names: tuple[str, ...] = ("gpu_worker_00", "gpu_worker_01"), timeout: float = 60
    ) -> None:
        assert wait_for(lambda: self.serving() >= set(names), timeout, 0.1), self.workers()


@pytest.fixture(scope="session")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    home = tmp_path_factory.mktemp("fleet")
    conf = home / "supervisord.conf"
    shutil.copy(ROOT / "supervisord.conf", conf)
    address = f"127.0.0.1:{free_port()}"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GPU_", "WHISPER_", "SUPERVISOR_"))}
    env.update(
        SCRIBE_ENV_FILE=str(home / "no.env"),
        GPU_SCALE_ENABLED="true",
        GPU_SCALE_WORKERS="2",
        GPU_SCALE_DEVICE_ID="0",
        WHISPER_CPU_THREADS="1",
        GATEWAY_ADDRESS=address,
        RUN_DIR=str(home / "run"),
        HEALTH_INTERVAL_S="0.25",
        STREAM_IDLE_TIMEOUT_S="5",
        LOG_FORMAT="json",
    )
    channel = grpc.insecure_channel(address)
    f = Fleet(address=address, conf=conf, run_dir=home / "run", env=env, channel=channel)
    started = f.scribe("start", "--wait", "120", check=False)
    try:
        assert started.returncode == 0, started.stderr + _logs(home / "run")
        yield f
    finally:
        channel.close()
        f.scribe("stop", check=False)


def _logs(run_dir: Path) -> str:
    out = []
    for log in sorted((run_dir / "logs").glob("*.log")):
        out.append(f"--- {log.name}\n{log.read_text()[-3000:]}")
    return "\n".join(out)


@pytest.fixture
def serving_fleet(fleet: Fleet) -> Fleet:
    """The fleet with both workers serving again (a previous test may have stopped one)."""
    fleet.wait_all_serving()
    return fleet


@dataclass
class LoneWorker:
    """One worker process serving on TCP, without supervisord or a gateway."""

    address: str
    channel: grpc.Channel

    @property
    def transcription(self) -> transcription_pb2_grpc.TranscriptionServiceStub:
        return transcription_pb2_grpc.TranscriptionServiceStub(self.channel)


@pytest.fixture(scope="module")
def short_stream_worker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LoneWorker]:
    """A real worker with MAX_STREAM_SECONDS=3: a limit the shared fleet keeps at its default."""
    home = tmp_path_factory.mktemp("lone-worker")
    address = f"127.0.0.1:{free_port()}"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GPU_", "WHISPER_", "SUPERVISOR_"))}
    env.update(
        SCRIBE_ENV_FILE=str(home / "no.env"),
        WHISPER_CPU_THREADS="1",
        RUN_DIR=str(home / "run"),
        MAX_STREAM_SECONDS="3",
        LOG_FORMAT="json",
    )
    log = (home / "worker.log").open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "services.gpu_worker", "--process-num", "90", "--listen", address],
        env=env,
        cwd=ROOT,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    channel = grpc.insecure_channel(address)
    health = health_pb2_grpc.HealthStub(channel)

    def serving() -> bool:
        try:
            answer = health.Check(health_pb2.HealthCheckRequest(), timeout=1)
            return bool(answer.status == health_pb2.HealthCheckResponse.SERVING)
        except grpc.RpcError:
            return False

    try:
        assert wait_for(serving, 120, 0.2), (home / "worker.log").read_text()[-3000:]
        yield LoneWorker(address, channel)
    finally:
        channel.close()
        proc.terminate()
        proc.wait(timeout=40)
        log.close()
