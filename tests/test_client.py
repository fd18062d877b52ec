"""The Python client library against the live fleet: files, bytes, streams from iterators and async
iterators, the bearer token, and its retries (UNAVAILABLE by gRPC's retry policy, RESOURCE_EXHAUSTED
after the server's RetryInfo delay)."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator
from concurrent import futures
from dataclasses import dataclass, field

import grpc
import pytest
from scribe_client import AsyncScribeClient, ScribeClient, StreamConfig, TranscribeOptions, service_config
from scribe_client.retry import retry_delay

from services.common.errors import RequestError, to_status
from services.gen import transcription_pb2 as pb
from services.gen import transcription_pb2_grpc
from tests.conftest import Fleet
from tests.helpers import DATA, ROOT, clip, free_port, read_wav, speech_recording, words_of


def finals(responses) -> str:
    return " ".join(r.alternatives[0].transcript for resp in responses for r in resp.results if r.is_final)


def chunks_of(pcm: bytes, size: int = 3200) -> Iterator[bytes]:
    """A one-shot generator, as a microphone would be: it cannot be rewound."""
    for i in range(0, len(pcm), size):
        yield pcm[i : i + size]


def test_transcribe_a_path_bytes_and_raw_pcm(serving_fleet: Fleet) -> None:
    pcm, rate, channels = read_wav("speech_short_44k_stereo.wav")
    with ScribeClient(serving_fleet.address) as client:
        from_path = client.transcribe(DATA / "speech_short.ogg", TranscribeOptions(word_timestamps=True))
        from_bytes = client.transcribe(clip("speech_short.flac"), TranscribeOptions(language="en"))
        from_pcm = client.transcribe(pcm, sample_rate_hertz=rate, channels=channels)
        config = client.get_config()
        workers = client.list_workers().workers
    for response in (from_path, from_bytes, from_pcm):
        assert "lazy" in words_of(response.transcript), response.transcript
    assert from_path.segments[0].words and not from_bytes.segments[0].words
    assert config.worker_count == 2 and {w.name for w in workers} == {"gpu_worker_00", "gpu_worker_01"}


def test_stream_from_an_iterator_and_an_async_iterator(serving_fleet: Fleet) -> None:
    pcm, rate, _ = read_wav("speech_long.wav")
    with ScribeClient(serving_fleet.address) as client:
        text = finals(client.stream(chunks_of(pcm), StreamConfig(sample_rate_hertz=rate), timeout=60))
    assert words_of(text)[:2] == ["good", "morning"] and "coat" in words_of(text), text

    async def live() -> AsyncIterator[bytes]:
        for chunk in chunks_of(pcm):
            await asyncio.sleep(0)
            yield chunk

    async def run() -> tuple[str, pb.TranscribeResponse]:
        async with AsyncScribeClient(serving_fleet.address) as client:
            responses = [r async for r in client.stream(live(), StreamConfig(sample_rate_hertz=rate), timeout=60)]
            reports = [r async for r in client.transcribe_with_progress(DATA / "speech_short.wav")]
            assert reports[-1].progress_percent == 100
            return finals(responses), reports[-1].result

    async_text, unary = asyncio.run(run())
    assert words_of(async_text)[:2] == ["good", "morning"] and "coat" in words_of(async_text), async_text
    assert "lazy" in words_of(unary.transcript)


def test_the_service_config_retries_only_unavailable() -> None:
    policy = json.loads(service_config())["methodConfig"][0]["retryPolicy"]
    assert policy["retryableStatusCodes"] == ["UNAVAILABLE"] and policy["maxAttempts"] == 5


def test_retry_delay_reads_the_servers_retry_info() -> None:
    busy = to_status(RequestError(grpc.StatusCode.RESOURCE_EXHAUSTED, "TOO_MANY_STREAMS", "busy", retry_after_s=1.25))
    too_big = to_status(RequestError(grpc.StatusCode.RESOURCE_EXHAUSTED, "MESSAGE_TOO_LARGE", "too big"))
    assert retry_delay(grpc.StatusCode.RESOURCE_EXHAUSTED, busy.trailing_metadata) == 1.25
    assert retry_delay(grpc.StatusCode.RESOURCE_EXHAUSTED, too_big.trailing_metadata) is None
    assert retry_delay(grpc.StatusCode.UNAVAILABLE, busy.trailing_metadata) is None


@dataclass
class Doorman(transcription_pb2_grpc.TranscriptionServiceServicer):
    """A real gRPC server in front of the live gateway that refuses the first calls as told, then
    forwards. It stands in for refusals this branch's gateway does not make yet (the per-client stream
    limit answers RESOURCE_EXHAUSTED with a RetryInfo) and records the metadata clients send."""

    gateway: transcription_pb2_grpc.TranscriptionServiceStub
    refusals: list[RequestError]
    calls: list[tuple[float, dict[str, str]]] = field(default_factory=list)

    def _admit(self, context: grpc.ServicerContext) -> None:
        self.calls.append((time.monotonic(), dict(context.invocation_metadata())))
        if self.refusals:
            context.abort_with_status(to_status(self.refusals.pop(0)))

    def Transcribe(self, request, context):
        self._admit(context)
        return self.gateway.Transcribe(request, timeout=60)

    def StreamingTranscribe(self, request_iterator, context):
        self._admit(context)
        yield from self.gateway.StreamingTranscribe(request_iterator, timeout=60)

    def TranscribeWithProgress(self, request, context):
        self._admit(context)
        yield from self.gateway.TranscribeWithProgress(request, timeout=60)


@pytest.fixture
def doorman(serving_fleet: Fleet) -> Iterator[tuple[Doorman, str]]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4), options=[("grpc.max_receive_message_length", -1)])
    keeper = Doorman(serving_fleet.transcription, [])
    transcription_pb2_grpc.add_TranscriptionServiceServicer_to_server(keeper, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield keeper, f"127.0.0.1:{port}"
    server.stop(grace=None)


def busy(delay: float) -> RequestError:
    return RequestError(grpc.StatusCode.RESOURCE_EXHAUSTED, "TOO_MANY_STREAMS", "too many streams", retry_after_s=delay)


def test_unavailable_is_retried_by_grpc_with_the_whole_large_request(doorman: tuple[Doorman, str]) -> None:
    keeper, address = doorman
    gone = RequestError(grpc.StatusCode.UNAVAILABLE, "NO_WORKER_SERVING", "no worker is serving")
    keeper.refusals = [gone, gone]
    # 448 kB, past gRPC's default 256 KiB retry buffer. Not one clip repeated: a transcript that repeats
    # itself fails Whisper's compression-ratio check, and the sampled fallback decodes vary from run to run.
    audio = speech_recording(14)
    with ScribeClient(address, token="s3cret") as client:
        response = client.transcribe(audio, timeout=60)
    # The whole request arrived on the third attempt: the worker decoded all 14 s.
    assert abs(response.audio_duration.ToNanoseconds() / 1e9 - 14) < 0.05
    assert words_of(response.transcript)[:2] == ["good", "morning"], response.transcript
    assert len(keeper.calls) == 3
    assert all(md.get("authorization") == "Bearer s3cret" for _, md in keeper.calls)


def test_resource_exhausted_without_retry_info_is_not_retried(doorman: tuple[Doorman, str]) -> None:
    keeper, address = doorman
    keeper.refusals = [RequestError(grpc.StatusCode.RESOURCE_EXHAUSTED, "MESSAGE_TOO_LARGE", "too big")]
    with ScribeClient(address) as client, pytest.raises(grpc.RpcError) as caught:
        client.transcribe(clip("speech_short.flac"), timeout=30)
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and len(keeper.calls) == 1


def test_busy_unary_and_progress_calls_wait_the_retry_delay(doorman: tuple[Doorman, str]) -> None:
    keeper, address = doorman
    keeper.refusals = [busy(0.6), busy(0.3)]
    with ScribeClient(address) as client:
        response = client.transcribe(clip("speech_short.flac"), timeout=60)
        (first, second, third) = [t for t, _ in keeper.calls]
        assert second - first >= 0.6 and third - second >= 0.3
        keeper.refusals = [busy(0.4)]
        reports = list(client.transcribe_with_progress(clip("speech_short.flac"), timeout=60))
    assert "lazy" in words_of(response.transcript)
    assert reports[-1].HasField("result") and "lazy" in words_of(reports[-1].result.transcript)
    assert keeper.calls[-1][0] - keeper.calls[-2][0] >= 0.4


def test_a_busy_stream_is_retried_with_its_audio_from_the_start(doorman: tuple[Doorman, str]) -> None:
    keeper, address = doorman
    pcm, rate, _ = read_wav("speech_long.wav")
    keeper.refusals = [busy(0.5)]
    with ScribeClient(address) as client:
        text = finals(client.stream(chunks_of(pcm), StreamConfig(sample_rate_hertz=rate), timeout=60))
    assert len(keeper.calls) == 2 and keeper.calls[1][0] - keeper.calls[0][0] >= 0.5
    # The chunks the refused attempt had already read from the one-shot generator were sent again.
    assert words_of(text)[:2] == ["good", "morning"] and "coat" in words_of(text), text

    keeper.refusals = [busy(0.3), busy(0.3)]

    async def live() -> AsyncIterator[bytes]:
        # As fast as it can: the asyncio client holds audio back until the server accepts or refuses,
        # because grpc.aio reports INTERNAL for a refusal that meets a write in flight (grpc/grpc#36066).
        for chunk in chunks_of(pcm):
            await asyncio.sleep(0)
            yield chunk

    async def run() -> str:
        async with AsyncScribeClient(address, token="t0ken") as client:
            return finals([r async for r in client.stream(live(), StreamConfig(sample_rate_hertz=rate), timeout=60)])

    async_text = asyncio.run(run())
    assert len(keeper.calls) == 5 and keeper.calls[-1][1].get("authorization") == "Bearer t0ken"
    assert words_of(async_text)[:2] == ["good", "morning"] and "coat" in words_of(async_text), async_text


def test_a_call_made_while_the_gateway_is_down_succeeds_once_it_is_up(serving_fleet: Fleet) -> None:
    """A second, real gateway process (static workers: the fleet's sockets) starts after the call began."""
    address = f"127.0.0.1:{free_port()}"
    env = dict(
        serving_fleet.env,
        GATEWAY_ADDRESS=address,
        METRICS_ADDRESS="",
        STATIC_WORKERS=f"unix://{serving_fleet.run_dir}/worker-00.sock",
        LOG_FORMAT="json",
    )
    procs: list[subprocess.Popen[bytes]] = []

    def start_gateway_later() -> None:
        time.sleep(1.0)
        procs.append(
            subprocess.Popen(
                [sys.executable, "-m", "services.gateway"],
                env=env,
                cwd=ROOT,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )

    # Long backoffs so that the retries outlast the gateway's start on a loaded machine (gRPC draws
    # each delay at random below the current backoff); the policy is the library's own.
    config = service_config(max_attempts=5, initial_backoff_s=3, max_backoff_s=10)
    starter = threading.Thread(target=start_gateway_later)
    try:
        with ScribeClient(address, service_config=config) as client:
            started = time.monotonic()
            starter.start()
            response = client.transcribe(clip("speech_short.flac"), timeout=60)
            took = time.monotonic() - started
    finally:
        starter.join()
        for proc in procs:
            proc.terminate()
            proc.wait(timeout=30)
    assert "lazy" in words_of(response.transcript)
    assert took > 1.0  # it could only have been answered by the gateway started after the call
