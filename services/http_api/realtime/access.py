"""Who may open a realtime socket: the token (an `Authorization: Bearer` header, or for browsers, which
cannot set headers on a WebSocket, the subprotocol `openai-insecure-api-key.<token>` as OpenAI documents
it), the page's origin (HTTP_ALLOWED_ORIGINS), and how many sessions one client holds at once."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

from services.common.auth import bearer_token, token_fingerprint

KEY_PROTOCOL = "openai-insecure-api-key."
#: The subprotocol OpenAI's browser examples offer beside the key; the server must choose one it was offered.
REALTIME_PROTOCOL = "realtime"


def token_and_protocol(authorization: str, protocols: Iterable[str]) -> tuple[str | None, str | None]:
    """The caller's token, and the subprotocol to accept (None when none was offered)."""
    offered = [p.strip() for p in protocols if p.strip()]
    token = bearer_token([("authorization", authorization)]) if authorization else None
    for protocol in offered:
        if protocol.startswith(KEY_PROTOCOL) and token is None:
            token = protocol[len(KEY_PROTOCOL) :] or None
    plain = [p for p in offered if not p.startswith(KEY_PROTOCOL)]
    # A browser fails the handshake unless the answer names a protocol it offered; never echo the key
    # when anything else was offered.
    chosen = REALTIME_PROTOCOL if REALTIME_PROTOCOL in plain else (plain[0] if plain else None)
    if chosen is None and offered:
        chosen = offered[0]
    return token, chosen


def origin_allowed(origin: str | None, host: str, scheme: str, allowed: tuple[str, ...]) -> bool:
    """No Origin (not a browser), the server's own origin, or one of HTTP_ALLOWED_ORIGINS (`*`: any)."""
    if not origin:
        return True
    origin = origin.rstrip("/").lower()
    own = {f"{s}://{host.lower()}" for s in ((scheme,) if scheme in ("http", "https") else ("http", "https"))}
    return origin in own or "*" in allowed or origin in allowed


def client_key(token: str | None, peer_host: str) -> str:
    """Whom a session counts against: its token, else the host it comes from."""
    return token_fingerprint(token) if token else f"peer:{peer_host}"


class SessionCounter:
    """Open sessions per client, at most `limit` each (MAX_STREAMS_PER_CLIENT, as the gateway's streams)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._open: Counter[str] = Counter()

    def acquire(self, key: str) -> bool:
        if self._open[key] >= self.limit:
            return False
        self._open[key] += 1
        return True

    def release(self, key: str) -> None:
        self._open[key] -= 1
        if self._open[key] <= 0:
            del self._open[key]

    def open_for(self, key: str) -> int:
        return self._open[key]
