"""Client side of scribe's transport security: channel credentials from PEM files, and the token metadata.

Every client (the CLI, the Python client library, the gateway calling remote workers) builds the same two
things: `grpc.ChannelCredentials | None` (None is plaintext) and `authorization` metadata from a token.
The environment variables below are the CLI's fallbacks for its --tls-* and --token flags.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

#: The metadata key of the bearer token (the server reads the same key).
AUTHORIZATION = "authorization"
#: Client-side variables (the server's are TLS_* and AUTH_TOKENS in Settings).
ENV_CA = "SCRIBE_TLS_CA_FILE"
ENV_CERT = "SCRIBE_TLS_CERT_FILE"
ENV_KEY = "SCRIBE_TLS_KEY_FILE"
ENV_SERVER_NAME = "SCRIBE_TLS_SERVER_NAME"
ENV_TOKEN = "SCRIBE_TOKEN"

Metadata = tuple[tuple[str, str], ...]


class CredentialsError(ValueError):
    """A TLS file cannot be read, or a certificate comes without its key."""


def _read(path: str | Path | None, what: str) -> bytes | None:
    if not path:
        return None
    try:
        return Path(path).expanduser().read_bytes()
    except OSError as exc:
        raise CredentialsError(f"cannot read the {what} {str(path)!r}: {exc.strerror}") from None


def channel_credentials(
    ca_file: str | Path | None = None, cert_file: str | Path | None = None, key_file: str | Path | None = None
) -> grpc.ChannelCredentials:
    """TLS credentials: trust `ca_file` (system roots when None); with cert and key, also show a client
    certificate for mutual TLS."""
    if bool(cert_file) != bool(key_file):
        raise CredentialsError(
            "a client certificate needs its key, and a key its certificate (--tls-cert with --tls-key)"
        )
    return grpc.ssl_channel_credentials(
        root_certificates=_read(ca_file, "CA file"),
        private_key=_read(key_file, "client key"),
        certificate_chain=_read(cert_file, "client certificate"),
    )


def token_metadata(token: str | None) -> Metadata:
    """The metadata that carries `token`; empty when there is none."""
    return ((AUTHORIZATION, f"Bearer {token}"),) if token else ()


@dataclass(frozen=True)
class ClientSecurity:
    """How a client reaches the gateway: TLS files (all None is plaintext) and a token."""

    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    server_name: str | None = None
    token: str | None = None

    @property
    def tls(self) -> bool:
        return bool(self.ca_file or self.cert_file)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: str | None) -> ClientSecurity:
        """SCRIBE_TLS_* and SCRIBE_TOKEN, with `overrides` (e.g. command-line flags) winning when set."""
        env = os.environ if environ is None else environ
        values = {
            "ca_file": env.get(ENV_CA),
            "cert_file": env.get(ENV_CERT),
            "key_file": env.get(ENV_KEY),
            "server_name": env.get(ENV_SERVER_NAME),
            "token": env.get(ENV_TOKEN),
        }
        values.update({k: v for k, v in overrides.items() if v})
        return cls(**{k: v or None for k, v in values.items()})

    def credentials(self) -> grpc.ChannelCredentials | None:
        return channel_credentials(self.ca_file, self.cert_file, self.key_file) if self.tls else None

    def metadata(self) -> Metadata:
        return token_metadata(self.token)

    def channel_options(self) -> list[tuple[str, Any]]:
        return [("grpc.ssl_target_name_override", self.server_name)] if self.server_name and self.tls else []


def open_channel(
    address: str, security: ClientSecurity | None = None, options: Sequence[tuple[str, Any]] = ()
) -> grpc.Channel:
    """A blocking channel to `address` with TLS and the token as `security` says."""
    security = security or ClientSecurity()
    opts = [*options, *security.channel_options()]
    credentials = security.credentials()
    channel = (
        grpc.secure_channel(address, credentials, options=opts)
        if credentials
        else grpc.insecure_channel(address, options=opts)
    )
    metadata = security.metadata()
    return grpc.intercept_channel(channel, _MetadataInterceptor(metadata)) if metadata else channel


class _CallDetails(grpc.ClientCallDetails):
    def __init__(self, base: grpc.ClientCallDetails, metadata: Metadata) -> None:
        self.method = base.method
        self.timeout = base.timeout
        self.metadata = (*(base.metadata or ()), *metadata)
        self.credentials = base.credentials
        self.wait_for_ready = getattr(base, "wait_for_ready", None)
        self.compression = getattr(base, "compression", None)


class _MetadataInterceptor(
    grpc.UnaryUnaryClientInterceptor,
    grpc.UnaryStreamClientInterceptor,
    grpc.StreamUnaryClientInterceptor,
    grpc.StreamStreamClientInterceptor,
):
    """Adds fixed metadata (the token) to every call of a blocking channel."""

    def __init__(self, metadata: Metadata) -> None:
        self._metadata = metadata

    def _call(self, continuation: Callable[..., Any], details: grpc.ClientCallDetails, request: Any) -> Any:
        return continuation(_CallDetails(details, self._metadata), request)

    intercept_unary_unary = _call
    intercept_unary_stream = _call
    intercept_stream_unary = _call
    intercept_stream_stream = _call


def _with_metadata(details: grpc.aio.ClientCallDetails, metadata: Metadata) -> grpc.aio.ClientCallDetails:
    merged = grpc.aio.Metadata(*(details.metadata or ()), *metadata)
    return grpc.aio.ClientCallDetails(
        details.method, details.timeout, merged, details.credentials, details.wait_for_ready
    )


class _AioUnaryUnary(grpc.aio.UnaryUnaryClientInterceptor):
    def __init__(self, metadata: Metadata) -> None:
        self._metadata = metadata

    async def intercept_unary_unary(self, continuation: Any, client_call_details: Any, request: Any) -> Any:
        return await continuation(_with_metadata(client_call_details, self._metadata), request)


class _AioUnaryStream(grpc.aio.UnaryStreamClientInterceptor):
    def __init__(self, metadata: Metadata) -> None:
        self._metadata = metadata

    async def intercept_unary_stream(self, continuation: Any, client_call_details: Any, request: Any) -> Any:
        return await continuation(_with_metadata(client_call_details, self._metadata), request)


class _AioStreamUnary(grpc.aio.StreamUnaryClientInterceptor):
    def __init__(self, metadata: Metadata) -> None:
        self._metadata = metadata

    async def intercept_stream_unary(self, continuation: Any, client_call_details: Any, request_iterator: Any) -> Any:
        return await continuation(_with_metadata(client_call_details, self._metadata), request_iterator)


class _AioStreamStream(grpc.aio.StreamStreamClientInterceptor):
    def __init__(self, metadata: Metadata) -> None:
        self._metadata = metadata

    async def intercept_stream_stream(self, continuation: Any, client_call_details: Any, request_iterator: Any) -> Any:
        return await continuation(_with_metadata(client_call_details, self._metadata), request_iterator)


def aio_token_interceptors(token: str | None) -> list[grpc.aio.ClientInterceptor]:
    """Interceptors for a grpc.aio channel that add the token to every call; none without a token."""
    metadata = token_metadata(token)
    if not metadata:
        return []
    return [_AioUnaryUnary(metadata), _AioUnaryStream(metadata), _AioStreamUnary(metadata), _AioStreamStream(metadata)]
