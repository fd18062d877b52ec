"""The HTTP face against the live fleet: OpenAI's own Python SDK for every response format (the same words
as gRPC), OpenAI-shaped errors from gateway statuses, tokens passed through, and the status page rendered
by headless Chromium."""

from __future__ import annotations

import io
import json
import shutil
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import openai
import pytest
import srt
import webvtt

from services.gen import fleet_pb2, fleet_pb2_grpc, transcription_pb2_grpc
from services.gen import transcription_pb2 as pb
from tests.conftest import TOKEN_A, Fleet, Process, spawn, start_gateway
from tests.helpers import DATA, clip, free_port, port_open, repeated_wav, wait_for, words_of

CLIP = DATA / "speech_short.wav"


def _up(address: str) -> bool:
    try:
        with urllib.request.urlopen(f"http://{address}/api/status", timeout=2) as answer:
            return bool(json.load(answer)["workers"])
    except (OSError, ValueError, KeyError):
        return False


def _client(address: str, token: str = "unused-by-a-fleet-without-tokens") -> openai.OpenAI:
    return openai.OpenAI(base_url=f"http://{address}/v1", api_key=token, max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def http(fleet: Fleet) -> str:
    """The fleet's HTTP server, which supervisord runs beside its gateway."""
    assert wait_for(lambda: _up(fleet.http), 60, 0.2), (fleet.run_dir / "logs" / "http.log").read_text()[-3000:]
    return fleet.http


@pytest.fixture(scope="module")
def grpc_words(fleet: Fleet) -> list[str]:
    response = fleet.transcription.Transcribe(pb.TranscribeRequest(audio_content=CLIP.read_bytes()), timeout=120)
    return words_of(response.transcript)


def _transcribe(client: openai.OpenAI, response_format: str, **extra: object) -> object:
    with CLIP.open("rb") as f:
        return client.audio.transcriptions.create(
            model="whisper-1",
            file=f,
            response_format=response_format,
            **extra,  # type: ignore[call-overload]
        )


def test_every_response_format_carries_the_words_of_the_grpc_api(
    serving_fleet: Fleet, http: str, grpc_words: list[str]
) -> None:
    client = _client(http)
    assert {"quick", "fox"} <= set(grpc_words)

    plain = _transcribe(client, "json")
    assert words_of(plain.text) == grpc_words  # type: ignore[attr-defined]
    assert words_of(str(_transcribe(client, "text"))) == grpc_words

    cues = list(srt.parse(str(_transcribe(client, "srt"))))
    assert cues and words_of(" ".join(c.content for c in cues)) == grpc_words
    vtt = webvtt.from_buffer(io.StringIO(str(_transcribe(client, "vtt"))))
    assert words_of(" ".join(c.text for c in vtt.captions)) == grpc_words

    verbose = _transcribe(client, "verbose_json", timestamp_granularities=["word", "segment"], language="en")
    assert verbose.task == "transcribe" and verbose.language == "en"  # type: ignore[attr-defined]
    assert 3.0 < verbose.duration < 4.0  # type: ignore[attr-defined]
    assert words_of(" ".join(w.word for w in verbose.words)) == grpc_words  # type: ignore[attr-defined]
    assert all(w.start <= w.end for w in verbose.words)  # type: ignore[attr-defined]
    segments = verbose.segments  # type: ignore[attr-defined]
    assert words_of(" ".join(s.text for s in segments)) == grpc_words
    assert segments[0].start < segments[-1].end <= verbose.duration + 0.01  # type: ignore[attr-defined]

    words_only = _transcribe(client, "verbose_json", timestamp_granularities=["word"])
    assert words_only.words and not words_only.segments  # type: ignore[attr-defined]


def test_models_lists_the_fleet_model(serving_fleet: Fleet, http: str) -> None:
    # The id is the name a request sends as `model` (GetConfig.models), not the workers' description.
    config = serving_fleet.transcription.GetConfig(pb.GetConfigRequest(), timeout=10)
    assert [m.id for m in _client(http).models.list()] == [m.name for m in config.models] == ["tiny.en"]


def test_gateway_refusals_come_back_as_openai_errors(serving_fleet: Fleet, http: str) -> None:
    client = _client(http)
    with pytest.raises(openai.BadRequestError) as bad_audio:
        client.audio.transcriptions.create(model="whisper-1", file=("noise.wav", b"not audio at all" * 64))
    assert bad_audio.value.code == "undecodable_audio"
    # tiny.en is English-only: the gateway's own reason, not a translation of English into English.
    with pytest.raises(openai.BadRequestError) as translate, CLIP.open("rb") as f:
        client.audio.translations.create(model="whisper-1", file=f)
    assert translate.value.code == "translate_unsupported"
    assert "English-only" in translate.value.message
    with pytest.raises(openai.BadRequestError) as fmt, CLIP.open("rb") as f:
        client.audio.transcriptions.create(model="whisper-1", file=f, response_format="docx")  # type: ignore[call-overload]
    assert fmt.value.param == "response_format"


@pytest.fixture(scope="module")
def token_http(fleet: Fleet, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Process, str]]:
    """A gateway with AUTH_TOKENS and no queue (GATEWAY_QUEUE_SIZE=0), and an HTTP server in front of it
    with the status page off and MAX_MESSAGE_MB=1."""
    folder = tmp_path_factory.mktemp("token-http")
    gateway = start_gateway(fleet, folder / "gateway", {"AUTH_TOKENS": TOKEN_A, "GATEWAY_QUEUE_SIZE": "0"})
    address = f"127.0.0.1:{free_port()}"
    # No AUTH_TOKENS here: the HTTP server needs none of its own, it passes each caller's token on.
    server = spawn(
        fleet,
        folder / "http",
        "services.http_api",
        {"GATEWAY_ADDRESS": gateway.address, "HTTP_ADDRESS": address, "STATUS_PAGE": "false", "MAX_MESSAGE_MB": "1"},
    )
    try:
        assert wait_for(lambda: port_open(address), 30, 0.1), server.logs()
        yield gateway, address
    finally:
        server.stop()
        gateway.stop()


def test_tokens_pass_through_and_a_full_queue_is_429_with_retry_after(
    serving_fleet: Fleet, token_http: tuple[Process, str]
) -> None:
    gateway, address = token_http
    with pytest.raises(openai.AuthenticationError) as missing:
        _transcribe(_client(address, token="wrong-token-0123456789"), "json")
    assert missing.value.status_code == 401 and missing.value.code == "invalid_token"
    assert words_of(_transcribe(_client(address, TOKEN_A), "json").text)[:2] == ["the", "quick"]  # type: ignore[attr-defined]

    # Hold every slot of the gateway's one worker (WORKER_CONCURRENCY) with gRPC calls; with no queue
    # (GATEWAY_QUEUE_SIZE=0), the next call is refused.
    metadata = (("authorization", f"Bearer {TOKEN_A}"),)
    request = pb.TranscribeRequest(audio_content=clip("speech_long.wav"))
    with grpc.insecure_channel(gateway.address) as channel:
        stub = transcription_pb2_grpc.TranscriptionServiceStub(channel)
        fleet_stub = fleet_pb2_grpc.FleetServiceStub(channel)

        def workers() -> list[fleet_pb2.Worker]:
            return list(fleet_stub.ListWorkers(fleet_pb2.ListWorkersRequest(), timeout=5, metadata=metadata).workers)

        slots = workers()[0].health.max_concurrent_requests
        holding = [stub.Transcribe.future(request, timeout=120, metadata=metadata) for _ in range(slots)]
        try:
            assert wait_for(lambda: workers()[0].in_flight == slots, 30, 0.02), workers()
            upload = urllib.request.Request(
                f"http://{address}/v1/audio/transcriptions",
                data=_multipart(CLIP.read_bytes()),
                headers={
                    "Authorization": f"Bearer {TOKEN_A}",
                    "Content-Type": f"multipart/form-data; boundary={BOUNDARY}",
                },
            )
            with pytest.raises(urllib.error.HTTPError) as refused:
                urllib.request.urlopen(upload, timeout=60)
        finally:
            for call in holding:
                call.cancel()  # the point was only to fill the slots
    assert refused.value.code == 429
    assert int(refused.value.headers["Retry-After"]) >= 1
    assert json.load(refused.value)["error"]["code"] == "queue_full"


def test_status_page_off_is_not_served(token_http: tuple[Process, str]) -> None:
    _, address = token_http
    for path in ("/", "/api/status"):
        with pytest.raises(urllib.error.HTTPError) as missing:
            urllib.request.urlopen(f"http://{address}{path}", timeout=10)
        assert missing.value.code == 404


def test_an_upload_over_max_message_mb_is_413(token_http: tuple[Process, str]) -> None:
    _, address = token_http
    with pytest.raises(openai.APIStatusError) as too_large:
        _client(address, TOKEN_A).audio.transcriptions.create(model="whisper-1", file=("big.wav", bytes(3 * 2**20)))
    assert too_large.value.status_code == 413 and too_large.value.code == "file_too_large"


def test_empty_http_address_exits_cleanly_and_a_bad_one_names_the_variable(fleet: Fleet) -> None:
    env = {**fleet.env, "HTTP_ADDRESS": ""}
    off = subprocess.run(
        [sys.executable, "-m", "services.http_api"], env=env, capture_output=True, text=True, timeout=60
    )
    assert off.returncode == 0 and "http_off" in off.stderr
    env["HTTP_ADDRESS"] = "8000"
    bad = subprocess.run(
        [sys.executable, "-m", "services.http_api"], env=env, capture_output=True, text=True, timeout=60
    )
    assert bad.returncode == 2 and "HTTP_ADDRESS" in bad.stderr


def test_a_client_that_goes_away_frees_its_workers(serving_fleet: Fleet, http: str) -> None:
    audio = repeated_wav("speech_long.wav", 10)  # 2 minutes: many seconds of work on both workers
    body = _multipart(audio)
    head = (
        f"POST /v1/audio/transcriptions HTTP/1.1\r\nHost: {http}\r\nContent-Length: {len(body)}\r\n"
        f"Content-Type: multipart/form-data; boundary={BOUNDARY}\r\n\r\n"
    )

    def busy() -> bool:
        return any(w.in_flight for w in serving_fleet.workers().values())

    host, _, port = http.rpartition(":")
    with socket.create_connection((host, int(port)), timeout=10) as connection:
        connection.sendall(head.encode() + body)
        assert wait_for(busy, 30, 0.02)
    # The server notices within DISCONNECT_CHECK_S and cancels; the gateway frees the workers at once.
    assert wait_for(lambda: not busy(), 2, 0.05), serving_fleet.workers()


BOUNDARY = "scribe-test-boundary"


def _multipart(audio: bytes) -> bytes:
    return (
        (
            f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="model"\r\n\r\nwhisper-1\r\n'
            f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="a.wav"\r\n'
            "Content-Type: audio/wav\r\n\r\n"
        ).encode()
        + audio
        + f"\r\n--{BOUNDARY}--\r\n".encode()
    )


# --- Status page ------------------------------------------------------------------------------------------


def _chromium(*args: str) -> subprocess.CompletedProcess[str]:
    browser = shutil.which("chromium")
    assert browser, "Debian's chromium is missing: `make test` installs it (apt-get install chromium)"
    # --virtual-time-budget lets the page's script fetch /api/status and render before the DOM is read.
    command = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=4000", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=90, check=True)


def _rendered_rows(address: str) -> dict[str, str]:
    """worker name -> supervisor state, as the page's rendered table shows them."""
    from html.parser import HTMLParser

    rows: dict[str, str] = {}

    class Rows(HTMLParser):
        def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
            found = dict(attrs)
            if tag == "tr" and found.get("data-worker"):
                rows[str(found["data-worker"])] = str(found.get("data-supervisor"))

    dom = _chromium("--dump-dom", f"http://{address}/").stdout
    Rows().feed(dom)
    assert 'id="queue"><b>0 / 6</b>' in dom, dom  # the fleet's GATEWAY_QUEUE_SIZE, rendered by the script
    assert rows, dom
    return rows


def _board(address: str) -> dict[str, str]:
    """worker name -> supervisor state in /api/status, which the page polls every second."""
    with urllib.request.urlopen(f"http://{address}/api/status", timeout=5) as answer:
        return {w["name"]: w["supervisor"] for w in json.load(answer)["workers"]}


def test_status_page_in_headless_chromium_shows_workers_queue_and_a_stopped_worker(
    serving_fleet: Fleet, http: str, tmp_path: Path
) -> None:
    running = {"gpu_worker_00": "RUNNING", "gpu_worker_01": "RUNNING"}
    # The server samples the fleet every 2 s: the page is checked once that sample has the state.
    assert wait_for(lambda: _board(http) == running, 10, 0.1), _board(http)
    rendered = _rendered_rows(http)
    assert rendered == running, (rendered, _board(http))
    screenshot = tmp_path / "status.png"  # a test artefact, kept out of the repository
    _chromium(f"--screenshot={screenshot}", "--window-size=1000,700", f"http://{http}/")
    assert screenshot.stat().st_size > 10_000
    page = json.loads(urllib.request.urlopen(f"http://{http}/api/status", timeout=5).read())
    assert "token" not in json.dumps(page).lower() and all("address" not in w for w in page["workers"])

    serving_fleet.supervisorctl("stop", "gpu_worker:gpu_worker_01")
    try:
        assert wait_for(lambda: _board(http).get("gpu_worker_01") == "STOPPED", 30, 0.1), _board(http)
        rendered = _rendered_rows(http)
        assert rendered["gpu_worker_01"] == "STOPPED", (rendered, _board(http))
    finally:
        serving_fleet.supervisorctl("start", "gpu_worker:gpu_worker_01")
    serving_fleet.wait_all_serving()
