"""Workers on several machines, found through DNS: three "hosts" as network namespaces on a bridge.

Each host runs a real worker host (supervisord with deploy/worker-host.conf: two workers on TCP), a real
dnsmasq answers the headless name with the hosts' addresses, and a real gateway outside the namespaces
resolves it (STATIC_WORKERS=dns://DNSMASQ/NAME:PORT). The tests add a host to DNS, remove one while it
carries a stream, and kill a whole host (every process in its namespace, kill -9) under a stream and
Transcribe calls. The measured times are printed (`make test-hosts` shows them) and bounded by what the
design promises, not by what this machine managed once.

Run by `make test-hosts` (root, about two minutes), not by `make test`: see the `hosts` marker.
"""

from __future__ import annotations

import itertools
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.gateway.routing.registry import health_check_timeout
from services.gen import fleet_pb2, fleet_pb2_grpc, transcription_pb2_grpc
from services.gen import transcription_pb2 as pb
from tests.certs import make_certs
from tests.dnsmasq import Dnsmasq
from tests.helpers import ROOT, clip, free_port, read_wav, stream_requests, wait_for, words_of
from tests.netns import Host, Lab, require_root_and_tools

pytestmark = pytest.mark.hosts

NAME = "scribe-worker.test"
PORT = 50061
PROBE_PORT = 50071
PER_HOST = 2
TOKEN = "hosts-token-0123456789abcdef"
DNS_REFRESH_S = 1.0
HEALTH_INTERVAL_S = 0.25
METADATA = (("authorization", f"Bearer {TOKEN}"),)


@dataclass
class Cluster:
    address: str
    probe: str
    lab: Lab
    dns: Dnsmasq
    gateway: subprocess.Popen[bytes]
    gateway_log: Path
    channel: grpc.Channel
    worker_env: dict[str, str]
    timings: dict[str, float]

    @property
    def transcription(self) -> transcription_pb2_grpc.TranscriptionServiceStub:
        return transcription_pb2_grpc.TranscriptionServiceStub(self.channel)

    def workers(self) -> list[fleet_pb2.Worker]:
        stub = fleet_pb2_grpc.FleetServiceStub(self.channel)
        return list(stub.ListWorkers(fleet_pb2.ListWorkersRequest(), timeout=5, metadata=METADATA).workers)

    def serving_hosts(self) -> set[str]:
        return {w.host for w in self.workers() if w.routing_state == fleet_pb2.ROUTING_STATE_SERVING}

    def host(self, name: str) -> Host:
        return next(h for h in self.lab.hosts if h.name == name)

    def publish(self, *names: str) -> None:
        self.dns.set_hosts(NAME, [self.host(n).address for n in names])

    def logs(self) -> str:
        hosts = "\n".join(h.logs() for h in self.lab.hosts)
        return (
            f"--- gateway\n{self.gateway_log.read_text(errors='replace')[-4000:]}\n{hosts}\n--- dnsmasq\n"
            + (self.dns.logs()[-1500:])
        )


def probe(address: str, service: str = "") -> bool:
    """What a kubelet's gRPC probe sees: plaintext grpc.health.v1 on a HEALTH_PROBE_ADDRESS, no token."""
    with grpc.insecure_channel(address) as channel:
        try:
            answer = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=1
            )
        except grpc.RpcError:
            return False
    return bool(answer.status == health_pb2.HealthCheckResponse.SERVING)


def host_serving(address: str) -> bool:
    """Every worker of a host is ready, asked directly on its probe port (over the bridge), not through the gateway."""
    return all(probe(f"{address}:{PROBE_PORT + n}") for n in range(PER_HOST))


WORKER_ENV = {
    "GPU_SCALE_ENABLED": "true",
    "GPU_SCALE_WORKERS": str(PER_HOST),
    "GPU_SCALE_DEVICE_ID": "0",
    "WHISPER_CPU_THREADS": "1",
    "WORKER_LISTEN": f"0.0.0.0:{PORT}",
    "HEALTH_PROBE_ADDRESS": f"0.0.0.0:{PROBE_PORT}",
    "AUTH_TOKENS": TOKEN,
    "LOG_FORMAT": "json",
}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    require_root_and_tools()
    home = tmp_path_factory.mktemp("hosts")
    lab = Lab()
    dns: Dnsmasq | None = None
    gateway: subprocess.Popen[bytes] | None = None
    channel: grpc.Channel | None = None
    try:
        for name in ("a", "b", "c"):
            lab.add_host(name, home / name)
        # TLS to the workers as on Kubernetes: dialled by IP, checked against one name (WORKER_TLS_SERVER_NAME).
        certs = make_certs(home / "certs")
        worker_env = {**WORKER_ENV, "TLS_CERT_FILE": str(certs.server.cert), "TLS_KEY_FILE": str(certs.server.key)}
        for host in lab.hosts[:2]:
            lab.start_worker_host(host, worker_env)
        dns = Dnsmasq(home / "dns")
        dns.set_hosts(NAME, [h.address for h in lab.hosts[:2]])
        address = f"127.0.0.1:{free_port()}"
        gateway_probe = f"127.0.0.1:{free_port()}"
        gateway_log = home / "gateway.log"
        env = {
            "PATH": "/usr/bin:/bin",
            "SCRIBE_ENV_FILE": str(home / "no.env"),
            "GATEWAY_ADDRESS": address,
            "RUN_DIR": str(home / "gateway-run"),
            "STATIC_WORKERS": f"dns://{dns.server}/{NAME}:{PORT}",
            "DNS_REFRESH_S": str(DNS_REFRESH_S),
            "DNS_WORKERS_PER_HOST": str(PER_HOST),
            "HEALTH_INTERVAL_S": str(HEALTH_INTERVAL_S),
            "AUTH_TOKENS": TOKEN,
            "WORKER_TLS_CA_FILE": str(certs.ca),
            "WORKER_TLS_SERVER_NAME": "localhost",
            "HEALTH_PROBE_ADDRESS": gateway_probe,
            # Shorter than a stream: the GOAWAY it sends must not cut the streams below.
            "MAX_CONNECTION_AGE_S": "8",
            "METRICS_ADDRESS": "",
            "HTTP_ADDRESS": "",
            "LOG_FORMAT": "json",
        }
        with gateway_log.open("wb") as out:
            gateway = subprocess.Popen(
                [sys.executable, "-m", "services.gateway"], env=env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT
            )
        channel = grpc.insecure_channel(address)
        cluster = Cluster(address, gateway_probe, lab, dns, gateway, gateway_log, channel, worker_env, {})
        started = time.monotonic()
        up = {f"{h.address}:{PORT + n}" for h in lab.hosts[:2] for n in range(PER_HOST)}
        assert wait_for(lambda: _serving_or_none(cluster) >= up, 180, 0.2), cluster.logs()
        print(f"\nhosts a and b serving through DNS {time.monotonic() - started:.1f} s after start (model loads)")
        yield cluster
        print("\nmulti-host timings: " + ", ".join(f"{k} {v:.2f} s" for k, v in cluster.timings.items()))
    finally:
        if channel is not None:
            channel.close()
        if gateway is not None:
            gateway.terminate()
            try:
                gateway.wait(timeout=30)
            except subprocess.TimeoutExpired:
                gateway.kill()
        if dns is not None:
            dns.stop()
        lab.close()


def _serving_or_none(cluster: Cluster) -> set[str]:
    """Names of the workers the gateway routes to."""
    assert cluster.gateway.poll() is None, cluster.logs()
    try:
        return {w.name for w in cluster.workers() if w.routing_state == fleet_pb2.ROUTING_STATE_SERVING}
    except grpc.RpcError:
        return set()


def stream(
    cluster: Cluster, during: threading.Event | None = None
) -> tuple[list[pb.StreamingTranscribeResponse], list[float]]:
    """speech_long.wav at real-time pace; `during` is set once two results are final."""
    pcm, rate, _ = read_wav("speech_long.wav")
    call = cluster.transcription.StreamingTranscribe(
        stream_requests(pcm, rate, pace=1.0, interim_results=True), timeout=120, metadata=METADATA
    )
    responses, times = [], []
    for response in call:
        responses.append(response)
        times.append(time.monotonic())
        if during is not None and sum(r.is_final for x in responses for r in x.results) == 2:
            during.set()
    return responses, times


def final_words(responses: list[pb.StreamingTranscribeResponse]) -> list[str]:
    return words_of(" ".join(r.alternatives[0].transcript for x in responses for r in x.results if r.is_final))


def streaming_host(cluster: Cluster) -> str:
    return next(w.host for w in cluster.workers() if w.streams)


def test_hosts_are_listed_with_their_host_and_the_dns_entry_that_found_them(cluster: Cluster) -> None:
    workers = [w for w in cluster.workers() if w.routing_state == fleet_pb2.ROUTING_STATE_SERVING]
    a, b = cluster.host("a").address, cluster.host("b").address
    assert sorted(w.name for w in workers) == sorted(f"{h}:{p}" for h in (a, b) for p in (PORT, PORT + 1))
    assert {w.source for w in workers} == {f"dns://{cluster.dns.server}/{NAME}:{PORT}"}
    assert all(w.supervisor_state == fleet_pb2.SUPERVISOR_STATE_UNSUPERVISED for w in workers)
    assert probe(cluster.probe) and probe(cluster.probe, "liveness"), "the gateway's probe port says not ready"
    assert probe(f"{a}:{PROBE_PORT + 1}", "liveness") and not probe(f"{a}:{PROBE_PORT}", "no.such.Service")
    status = subprocess.run(
        [str(Path(sys.executable).parent / "scribe"), "status", "--address", cluster.address, "--token", TOKEN],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=ROOT,
    )
    assert status.returncode == 0, status.stderr
    header, *rows = status.stdout.splitlines()
    assert "HOST" in header and "FOUND BY" in header
    assert any(a in row and f"dns://{cluster.dns.server}/{NAME}:{PORT}" in row for row in rows), status.stdout


def test_a_host_added_to_dns_takes_calls_within_a_refresh_and_a_health_check(cluster: Cluster) -> None:
    c = cluster.host("c")
    cluster.lab.start_worker_host(c, cluster.worker_env)
    assert wait_for(lambda: host_serving(c.address), 180, 0.2), cluster.logs()
    assert c.address not in {w.host for w in cluster.workers()}
    published = time.monotonic()
    cluster.publish("a", "b", "c")
    on_c = {f"{c.address}:{PORT + n}" for n in range(PER_HOST)}
    assert wait_for(lambda: _serving_or_none(cluster) >= on_c, 30, 0.02), cluster.logs()
    joined = time.monotonic() - published
    cluster.timings["join"] = joined
    # One DNS refresh, then the monitor checks the new workers at once (one health check, with its timeout).
    assert joined <= DNS_REFRESH_S + HEALTH_INTERVAL_S + health_check_timeout(HEALTH_INTERVAL_S), joined

    def done_on_c() -> int:
        return sum(w.health.requests_completed for w in cluster.workers() if w.host == c.address)

    before = done_on_c()
    for _ in range(2 * 3 * PER_HOST):  # idle workers take calls in turn: every worker gets two
        response = cluster.transcription.Transcribe(
            pb.TranscribeRequest(audio_content=clip("speech_short.wav")), timeout=60, metadata=METADATA
        )
        assert "fox" in words_of(response.transcript), response.transcript
    assert wait_for(lambda: done_on_c() >= before + 2, 5, 0.1), cluster.workers()


def test_a_host_removed_from_dns_is_drained_and_its_stream_loses_nothing(cluster: Cluster) -> None:
    reference, _ = stream(cluster)
    on_it = threading.Event()
    with ThreadPoolExecutor(1) as pool:
        moved = pool.submit(stream, cluster, on_it)
        assert on_it.wait(60), cluster.logs()
        leaving = streaming_host(cluster)
        names = [h.name for h in cluster.lab.hosts if h.address != leaving and h.address in cluster.serving_hosts()]
        removed = time.monotonic()
        cluster.publish(*names)

        def draining() -> bool:
            mine = [w for w in cluster.workers() if w.host == leaving]
            return bool(mine) and all(w.routing_reason.startswith("draining:") for w in mine)

        assert wait_for(draining, 30, 0.02), cluster.logs()
        cluster.timings["drain starts"] = time.monotonic() - removed
        assert wait_for(lambda: leaving not in {w.host for w in cluster.workers()}, 30, 0.02), cluster.logs()
        cluster.timings["drained and dropped"] = time.monotonic() - removed
        responses, _ = moved.result(timeout=120)
    assert final_words(responses) == final_words(reference)  # nothing lost, nothing repeated
    assert '"code": "DRAINING"' in cluster.gateway_log.read_text(), "the stream was not moved by the drain"
    cluster.publish("a", "b", "c")  # back for the next test
    assert wait_for(lambda: leaving in cluster.serving_hosts(), 30, 0.05), cluster.logs()


def test_a_host_killed_mid_stream_leaves_the_stream_and_calls_going_on_another(cluster: Cluster) -> None:
    reference, reference_times = stream(cluster)
    expected = words_of(
        cluster.transcription.Transcribe(
            pb.TranscribeRequest(audio_content=clip("speech_long.wav")), timeout=60, metadata=METADATA
        ).transcript
    )
    on_it = threading.Event()
    with ThreadPoolExecutor(6) as pool:
        moved = pool.submit(stream, cluster, on_it)
        assert on_it.wait(60), cluster.logs()
        victim_address = streaming_host(cluster)
        victim = next(h for h in cluster.lab.hosts if h.address == victim_address)
        calls = [
            pool.submit(
                cluster.transcription.Transcribe,
                pb.TranscribeRequest(audio_content=clip("speech_long.wav")),
                timeout=120,
                metadata=METADATA,
            )
            for _ in range(5)
        ]

        def transcribing_on_victim() -> bool:
            return any(w.in_flight for w in cluster.workers() if w.host == victim_address)

        assert wait_for(transcribing_on_victim, 30, 0.01), "no Transcribe reached the host to kill"
        killed_at = time.monotonic()
        assert cluster.lab.kill_host(victim), "no process in the victim's namespace"
        unreachable = wait_for(
            lambda: all(
                w.routing_state == fleet_pb2.ROUTING_STATE_UNREACHABLE
                for w in cluster.workers()
                if w.host == victim_address
            ),
            30,
            0.01,
        )
        assert unreachable, cluster.logs()
        cluster.timings["killed host out of routing"] = time.monotonic() - killed_at
        responses, times = moved.result(timeout=120)
        answers = [c.result(timeout=120) for c in calls]
    after = [t for t in times if t > killed_at]
    assert after, "the stream ended before the kill"
    cluster.timings["stream's first response after the kill"] = after[0] - killed_at
    # For scale: the longest wait between two responses of the same stream with nothing killed.
    cluster.timings["longest gap, undisturbed stream"] = max(b - a for a, b in itertools.pairwise(reference_times))
    assert final_words(responses) == final_words(reference)
    for answer in answers:
        assert words_of(answer.transcript) == expected
    assert "worker_unavailable_retrying" in cluster.gateway_log.read_text(), "no Transcribe was retried"
