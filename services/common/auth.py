"""Bearer tokens on the server side: which tokens are valid, the interceptor that checks them, and who a
caller is (for per-client limits).

A call carries `authorization: Bearer <token>`. Tokens are compared with `hmac.compare_digest` against
every configured token, so the time a check takes says nothing about how much of a guess was right.
`grpc.health.v1.Health` stays open, so load balancers and probes need no secret.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health
from scribe_client.credentials import AUTHORIZATION

from services.common.config import ConfigError, Settings, check_token
from services.common.errors import RequestError, to_status

BEARER = "bearer "
#: Methods anyone may call: health probes must work without a secret.
OPEN_PREFIXES: tuple[str, ...] = (f"/{health.SERVICE_NAME}/",)


def read_tokens_file(path: Path) -> tuple[str, ...]:
    """One token per line; blank lines and lines starting with # are skipped."""
    try:
        lines = path.read_text().splitlines()
    except OSError as exc:
        raise ConfigError(f"AUTH_TOKENS_FILE {str(path)!r} cannot be read: {exc.strerror}") from None
    tokens = tuple(line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#"))
    for token in tokens:
        check_token("AUTH_TOKENS_FILE", token)
    if not tokens:
        raise ConfigError(f"AUTH_TOKENS_FILE {str(path)!r} holds no token")
    return tokens


def configured_tokens(settings: Settings) -> tuple[str, ...]:
    """AUTH_TOKENS and the lines of AUTH_TOKENS_FILE; empty means no authentication."""
    from_file = read_tokens_file(settings.auth_tokens_file) if settings.auth_tokens_file else ()
    return tuple(dict.fromkeys((*settings.auth_tokens, *from_file)))


def bearer_token(metadata: Iterable[tuple[str, Any]] | None) -> str | None:
    """The token of an `authorization: Bearer <token>` header, if the call has one."""
    for key, value in metadata or ():
        if key == AUTHORIZATION and isinstance(value, str) and value[: len(BEARER)].lower() == BEARER:
            return value[len(BEARER) :].strip()
    return None


class TokenSet:
    """The valid tokens, as bytes, checked in constant time."""

    def __init__(self, tokens: Iterable[str]) -> None:
        self._tokens = tuple(t.encode() for t in tokens)

    def __bool__(self) -> bool:
        return bool(self._tokens)

    def valid(self, token: str | None) -> bool:
        if token is None:
            return False
        candidate = token.encode("utf-8", "surrogateescape")
        # Every configured token is compared, match or not, so timing does not tell which one matched.
        matched = False
        for known in self._tokens:
            matched |= hmac.compare_digest(candidate, known)
        return matched


def token_fingerprint(token: str) -> str:
    """A name for a token that is safe to log and to key limits by."""
    return "token:" + hashlib.sha256(token.encode("utf-8", "surrogateescape")).hexdigest()[:12]


def client_identity(context: grpc.aio.ServicerContext) -> str:
    """Who is calling: the token's fingerprint, else the mTLS certificate's subject, else the peer host."""
    token = bearer_token(context.invocation_metadata())
    if token:
        return token_fingerprint(token)
    subject = context.auth_context().get("x509_subject")
    if subject:
        return "cert:" + subject[0].decode("utf-8", "replace")
    peer = context.peer() or "unknown"
    # "ipv4:10.0.0.5:51234" -> "ipv4:10.0.0.5": every connection from one host is one client.
    host = peer.rsplit(":", 1)[0] if peer.startswith(("ipv4:", "ipv6:")) else peer
    return "peer:" + host


def _unauthenticated(reason: str, message: str) -> grpc.Status:
    return to_status(RequestError(grpc.StatusCode.UNAUTHENTICATED, reason, message))


def _refusing_handler(handler: grpc.RpcMethodHandler, status: grpc.Status) -> grpc.RpcMethodHandler:
    """A handler of the same shape as `handler` that only answers `status`."""

    async def unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
        await context.abort_with_status(status)

    async def streaming(request: Any, context: grpc.aio.ServicerContext) -> Any:
        await context.abort_with_status(status)
        yield  # pragma: no cover - makes this an async generator, as stream handlers must be

    deserialize, serialize = handler.request_deserializer, handler.response_serializer
    if handler.unary_unary:
        return grpc.unary_unary_rpc_method_handler(unary, deserialize, serialize)
    if handler.unary_stream:
        return grpc.unary_stream_rpc_method_handler(streaming, deserialize, serialize)
    if handler.stream_unary:
        return grpc.stream_unary_rpc_method_handler(unary, deserialize, serialize)
    return grpc.stream_stream_rpc_method_handler(streaming, deserialize, serialize)


class TokenAuthInterceptor(grpc.aio.ServerInterceptor):
    """Refuses every call without a valid bearer token (UNAUTHENTICATED), except `open_prefixes`."""

    def __init__(self, tokens: TokenSet, open_prefixes: tuple[str, ...] = OPEN_PREFIXES) -> None:
        self._tokens = tokens
        self._open = open_prefixes
        self._missing = _unauthenticated(
            "MISSING_TOKEN",
            "this server needs a bearer token: send metadata `authorization: Bearer <token>` "
            "(scribe CLI: --token or SCRIBE_TOKEN; grpcurl: -H 'authorization: Bearer <token>')",
        )
        self._wrong = _unauthenticated(
            "INVALID_TOKEN", "the bearer token is not one this server accepts: check AUTH_TOKENS on the server"
        )

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        method = handler_call_details.method or ""
        if method.startswith(self._open):
            return await continuation(handler_call_details)
        token = bearer_token(handler_call_details.invocation_metadata)
        handler = await continuation(handler_call_details)
        if handler is None or self._tokens.valid(token):
            return handler  # an unknown method stays UNIMPLEMENTED, as without the interceptor
        return _refusing_handler(handler, self._missing if token is None else self._wrong)
