"""The container image (`make image`) runs both roles and transcribes a clip: `make image-test`.

Two containers on the host's network, listening on loopback only: a worker host (supervisord, one worker
on TCP with a token) and a gateway that lists it in STATIC_WORKERS. A client transcribes a clip through
the gateway; both containers run as the image's non-root user and stop cleanly on SIGTERM.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.gen import transcription_pb2 as pb
from services.gen import transcription_pb2_grpc
from tests.helpers import clip, free_port, wait_for, words_of

pytestmark = pytest.mark.image

IMAGE = os.environ.get("IMAGE", "localhost/scribe:0.1.0")
#: The Makefile's PODMAN_FLAGS: the runtime and rlimits this kind of machine allows.
FLAGS = os.environ.get("PODMAN_FLAGS", "").split()
TOKEN = "image-token-0123456789abcdef"
METADATA = (("authorization", f"Bearer {TOKEN}"),)


def podman(*args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(["podman", *args], capture_output=True, text=True, timeout=timeout)
    assert not check or done.returncode == 0, f"podman {' '.join(args)}: {done.stderr}"
    return done


@pytest.fixture(scope="module")
def containers() -> Iterator[dict[str, str]]:
    assert shutil.which("podman"), "podman is missing: `make image` installs it"
    assert podman("image", "exists", IMAGE, check=False).returncode == 0, f"no image {IMAGE}: run `make image`"
    tag = uuid.uuid4().hex[:8]
    worker_port, probe_port, gateway_port = free_port(), free_port(), free_port()
    names = {"worker": f"scribe-test-worker-{tag}", "gateway": f"scribe-test-gateway-{tag}"}
    common = [*FLAGS, "--network=host", "-e", f"AUTH_TOKENS={TOKEN}", "-e", "WHISPER_CPU_THREADS=1"]
    try:
        podman(
            "run", "-d", "--name", names["worker"], *common,
            "-e", "GPU_SCALE_WORKERS=1",
            "-e", f"WORKER_LISTEN=127.0.0.1:{worker_port}",
            "-e", f"HEALTH_PROBE_ADDRESS=127.0.0.1:{probe_port}",
            IMAGE, "worker-host",
        )  # fmt: skip
        podman(
            "run", "-d", "--name", names["gateway"], *common,
            "-e", f"GATEWAY_ADDRESS=127.0.0.1:{gateway_port}",
            "-e", f"STATIC_WORKERS=127.0.0.1:{worker_port}",
            "-e", "METRICS_ADDRESS=", "-e", "HTTP_ADDRESS=",
            IMAGE, "gateway",
        )  # fmt: skip
        yield {**names, "gateway_address": f"127.0.0.1:{gateway_port}", "probe": f"127.0.0.1:{probe_port}"}
    finally:
        for name in names.values():
            podman("rm", "-f", "-t", "5", name, check=False)


def logs(name: str) -> str:
    return podman("logs", name, check=False).stdout[-3000:] + podman("logs", name, check=False).stderr[-3000:]


def test_the_image_transcribes_a_clip_as_a_non_root_user_and_drains_on_sigterm(containers: dict[str, str]) -> None:
    channel = grpc.insecure_channel(containers["gateway_address"])
    health = health_pb2_grpc.HealthStub(channel)

    def serving() -> bool:
        try:
            answer = health.Check(health_pb2.HealthCheckRequest(), timeout=2)
        except grpc.RpcError:
            return False
        return bool(answer.status == health_pb2.HealthCheckResponse.SERVING)

    try:
        assert wait_for(serving, 180, 0.5), logs(containers["gateway"]) + logs(containers["worker"])
        stub = transcription_pb2_grpc.TranscriptionServiceStub(channel)
        response = stub.Transcribe(
            pb.TranscribeRequest(audio_content=clip("speech_short.wav")), timeout=60, metadata=METADATA
        )
        assert "fox" in words_of(response.transcript), response.transcript
    finally:
        channel.close()
    for role in ("worker", "gateway"):
        top = podman("top", containers[role], "user", "args").stdout
        assert "root" not in top.split(), top
    # SIGTERM: each role drains and exits 0.
    for role in ("gateway", "worker"):
        podman("stop", "-t", "60", containers[role], timeout=90)
        code = podman("inspect", "--format", "{{.State.ExitCode}}", containers[role]).stdout.strip()
        assert code == "0", logs(containers[role])
    assert "worker_stopped" in logs(containers["worker"]) and "gateway_stopped" in logs(containers["gateway"])
