"""TLS, mutual TLS and bearer tokens on real gateway processes with certificates made for the test.

The gateways here run alone (no supervisord) in front of the shared fleet's worker 00 over its unix socket.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from scribe_client.credentials import ClientSecurity, open_channel

from services.common.auth import TokenSet, bearer_token, client_identity, configured_tokens, read_tokens_file
from services.common.config import ConfigError, Settings
from services.common.errors import error_reason
from services.common.tls import is_loopback, transport_mode
from services.gen import fleet_pb2, fleet_pb2_grpc, transcription_pb2_grpc
from services.gen import transcription_pb2 as pb
from tests.certs import Certs
from tests.conftest import BIN, TOKEN_A, TOKEN_B, Fleet, Process, spawn, start_gateway
from tests.helpers import DATA, ROOT, clip, free_port, port_open, read_wav, stream_requests, wait_for, words_of

HEALTH = health_pb2.HealthCheckRequest()
LIST = fleet_pb2.ListWorkersRequest()


@pytest.fixture(scope="module")
def tls_gateway(fleet: Fleet, certs: Certs, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Process]:
    """TLS (server certificate only) and tokens: TOKEN_A from AUTH_TOKENS, TOKEN_B from AUTH_TOKENS_FILE."""
    folder = tmp_path_factory.mktemp("tls-gateway")
    tokens = folder / "tokens"
    tokens.write_text(f"# one token per line\n\n{TOKEN_B}\n")
    env = {
        "TLS_CERT_FILE": str(certs.server.cert),
        "TLS_KEY_FILE": str(certs.server.key),
        "AUTH_TOKENS": TOKEN_A,
        "AUTH_TOKENS_FILE": str(tokens),
    }
    gateway = start_gateway(fleet, folder, env)
    yield gateway
    gateway.stop()


@pytest.fixture(scope="module")
def mtls_gateway(fleet: Fleet, certs: Certs, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Process]:
    env = {
        "TLS_CERT_FILE": str(certs.server.cert),
        "TLS_KEY_FILE": str(certs.server.key),
        "TLS_CLIENT_CA_FILE": str(certs.ca),
    }
    gateway = start_gateway(fleet, tmp_path_factory.mktemp("mtls-gateway"), env)
    yield gateway
    gateway.stop()


def _tls(certs: Certs, token: str | None = None, client: bool = False, ca: Path | None = None) -> ClientSecurity:
    return ClientSecurity(
        ca_file=str(ca or certs.ca),
        cert_file=str(certs.client.cert) if client else None,
        key_file=str(certs.client.key) if client else None,
        token=token,
    )


def _code(call: object) -> tuple[str, str | None]:
    try:
        call()  # type: ignore[operator]
    except grpc.RpcError as err:
        return err.code().name, error_reason(err.trailing_metadata())
    return "OK", None


# --- TLS -------------------------------------------------------------------------------------------------


def test_tls_handshake_with_the_right_ca_succeeds(tls_gateway: Process, certs: Certs) -> None:
    with open_channel(tls_gateway.address, _tls(certs, TOKEN_A)) as channel:
        assert (
            health_pb2_grpc.HealthStub(channel).Check(HEALTH, timeout=10).status
            == health_pb2.HealthCheckResponse.SERVING
        )
        workers = fleet_pb2_grpc.FleetServiceStub(channel).ListWorkers(LIST, timeout=10).workers
        assert [w.routing_state for w in workers] == [fleet_pb2.ROUTING_STATE_SERVING]
        response = transcription_pb2_grpc.TranscriptionServiceStub(channel).Transcribe(
            pb.TranscribeRequest(audio_content=clip("speech_short.flac")), timeout=60
        )
    assert "fox" in response.transcript.lower()


@pytest.mark.parametrize("client", ["plaintext", "untrusted CA"])
def test_tls_handshake_fails_for_plaintext_and_an_untrusted_ca(tls_gateway: Process, certs: Certs, client: str) -> None:
    security = ClientSecurity(token=TOKEN_A) if client == "plaintext" else _tls(certs, TOKEN_A, ca=certs.other_ca)
    with open_channel(tls_gateway.address, security) as channel:
        code, _ = _code(lambda: health_pb2_grpc.HealthStub(channel).Check(HEALTH, timeout=5))
    assert code == "UNAVAILABLE"
    assert tls_gateway.popen.poll() is None


def test_mtls_accepts_a_client_certificate_signed_by_the_ca(mtls_gateway: Process, certs: Certs) -> None:
    with open_channel(mtls_gateway.address, _tls(certs, client=True)) as channel:
        stub = transcription_pb2_grpc.TranscriptionServiceStub(channel)
        pcm, rate, _ = read_wav("speech_short.wav")
        responses = list(stub.StreamingTranscribe(stream_requests(pcm, rate, pace=0), timeout=120))
    text = " ".join(r.results[0].alternatives[0].transcript for r in responses if r.results and r.results[0].is_final)
    assert {"quick", "dog"} <= set(words_of(text))  # streamed: "fox" only at a 30 s encode (test_streaming.EXPECTED)


@pytest.mark.parametrize("client", ["no certificate", "certificate from another CA", "plaintext"])
def test_mtls_refuses_clients_without_a_trusted_certificate(mtls_gateway: Process, certs: Certs, client: str) -> None:
    if client == "no certificate":
        security = _tls(certs)
    elif client == "plaintext":
        security = ClientSecurity()
    else:
        security = ClientSecurity(
            ca_file=str(certs.ca), cert_file=str(certs.rogue_client.cert), key_file=str(certs.rogue_client.key)
        )
    with open_channel(mtls_gateway.address, security) as channel:
        code, _ = _code(lambda: fleet_pb2_grpc.FleetServiceStub(channel).ListWorkers(LIST, timeout=5))
    assert code == "UNAVAILABLE"
    assert mtls_gateway.popen.poll() is None


# --- Tokens ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("token", "reason"),
    [(None, "MISSING_TOKEN"), ("wrong-token-0123456789", "INVALID_TOKEN"), (TOKEN_A[:-1], "INVALID_TOKEN")],
)
def test_missing_or_wrong_token_is_unauthenticated_and_health_still_answers(
    tls_gateway: Process, certs: Certs, token: str | None, reason: str
) -> None:
    with open_channel(tls_gateway.address, _tls(certs, token)) as channel:
        transcription = transcription_pb2_grpc.TranscriptionServiceStub(channel)
        request = pb.TranscribeRequest(audio_content=clip("speech_short.flac"))
        assert _code(lambda: transcription.Transcribe(request, timeout=10)) == ("UNAUTHENTICATED", reason)
        assert _code(lambda: fleet_pb2_grpc.FleetServiceStub(channel).ListWorkers(LIST, timeout=10)) == (
            "UNAUTHENTICATED",
            reason,
        )
        code, got = _code(
            lambda: list(transcription.StreamingTranscribe(iter([pb.StreamingTranscribeRequest()]), timeout=10))
        )
        assert (code, got) == ("UNAUTHENTICATED", reason)
        # Probes need no secret.
        assert (
            health_pb2_grpc.HealthStub(channel).Check(HEALTH, timeout=10).status
            == health_pb2.HealthCheckResponse.SERVING
        )


def test_tokens_from_the_file_and_the_variable_both_work(tls_gateway: Process, certs: Certs) -> None:
    for token in (TOKEN_A, TOKEN_B):
        with open_channel(tls_gateway.address, _tls(certs, token)) as channel:
            assert fleet_pb2_grpc.FleetServiceStub(channel).ListWorkers(LIST, timeout=10).workers


def test_grpcurl_needs_the_token_for_reflection_too(tls_gateway: Process, certs: Certs) -> None:
    grpcurl = [str(BIN / "grpcurl"), "-cacert", str(certs.ca)]
    refused = subprocess.run([*grpcurl, tls_gateway.address, "list"], capture_output=True, text=True, timeout=30)
    assert refused.returncode != 0
    assert "unauthenticated" in refused.stderr.lower(), refused.stderr
    allowed = subprocess.run(
        [*grpcurl, "-H", f"authorization: Bearer {TOKEN_A}", tls_gateway.address, "list"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert allowed.returncode == 0, allowed.stderr
    assert "transcription.v1.TranscriptionService" in allowed.stdout


# --- CLI -------------------------------------------------------------------------------------------------


def test_cli_reaches_a_tls_gateway_with_token_flags(serving_fleet: Fleet, tls_gateway: Process, certs: Certs) -> None:
    flags = ["--address", tls_gateway.address, "--tls-ca", str(certs.ca), "--token", TOKEN_A]
    status = serving_fleet.scribe("status", *flags)
    assert "SERVING" in status.stdout
    out = serving_fleet.scribe("transcribe", str(DATA / "speech_short.flac"), *flags)
    assert "fox" in out.stdout.lower()
    refused = serving_fleet.scribe("transcribe", str(DATA / "speech_short.flac"), *flags[:-2], check=False)
    assert refused.returncode == 1
    assert "UNAUTHENTICATED" in refused.stderr


def test_cli_takes_mtls_files_from_the_environment(serving_fleet: Fleet, mtls_gateway: Process, certs: Certs) -> None:
    env = {
        **serving_fleet.env,
        "SCRIBE_TLS_CA_FILE": str(certs.ca),
        "SCRIBE_TLS_CERT_FILE": str(certs.client.cert),
        "SCRIBE_TLS_KEY_FILE": str(certs.client.key),
    }
    result = subprocess.run(
        [str(BIN / "scribe"), "status", "--address", mtls_gateway.address],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr
    assert "SERVING" in result.stdout


# --- Plaintext only on loopback --------------------------------------------------------------------------


def test_plaintext_on_a_network_address_needs_allow_insecure(serving_fleet: Fleet, tmp_path: Path) -> None:
    address = f"0.0.0.0:{free_port()}"
    refused = spawn(serving_fleet, tmp_path / "refused", "services.gateway", {"GATEWAY_ADDRESS": address})
    assert refused.popen.wait(timeout=60) == 2
    assert "ALLOW_INSECURE" in refused.logs() and "GATEWAY_ADDRESS" in refused.logs()

    allowed = spawn(
        serving_fleet,
        tmp_path / "allowed",
        "services.gateway",
        {
            "GATEWAY_ADDRESS": address,
            "ALLOW_INSECURE": "true",
            "STATIC_WORKERS": f"unix://{serving_fleet.run_dir / 'worker-00.sock'}",
        },
    )
    try:
        assert wait_for(lambda: "gateway_listening" in allowed.logs(), 60), allowed.logs()
        assert "insecure_listener" in allowed.logs()
        assert '"level": "warning"' in allowed.logs()
    finally:
        allowed.stop()


@pytest.mark.parametrize("variable", ["GATEWAY_ADDRESS", "HTTP_ADDRESS"])
def test_scribe_start_refuses_plaintext_on_a_network_address(
    serving_fleet: Fleet, tmp_path: Path, variable: str
) -> None:
    env = {**serving_fleet.env, variable: f"0.0.0.0:{free_port()}", "RUN_DIR": str(tmp_path / "run")}
    conf = tmp_path / "supervisord.conf"
    conf.write_text((ROOT / "supervisord.conf").read_text())
    result = subprocess.run(
        [str(BIN / "scribe"), "--config", str(conf), "start"], env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2
    assert "ALLOW_INSECURE" in result.stderr and variable in result.stderr
    assert not (tmp_path / "run" / "supervisor.sock").exists()


def test_http_api_serves_https_and_reaches_a_tls_gateway_with_the_callers_token(
    fleet: Fleet, tls_gateway: Process, certs: Certs, tmp_path: Path
) -> None:
    import ssl

    import openai

    address = f"127.0.0.1:{free_port()}"
    env = {
        "GATEWAY_ADDRESS": tls_gateway.address,
        "HTTP_ADDRESS": address,
        "SCRIBE_TLS_CA_FILE": str(certs.ca),  # how the HTTP server, a gateway client, trusts the gateway
        "TLS_CERT_FILE": str(certs.server.cert),  # and its own HTTPS
        "TLS_KEY_FILE": str(certs.server.key),
    }
    server = spawn(fleet, tmp_path, "services.http_api", env)
    try:
        assert wait_for(lambda: port_open(address), 30, 0.1), server.logs()

        def client(token: str) -> openai.OpenAI:
            trust = openai.DefaultHttpxClient(verify=ssl.create_default_context(cafile=str(certs.ca)))
            return openai.OpenAI(base_url=f"https://{address}/v1", api_key=token, max_retries=0, http_client=trust)

        # Clients are closed before the server stops: uvicorn's graceful shutdown waits for open TLS connections.
        with client(TOKEN_B) as good, (DATA / "speech_short.flac").open("rb") as f:
            text = good.audio.transcriptions.create(model="whisper-1", file=f).text
        assert {"quick", "fox"} <= set(words_of(text))
        with client("not-a-valid-token-0123456789") as bad, pytest.raises(openai.AuthenticationError) as refused:
            bad.models.list()
        assert refused.value.code == "invalid_token"
    finally:
        server.stop()


# --- Pure pieces -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("address", "loopback"),
    [
        ("127.0.0.1:50051", True),
        ("127.8.9.10:1", True),
        ("localhost:50051", True),
        ("[::1]:50051", True),
        ("0.0.0.0:50051", False),
        ("[::]:50051", False),
        ("10.1.2.3:50051", False),
        ("example.com:50051", False),
    ],
)
def test_is_loopback(address: str, loopback: bool) -> None:
    assert is_loopback(address) is loopback


def _settings(**env: str) -> Settings:
    return Settings.from_env({"SCRIBE_ENV_FILE": "/nonexistent", **env})


def test_settings_refuse_half_tls_and_weak_tokens(certs: Certs) -> None:
    with pytest.raises(ConfigError, match="TLS_CERT_FILE and TLS_KEY_FILE"):
        _settings(TLS_CERT_FILE=str(certs.server.cert))
    with pytest.raises(ConfigError, match="TLS_CLIENT_CA_FILE"):
        _settings(TLS_CLIENT_CA_FILE=str(certs.ca))
    with pytest.raises(ConfigError, match="TLS_KEY_FILE"):
        _settings(TLS_CERT_FILE=str(certs.server.cert), TLS_KEY_FILE="/nonexistent/key.pem")
    with pytest.raises(ConfigError, match="AUTH_TOKENS"):
        _settings(AUTH_TOKENS="short")
    settings = _settings(TLS_CERT_FILE=str(certs.server.cert), TLS_KEY_FILE=str(certs.server.key))
    assert transport_mode("0.0.0.0:1", settings, "GATEWAY_ADDRESS") == "tls"
    with pytest.raises(ConfigError, match="ALLOW_INSECURE"):
        transport_mode("0.0.0.0:1", _settings(), "GATEWAY_ADDRESS")
    assert transport_mode("0.0.0.0:1", _settings(ALLOW_INSECURE="true"), "GATEWAY_ADDRESS") == "plaintext"


def test_tokens_file_and_constant_time_set(tmp_path: Path) -> None:
    path = tmp_path / "tokens"
    path.write_text(f"# ops team\n{TOKEN_B}\n\n  {TOKEN_A}  \n")
    assert read_tokens_file(path) == (TOKEN_B, TOKEN_A)
    assert configured_tokens(_settings(AUTH_TOKENS=TOKEN_A, AUTH_TOKENS_FILE=str(path))) == (TOKEN_A, TOKEN_B)
    tokens = TokenSet([TOKEN_A, TOKEN_B])
    assert tokens.valid(TOKEN_A) and tokens.valid(TOKEN_B)
    assert not tokens.valid(None) and not tokens.valid("") and not tokens.valid(TOKEN_A + "x")
    assert not tokens.valid("\udcff" * 20)  # undecodable header bytes do not crash the check
    assert bearer_token([("authorization", f"bearer {TOKEN_A}")]) == TOKEN_A
    assert bearer_token([("authorization", f"Basic {TOKEN_A}")]) is None
    path.write_text("# nothing\n")
    with pytest.raises(ConfigError, match="holds no token"):
        read_tokens_file(path)


class _Context:
    def __init__(self, metadata: tuple[tuple[str, str], ...], auth: dict[str, list[bytes]], peer: str) -> None:
        self._metadata, self._auth, self._peer = metadata, auth, peer

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return self._metadata

    def auth_context(self) -> dict[str, list[bytes]]:
        return self._auth

    def peer(self) -> str:
        return self._peer


def test_client_identity_prefers_token_then_certificate_then_host() -> None:
    subject = {"x509_subject": [b"CN=client-a,O=scribe tests"]}
    with_token = _Context((("authorization", f"Bearer {TOKEN_A}"),), subject, "ipv4:10.0.0.1:5000")
    assert client_identity(with_token).startswith("token:")
    assert TOKEN_A not in client_identity(with_token)
    assert client_identity(_Context((), subject, "ipv4:10.0.0.1:5000")) == "cert:CN=client-a,O=scribe tests"
    one = client_identity(_Context((), {}, "ipv4:10.0.0.1:5000"))
    other_port = client_identity(_Context((), {}, "ipv4:10.0.0.1:6000"))
    assert one == other_port == "peer:ipv4:10.0.0.1"


def test_unreadable_client_files_are_a_clear_cli_error(serving_fleet: Fleet) -> None:
    result = serving_fleet.scribe("status", "--tls-ca", "/nonexistent/ca.pem", check=False)
    assert result.returncode != 0
    assert "cannot read the CA file" in result.stderr


def test_cli_uses_the_local_token_only_for_the_local_gateway(
    serving_fleet: Fleet, tls_gateway: Process, certs: Certs
) -> None:
    env = {**serving_fleet.env, "GATEWAY_ADDRESS": tls_gateway.address, "AUTH_TOKENS": TOKEN_A}

    def status(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(BIN / "scribe"), "status", "--tls-ca", str(certs.ca), *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            cwd=ROOT,
        )

    local = status()
    assert local.returncode == 0, local.stderr
    assert "SERVING" in local.stdout
    # The same gateway under another name is "another address": this host's token is not sent there.
    elsewhere = status("--address", tls_gateway.address.replace("127.0.0.1", "localhost"))
    assert elsewhere.returncode == 1
    assert "UNAUTHENTICATED" in elsewhere.stderr
