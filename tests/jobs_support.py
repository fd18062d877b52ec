"""What the job tests share: gateways with job settings over the fleet's workers, a real local webhook
receiver, and small waits on jobs."""

from __future__ import annotations

import base64
import http.server
import json
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from scribe_client import ScribeClient

from services.gen import jobs_pb2 as jpb
from services.gen import worker_pb2
from tests.conftest import TOKEN_A, Fleet, Process, spawn, start_gateway
from tests.helpers import DATA, free_port, wait_for

SECRET = "whsec_" + base64.b64encode(b"scribe-test-webhook-secret-0123456789").decode()
WORKERS_BOTH = "gpu_worker_00", "gpu_worker_01"


def both_workers(fleet: Fleet) -> str:
    return ",".join(f"unix://{fleet.run_dir / f'worker-0{n}.sock'}" for n in (0, 1))


def job_env(**extra: str) -> dict[str, str]:
    """Settings of a job test gateway: quick polls and retries, loopback webhooks allowed."""
    env = {
        "JOB_WEBHOOK_SECRET": SECRET,
        "JOB_ALLOW_NETWORKS": "127.0.0.0/8",
        "JOB_WEBHOOK_RETRY_S": "0.3",
        "JOB_POLL_S": "0.2",
        "JOB_LEASE_S": "4",
        "JOB_PIECE_SECONDS": "30",
        "JOB_SOURCE_DIRS": str(DATA),
    }
    env.update(extra)
    return env


def job_gateway(fleet: Fleet, folder: Path, **extra: str) -> Process:
    """A gateway process of its own (own RUN_DIR, so its own SQLite store) over both fleet workers."""
    return start_gateway(fleet, folder, job_env(**extra), workers=both_workers(fleet))


def client(gateway: Process, token: str | None = TOKEN_A) -> ScribeClient:
    return ScribeClient(gateway.address, token=token)


def wait_state(c: ScribeClient, job_id: str, states: set[int], timeout: float = 120) -> jpb.Job:
    found: list[jpb.Job] = []

    def reached() -> bool:
        found.append(c.jobs.get(job_id))
        return found[-1].state in states

    assert wait_for(reached, timeout, 0.1), found[-1] if found else job_id
    return found[-1]


def decoded_seconds(fleet: Fleet) -> float:
    """Audio the fleet's workers have decoded since they started (each window once; long silences are
    skipped, so a recording counts a little less than its length). Read after a second, so the health
    reports the gateway holds include every decode before now."""
    time.sleep(1.0)
    total = 0.0
    for w in fleet.workers().values():
        if w.HasField("health"):
            total += w.health.batch.audio_seconds_decoded
    return total


def busy(fleet: Fleet) -> int:
    """Calls the workers are running or queueing now."""
    return sum(
        w.health.active_requests + w.health.queued_requests
        for w in fleet.workers().values()
        if w.HasField("health") and w.health.status == worker_pb2.WORKER_STATUS_SERVING
    )


def gateway_id(gateway: Process) -> str:
    """JOB_GATEWAY_ID as the gateway logged it."""
    for line in gateway.logs().splitlines():
        if '"jobs_ready"' in line:
            return str(json.loads(line)["gateway_id"])
    raise AssertionError(gateway.logs())


def idle_gateway(fleet: Fleet, folder: Path, env: dict[str, str]) -> Process:
    """A gateway whose only worker never answers: it takes jobs in but never claims one."""
    address = f"127.0.0.1:{free_port()}"
    nowhere = f"unix://{folder / 'no-worker.sock'}"
    gateway = spawn(fleet, folder, "services.gateway", {**env, "GATEWAY_ADDRESS": address, "STATIC_WORKERS": nowhere})
    assert wait_for(lambda: '"jobs_ready"' in gateway.logs(), 60, 0.1), gateway.logs()
    assert wait_for(lambda: '"gateway_listening"' in gateway.logs(), 60, 0.1), gateway.logs()
    return gateway


def kill9(gateway: Process) -> None:
    os.kill(gateway.popen.pid, signal.SIGKILL)
    gateway.popen.wait(10)


@dataclass
class Delivery:
    body: bytes
    headers: dict[str, str]
    answered: int
    at: float


@dataclass
class Receiver:
    """A real HTTP server on loopback that records every webhook POST and answers what `answers` says."""

    url: str
    deliveries: list[Delivery] = field(default_factory=list)
    answers: list[int] = field(default_factory=list)  # statuses to answer in turn, then 200

    def wait(self, count: int, timeout: float = 30) -> list[Delivery]:
        assert wait_for(lambda: len(self.deliveries) >= count, timeout), self.deliveries
        return self.deliveries


@contextmanager
def webhook_receiver() -> Iterator[Receiver]:
    receiver = Receiver(url="")

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("content-length", "0")))
            status = receiver.answers.pop(0) if receiver.answers else 200
            receiver.deliveries.append(Delivery(body, dict(self.headers.items()), status, time.time()))
            self.send_response(status)
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    receiver.url = f"http://127.0.0.1:{server.server_address[1]}/hooks/scribe"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield receiver
    finally:
        server.shutdown()
        server.server_close()


def reason(err: grpc.RpcError) -> str | None:
    from services.common.errors import error_reason

    return error_reason(err.trailing_metadata())


def until(predicate: Callable[[], bool], timeout: float = 60) -> None:
    assert wait_for(predicate, timeout, 0.1)


@dataclass
class FileServer:
    """A real HTTP server on loopback serving a folder, for URL sources: `/moved/NAME` redirects to
    `/NAME`; every path asked for is recorded."""

    url: str
    asked: list[str] = field(default_factory=list)


@contextmanager
def file_server(folder: Path) -> Iterator[FileServer]:
    server_state = FileServer(url="")

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            server_state.asked.append(self.path)
            if self.path.startswith("/moved/"):
                self.send_response(302)
                self.send_header("location", self.path.removeprefix("/moved"))
                self.send_header("content-length", "0")
                self.end_headers()
                return
            target = folder / self.path.lstrip("/")
            if not target.is_file():
                self.send_error(404)
                return
            body = target.read_bytes()
            self.send_response(200)
            self.send_header("content-type", "audio/wav")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server_state.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server_state
    finally:
        server.shutdown()
        server.server_close()
