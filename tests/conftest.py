"""Shared fixtures. The `fleet` fixture is a real supervisord with a gateway and two workers on the embedded
model, started once per session by `scribe start` in a temporary folder, so tests never touch a fleet
that `make run` may have up in the checkout."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.gen import fleet_pb2, fleet_pb2_grpc, transcription_pb2_grpc
from tests.certs import Certs, make_certs
from tests.helpers import ROOT, free_port, stop_process, wait_for

BIN = Path(sys.executable).parent

#: Fixtures that start processes (supervisord, workers, a gateway, dnsmasq). A test marked `fast` (make test-fast)
#: may not use them, even through another fixture: it belongs in a module without the mark.
PROCESS_FIXTURES = frozenset({"fleet", "serving_fleet", "small_gateway", "short_stream_worker", "dnsmasq"})


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Refuse a `fast` test that starts processes, so a slow test cannot land in `make test-fast` unseen."""
    slow = [
        f"{item.nodeid} uses {', '.join(sorted(PROCESS_FIXTURES & set(item.fixturenames)))}"  # type: ignore[attr-defined]
        for item in items
        if item.get_closest_marker("fast") and PROCESS_FIXTURES & set(getattr(item, "fixturenames", ()))
    ]
    if slow:
        raise pytest.UsageError(
            "tests marked fast (make test-fast) may not start processes; move them to a module without "
            "`pytestmark = pytest.mark.fast`:\n  " + "\n  ".join(slow)
        )


@dataclass
class Fleet:
    address: str
    conf: Path
    run_dir: Path
    env: dict[str, str]
    channel: grpc.Channel
    metrics: str
    http: str

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


@contextmanager
def running_fleet(home: Path, **extra: str) -> Iterator[Fleet]:
    """A real supervisord (`scribe start`) in `home` with a gateway, the HTTP server and workers; `extra`
    overrides the environment of the two-worker default below."""
    conf = home / "supervisord.conf"
    shutil.copy(ROOT / "supervisord.conf", conf)
    address = f"127.0.0.1:{free_port()}"
    metrics = f"127.0.0.1:{free_port()}"
    http = f"127.0.0.1:{free_port()}"
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
        GATEWAY_QUEUE_SIZE="6",
        METRICS_ADDRESS=metrics,
        HTTP_ADDRESS=http,
        SHARD_MIN_SECONDS="20",
        STREAM_IDLE_TIMEOUT_S="5",
        LOG_FORMAT="json",
    )
    env.update(extra)
    channel = grpc.insecure_channel(address)
    f = Fleet(address=address, conf=conf, run_dir=home / "run", env=env, channel=channel, metrics=metrics, http=http)
    started = f.scribe("start", "--wait", "120", check=False)
    try:
        assert started.returncode == 0, started.stderr + _logs(home / "run")
        yield f
    finally:
        channel.close()
        f.scribe("stop", check=False)
    crashes = _crashes(f.run_dir)
    assert not crashes, "\n".join(crashes) + "\n" + _logs(f.run_dir)


@pytest.fixture(scope="session")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    with running_fleet(tmp_path_factory.mktemp("fleet")) as f:
        yield f


def _logs(run_dir: Path) -> str:
    out = []
    for log in sorted((run_dir / "logs").glob("*.log")):
        out.append(f"--- {log.name}\n{log.read_text()[-3000:]}")
    return "\n".join(out)


CRASH = re.compile(r"exited: (\S+) \(terminated by (SIGSEGV|SIGABRT|SIGBUS|SIGFPE|SIGILL)")


def _crashes(run_dir: Path) -> list[str]:
    """Processes supervisord saw die of a native crash; tests kill workers only with SIGKILL or SIGTERM."""
    log = run_dir / "logs" / "supervisord.log"
    return [m.group(0) for m in CRASH.finditer(log.read_text())] if log.exists() else []


@pytest.fixture
def serving_fleet(fleet: Fleet) -> Iterator[Fleet]:
    """The fleet with both workers serving again (a previous test may have stopped one).

    supervisord restarts a crashed process at once, so a crash would go unseen by the test that caused
    it: each test also fails if a process died of a signal while it ran.
    """
    fleet.wait_all_serving()
    before = len(_crashes(fleet.run_dir))
    yield fleet
    crashes = _crashes(fleet.run_dir)[before:]
    assert not crashes, "\n".join(crashes) + "\n" + _logs(fleet.run_dir)


# --- Extra gateways and a TCP worker, for security and limits tests -------------------------------------
# A gateway process alone starts in about a second; it reuses the fleet's worker over its unix socket
# (STATIC_WORKERS), so trying TLS, tokens or tight limits costs no second fleet.

TOKEN_A = "token-a-0123456789abcdef"
TOKEN_B = "token-b-0123456789abcdef"


@dataclass
class Process:
    """A gateway or worker started by a test, with its log."""

    address: str
    popen: subprocess.Popen[bytes]
    log: Path
    run_dir: Path | None = None

    def logs(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self) -> None:
        stop_process(self.popen, 30)


def spawn(fleet: Fleet, folder: Path, module: str, env: dict[str, str], *args: str) -> Process:
    """`python -m module` with the fleet's environment (no supervisord) plus `env`."""
    folder.mkdir(parents=True, exist_ok=True)
    folder.chmod(0o700)
    full = {k: v for k, v in fleet.env.items() if not k.startswith("SUPERVISOR_")}
    full.update(
        RUN_DIR=str(folder / "run"), LOG_FORMAT="json", HEALTH_INTERVAL_S="0.25", METRICS_ADDRESS="", HTTP_ADDRESS=""
    )
    full.update(env)
    log = folder / f"{module.rsplit('.', 1)[-1]}.log"
    with log.open("wb") as out:
        popen = subprocess.Popen(
            [sys.executable, "-m", module, *args], env=full, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT
        )
    return Process(address=full.get("GATEWAY_ADDRESS", ""), popen=popen, log=log, run_dir=Path(full["RUN_DIR"]))


def start_gateway(fleet: Fleet, folder: Path, env: dict[str, str], workers: str | None = None) -> Process:
    """A gateway in front of the fleet's worker 00 (or `workers`, comma-separated), waited for until it routes to them."""
    address = f"127.0.0.1:{free_port()}"
    static = workers or f"unix://{fleet.run_dir / 'worker-00.sock'}"
    gateway = spawn(fleet, folder, "services.gateway", {"GATEWAY_ADDRESS": address, "STATIC_WORKERS": static, **env})

    def routing() -> bool:
        assert gateway.popen.poll() is None, gateway.logs()
        return f'"serving_workers": {len(static.split(","))}' in gateway.logs()

    try:
        assert wait_for(routing, 60, 0.1), gateway.logs()
    except BaseException:
        gateway.stop()
        raise
    return gateway


@pytest.fixture(scope="session")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    return make_certs(tmp_path_factory.mktemp("certs"))


@dataclass
class LoneWorker:
    """One worker process serving on TCP, without supervisord or a gateway."""

    address: str
    channel: grpc.Channel

    @property
    def transcription(self) -> transcription_pb2_grpc.TranscriptionServiceStub:
        return transcription_pb2_grpc.TranscriptionServiceStub(self.channel)


@contextmanager
def lone_worker(home: Path, number: int, **settings: str) -> Iterator[LoneWorker]:
    """A real worker process numbered `number`, with `settings` over the defaults, serving on its unix socket
    in a private RUN_DIR under `home`, as supervisord runs workers (TCP would need a token)."""
    (home / "run").mkdir(mode=0o700)
    address = f"unix://{home / 'run' / f'worker-{number}.sock'}"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GPU_", "WHISPER_", "SUPERVISOR_"))}
    env.update(SCRIBE_ENV_FILE=str(home / "no.env"), WHISPER_CPU_THREADS="1", RUN_DIR=str(home / "run"))
    env.update(LOG_FORMAT="json", **settings)
    log = (home / "worker.log").open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "services.gpu_worker", "--process-num", str(number)],
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


@pytest.fixture(scope="module")
def short_stream_worker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LoneWorker]:
    """A real worker with MAX_STREAM_SECONDS=3: a limit the shared fleet keeps at its default."""
    with lone_worker(tmp_path_factory.mktemp("lone-worker"), 90, MAX_STREAM_SECONDS="3") as worker:
        yield worker


# --- A gateway with a 1 MiB message limit over both workers, for uploads ---------------------------------


@pytest.fixture(scope="module")
def small_gateway(fleet: Fleet, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Process]:
    """A gateway whose messages stop at 1 MiB and uploads at 8 MiB, over both of the fleet's workers: a minute of
    WAV is already too large for one message, and takes the path an hour takes at the default limit."""
    folder = tmp_path_factory.mktemp("upload-gateway")
    stale = folder / "run" / "uploads" / "upload-stale.upload"  # as a killed gateway would leave it
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"x" * 1000)
    workers = ",".join(f"unix://{fleet.run_dir / f'worker-0{n}.sock'}" for n in (0, 1))
    env = {"MAX_MESSAGE_MB": "1", "MAX_UPLOAD_MB": "8", "PIECE_SECONDS": "30", "SHARD_MIN_SECONDS": "20"}
    gateway = start_gateway(fleet, folder, env, workers=workers)
    assert wait_for(lambda: not stale.exists(), 10), "a leftover spool file survived the gateway's start"
    try:
        yield gateway
    finally:
        gateway.stop()
