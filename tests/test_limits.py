"""Every limit answers its documented status with an ErrorInfo reason, and the worker carries on.

Tight limits need their own processes: one worker on TCP loopback, as on another host (TLS, and it must
check the token), and a gateway in front of it. Decompression bombs go to the shared fleet, whose limits are the defaults.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from scribe_client.credentials import ClientSecurity, open_channel, token_metadata

from services.common.errors import error_reason, retry_delay
from services.gen import fleet_pb2, fleet_pb2_grpc, transcription_pb2_grpc, worker_pb2, worker_pb2_grpc
from services.gen import transcription_pb2 as pb
from tests.bad_audio import flac_bomb
from tests.certs import Certs
from tests.conftest import TOKEN_A, TOKEN_B, Fleet, Process, spawn, start_gateway
from tests.helpers import clip, free_port, read_wav, stream_requests, wait_for, words_of

WORKER_LIMITS = {
    "MAX_AUDIO_SECONDS": "10",
    "MAX_STREAM_SECONDS": "5",
    "STREAM_IDLE_TIMEOUT_S": "1.5",
    "WHISPER_CPU_THREADS": "1",
}
GATEWAY_LIMITS = {"MAX_MESSAGE_MB": "1", "MAX_CONCURRENT_STREAMS": "3", "MAX_STREAMS_PER_CLIENT": "2"}


@pytest.fixture(scope="module")
def tcp_worker(fleet: Fleet, certs: Certs, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Process]:
    """A worker as on another host: TCP with TLS, token required, tight limits."""
    address = f"127.0.0.1:{free_port()}"
    tls = {"TLS_CERT_FILE": str(certs.server.cert), "TLS_KEY_FILE": str(certs.server.key)}
    worker = spawn(
        fleet,
        tmp_path_factory.mktemp("tcp-worker"),
        "services.gpu_worker",
        {"AUTH_TOKENS": TOKEN_A, **tls, **WORKER_LIMITS},
        "--listen",
        address,
        "--process-num",
        "90",
    )
    worker.address = address
    try:
        assert wait_for(lambda: "worker_serving" in worker.logs() or worker.popen.poll() is not None, 120)
        assert worker.popen.poll() is None, worker.logs()
        yield worker
    finally:
        worker.stop()


@pytest.fixture(scope="module")
def limited(
    fleet: Fleet, tcp_worker: Process, certs: Certs, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Process]:
    """A gateway with tight limits and two tokens, routing to the TCP worker over TLS (it sends TOKEN_A)."""
    env = {"AUTH_TOKENS": f"{TOKEN_A},{TOKEN_B}", "WORKER_TLS_CA_FILE": str(certs.ca), **GATEWAY_LIMITS}
    gateway = start_gateway(fleet, tmp_path_factory.mktemp("limited-gateway"), env, workers=tcp_worker.address)
    yield gateway
    gateway.stop()


def _channel(gateway: Process, token: str = TOKEN_A) -> grpc.Channel:
    return open_channel(gateway.address, ClientSecurity(token=token))


def _error(call: object) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        call()  # type: ignore[operator]
    return info.value


# --- A worker on TCP ---------------------------------------------------------------------------------------


def test_tcp_worker_needs_tls_and_the_token_and_leaves_health_open(tcp_worker: Process, certs: Certs) -> None:
    with grpc.insecure_channel(tcp_worker.address) as plaintext:
        err = _error(lambda: health_pb2_grpc.HealthStub(plaintext).Check(health_pb2.HealthCheckRequest(), timeout=5))
        assert err.code() == grpc.StatusCode.UNAVAILABLE
    with open_channel(tcp_worker.address, ClientSecurity(ca_file=str(certs.ca))) as channel:
        worker = worker_pb2_grpc.WorkerServiceStub(channel)
        err = _error(lambda: worker.GetWorkerHealth(worker_pb2.GetWorkerHealthRequest(), timeout=10))
        assert err.code() == grpc.StatusCode.UNAUTHENTICATED
        assert error_reason(err.trailing_metadata()) == "MISSING_TOKEN"
        err = _error(
            lambda: transcription_pb2_grpc.TranscriptionServiceStub(channel).Transcribe(
                pb.TranscribeRequest(audio_content=clip("speech_short.flac")),
                timeout=10,
                metadata=token_metadata(TOKEN_B),  # the gateway's other token is not the worker's
            )
        )
        assert err.code() == grpc.StatusCode.UNAUTHENTICATED
        health = worker.GetWorkerHealth(
            worker_pb2.GetWorkerHealthRequest(), timeout=10, metadata=token_metadata(TOKEN_A)
        )
        assert health.health.status == worker_pb2.WORKER_STATUS_SERVING
        check = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
        assert check.status == health_pb2.HealthCheckResponse.SERVING


def test_gateway_reaches_the_tcp_worker_with_its_token(limited: Process) -> None:
    # TOKEN_B's caller is served: the gateway talks to the worker with its own first token.
    with _channel(limited, TOKEN_B) as channel:
        response = transcription_pb2_grpc.TranscriptionServiceStub(channel).Transcribe(
            pb.TranscribeRequest(audio_content=clip("speech_short.flac")), timeout=60
        )
    assert "fox" in response.transcript.lower()
    assert response.worker_id == "gpu_worker_90"


@pytest.mark.parametrize(
    ("env", "args", "message"),
    [
        ({}, ["--listen", "127.0.0.1:1"], "AUTH_TOKENS"),
        ({"AUTH_TOKENS": TOKEN_A}, ["--listen", "0.0.0.0:1"], "ALLOW_INSECURE"),
    ],
    ids=["no token", "plaintext on the network"],
)
def test_tcp_worker_refuses_to_start_unprotected(
    fleet: Fleet, tmp_path: Path, env: dict[str, str], args: list[str], message: str
) -> None:
    worker = spawn(fleet, tmp_path, "services.gpu_worker", {"AUTH_TOKENS": "", **env}, *args)
    assert worker.popen.wait(timeout=60) == 2, worker.logs()
    assert message in worker.logs()


def test_worker_refuses_a_run_dir_others_can_enter(fleet: Fleet, tmp_path: Path) -> None:
    run_dir = tmp_path / "shared-run"
    run_dir.mkdir(mode=0o755)
    run_dir.chmod(0o755)
    worker = spawn(fleet, tmp_path, "services.gpu_worker", {"RUN_DIR": str(run_dir)}, "--process-num", "91")
    assert worker.popen.wait(timeout=60) == 2, worker.logs()
    assert "RUN_DIR" in worker.logs() and "chmod 700" in worker.logs()
    assert not (run_dir / "worker-91.sock").exists()


# --- Size and length limits --------------------------------------------------------------------------------


def test_message_over_max_message_mb_is_resource_exhausted(limited: Process) -> None:
    with _channel(limited) as channel:
        stub = transcription_pb2_grpc.TranscriptionServiceStub(channel)
        big = b"\0" * (1024 * 1024 + 1)
        err = _error(lambda: stub.Transcribe(pb.TranscribeRequest(audio_content=big), timeout=30))
        assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "larger than max" in (err.details() or "")
        small = stub.Transcribe(pb.TranscribeRequest(audio_content=clip("speech_short.flac")), timeout=60)
    assert "fox" in small.transcript.lower()


@pytest.mark.parametrize(
    "request_",
    [
        pb.TranscribeRequest(audio_content=clip("speech_long.wav")),  # 14 s of speech in a WAV
        pb.TranscribeRequest(
            audio_content=b"\0\0" * 16000 * 12, encoding=pb.AUDIO_ENCODING_LINEAR16, sample_rate_hertz=16000
        ),
    ],
    ids=["container", "linear16"],
)
def test_audio_over_max_audio_seconds_is_out_of_range(limited: Process, request_: pb.TranscribeRequest) -> None:
    with _channel(limited) as channel:
        err = _error(lambda: transcription_pb2_grpc.TranscriptionServiceStub(channel).Transcribe(request_, timeout=60))
    assert err.code() == grpc.StatusCode.OUT_OF_RANGE
    assert error_reason(err.trailing_metadata()) == "AUDIO_TOO_LONG"
    assert "StreamingTranscribe" in (err.details() or "")


def test_stream_over_max_stream_seconds_gets_its_results_then_out_of_range(limited: Process) -> None:
    pcm, rate, _ = read_wav("speech_long.wav")
    finals: list[str] = []
    with _channel(limited) as channel:
        stub = transcription_pb2_grpc.TranscriptionServiceStub(channel)
        with pytest.raises(grpc.RpcError) as info:
            for response in stub.StreamingTranscribe(stream_requests(pcm, rate, chunk_s=0.5, pace=0), timeout=120):
                finals += [r.alternatives[0].transcript for r in response.results if r.is_final]
    assert info.value.code() == grpc.StatusCode.OUT_OF_RANGE
    assert error_reason(info.value.trailing_metadata()) == "STREAM_TOO_LONG"
    assert "morning" in words_of(" ".join(finals))  # the first 5 s were transcribed and sent


def test_idle_stream_is_ended_with_deadline_exceeded(limited: Process) -> None:
    def idle() -> Iterator[pb.StreamingTranscribeRequest]:
        yield pb.StreamingTranscribeRequest(
            streaming_config=pb.StreamingConfig(encoding=pb.AUDIO_ENCODING_LINEAR16, sample_rate_hertz=16000)
        )
        time.sleep(6)

    with _channel(limited) as channel:
        stub = transcription_pb2_grpc.TranscriptionServiceStub(channel)
        started = time.monotonic()
        err = _error(lambda: list(stub.StreamingTranscribe(idle(), timeout=30)))
    assert err.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert error_reason(err.trailing_metadata()) == "STREAM_IDLE_TIMEOUT"
    assert time.monotonic() - started < 5.5


# --- Concurrent streams ------------------------------------------------------------------------------------


class HeldStream:
    """A stream kept open with 0.1 s of silence every 0.2 s until `close()`."""

    def __init__(self, channel: grpc.Channel) -> None:
        self._stop = threading.Event()
        self.call = transcription_pb2_grpc.TranscriptionServiceStub(channel).StreamingTranscribe(
            self._requests(), timeout=120
        )

    def _requests(self) -> Iterator[pb.StreamingTranscribeRequest]:
        yield pb.StreamingTranscribeRequest(
            streaming_config=pb.StreamingConfig(encoding=pb.AUDIO_ENCODING_LINEAR16, sample_rate_hertz=16000)
        )
        while not self._stop.wait(0.2):
            yield pb.StreamingTranscribeRequest(audio_content=b"\0\0" * 1600)

    def close(self) -> None:
        self._stop.set()
        for _ in self.call:  # drains to the end; raises if the stream failed
            pass


def _in_flight(gateway: Process) -> int:
    with _channel(gateway) as channel:
        workers = fleet_pb2_grpc.FleetServiceStub(channel).ListWorkers(fleet_pb2.ListWorkersRequest(), timeout=10)
    return sum(w.in_flight + w.streams for w in workers.workers)


def test_stream_limits_per_client_and_in_total(limited: Process) -> None:
    channels = {token: _channel(limited, token) for token in (TOKEN_A, TOKEN_B)}
    held: list[HeldStream] = []

    def refused(token: str) -> grpc.RpcError:
        stub = transcription_pb2_grpc.TranscriptionServiceStub(channels[token])
        return _error(lambda: list(stub.StreamingTranscribe(stream_requests(b"\0\0" * 1600, 16000), timeout=30)))

    try:
        held += [HeldStream(channels[TOKEN_A]), HeldStream(channels[TOKEN_A])]
        assert wait_for(lambda: _in_flight(limited) == 2, 30)
        err = refused(TOKEN_A)
        assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert error_reason(err.trailing_metadata()) == "TOO_MANY_STREAMS_FOR_CLIENT"
        assert "MAX_STREAMS_PER_CLIENT" in (err.details() or "")
        assert retry_delay(err.trailing_metadata()) == pytest.approx(2.0)

        held.append(HeldStream(channels[TOKEN_B]))  # another client still gets in
        assert wait_for(lambda: _in_flight(limited) == 3, 30)
        err = refused(TOKEN_B)
        assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert error_reason(err.trailing_metadata()) == "TOO_MANY_STREAMS"
        assert retry_delay(err.trailing_metadata()) is not None
    finally:
        for stream in held:
            stream.close()  # the held streams themselves end OK
    assert wait_for(lambda: _in_flight(limited) == 0, 30)
    # Slots are given back: the client that was refused streams again.
    pcm, rate, _ = read_wav("speech_short.wav")
    stub = transcription_pb2_grpc.TranscriptionServiceStub(channels[TOKEN_A])
    responses = list(stub.StreamingTranscribe(stream_requests(pcm, rate, pace=0), timeout=120))
    # Streamed: tiny.en hears this synthetic "fox" only at a 30 s encode (tests/test_streaming.py, EXPECTED).
    assert "dog" in words_of(" ".join(r.results[0].alternatives[0].transcript for r in responses if r.results))
    for channel in channels.values():
        channel.close()


# --- Decompression bombs -----------------------------------------------------------------------------------


def _peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


def _reset_peak_rss(pid: int) -> None:
    Path(f"/proc/{pid}/clear_refs").write_text("5")  # Linux: reset VmHWM to the current RSS


def test_bomb_that_declares_its_length_is_refused_before_decoding(serving_fleet: Fleet) -> None:
    bomb = flac_bomb(3 * 3600, declare_length=True)
    assert len(bomb) < 40_000
    started = time.monotonic()
    err = _error(lambda: serving_fleet.transcription.Transcribe(pb.TranscribeRequest(audio_content=bomb), timeout=60))
    assert err.code() == grpc.StatusCode.OUT_OF_RANGE
    assert error_reason(err.trailing_metadata()) == "AUDIO_TOO_LONG"
    assert "audio is 10797 s" in (err.details() or "")  # whole 65535-sample frames of the 3 h
    assert time.monotonic() - started < 10


def test_bomb_that_hides_its_length_is_refused_within_bounded_memory(serving_fleet: Fleet) -> None:
    # 3 h of 8 kHz silence in 18 KiB, with "length unknown" in its header: only decoding finds out. Without
    # MAX_DECODE_RATIO the worker would decode 2 h (MAX_AUDIO_SECONDS), 230 MB, before refusing it.
    bomb = flac_bomb(3 * 3600, rate=8000, declare_length=False)
    pids = {name: w.supervisor_pid for name, w in serving_fleet.workers().items()}
    for pid in pids.values():
        _reset_peak_rss(pid)
    before = {pid: _peak_rss_mib(pid) for pid in pids.values()}
    err = _error(lambda: serving_fleet.transcription.Transcribe(pb.TranscribeRequest(audio_content=bomb), timeout=60))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error_reason(err.trailing_metadata()) == "DECODED_SIZE_TOO_LARGE"
    assert "MAX_DECODE_RATIO" in (err.details() or "")
    growth = max(_peak_rss_mib(pid) - before[pid] for pid in pids.values())
    assert growth < 64, f"peak RSS grew {growth:.0f} MiB"
    assert {name: w.supervisor_pid for name, w in serving_fleet.workers().items()} == pids
    assert serving_fleet.serving() == set(pids)
