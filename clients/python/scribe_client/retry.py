"""How the client retries: gRPC's own retry policy for UNAVAILABLE, RetryInfo for RESOURCE_EXHAUSTED.

UNAVAILABLE (gateway down or restarting, no worker serving) is retried by gRPC itself, from the
service config below: it backs off exponentially, replays the request from its own buffer and
gives up at the call's deadline. Nothing here loops for it.

RESOURCE_EXHAUSTED means two different things. gRPC says it when a message is too large, and
retrying that only sends the same oversized message again. scribe says it when it is busy (too many
streams) and then attaches a `google.rpc.RetryInfo` with the delay to wait. gRPC's retry policy
cannot read RetryInfo (it honours only the `grpc-retry-pushback-ms` trailer, and listing
RESOURCE_EXHAUSTED as retryable would retry the oversized case too), so `retry_delay` reads it
and the clients wait exactly that long before the next attempt, and only then.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable

import grpc

from scribe_client.errors import retry_delay as server_retry_delay

#: Services the retry policy covers (all of scribe's, on the gateway; every JobService call is safe to
#: repeat: a CreateJob carries a request id).
SERVICES = ("transcription.v1.TranscriptionService", "transcription.v1.FleetService", "transcription.v1.JobService")
#: Largest message either way; the server enforces its own MAX_MESSAGE_MB.
MAX_MESSAGE_BYTES = 2**31 - 1
#: gRPC replays a retried call from a buffer, and by default commits (stops retrying) a call once its
#: messages pass 256 KiB, so a Transcribe of a real recording would never be retried. This lets a
#: request up to the server's default message limit (64 MiB) be replayed.
RETRY_BUFFER_BYTES = 64 * 2**20


class Deadline:
    """A call's deadline, shared by its attempts: each retry gets only the time that is left."""

    def __init__(self, timeout: float | None) -> None:
        self._end = None if timeout is None else time.monotonic() + timeout

    def left(self) -> float | None:
        return None if self._end is None else max(0.0, self._end - time.monotonic())


def service_config(max_attempts: int = 5, initial_backoff_s: float = 0.5, max_backoff_s: float = 5.0) -> str:
    """The gRPC service config: retry UNAVAILABLE with exponential backoff (gRPC caps attempts at 5)."""
    policy = {
        "maxAttempts": max_attempts,
        "initialBackoff": f"{initial_backoff_s}s",
        "maxBackoff": f"{max_backoff_s}s",
        "backoffMultiplier": 2,
        "retryableStatusCodes": ["UNAVAILABLE"],
    }
    return json.dumps({"methodConfig": [{"name": [{"service": s} for s in SERVICES], "retryPolicy": policy}]})


def channel_options(config: str | None = None) -> list[tuple[str, str | int]]:
    return [
        ("grpc.enable_retries", 1),
        ("grpc.service_config", config or service_config()),
        ("grpc.per_rpc_retry_buffer_size", RETRY_BUFFER_BYTES),
        ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
        ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ]


def call_metadata(token: str | None, request_id: str | None = None) -> tuple[tuple[str, str], ...]:
    """Metadata of every call: the bearer token and, when given, the request id the server logs."""
    metadata: list[tuple[str, str]] = []
    if token:
        metadata.append(("authorization", f"Bearer {token}"))
    if request_id:
        metadata.append(("x-request-id", request_id))
    return tuple(metadata)


def retry_delay(
    code: grpc.StatusCode | None, trailing_metadata: Iterable[tuple[str, str | bytes]] | None
) -> float | None:
    """Seconds the server asked us to wait before retrying a RESOURCE_EXHAUSTED call, or None."""
    if code != grpc.StatusCode.RESOURCE_EXHAUSTED:
        return None
    delay = server_retry_delay(trailing_metadata)
    return None if delay is None else max(0.0, delay)


def next_delay(error: grpc.RpcError, attempt: int, max_retries: int, time_left: float | None) -> float | None:
    """Delay before retrying `error` as attempt `attempt + 1`, or None to give up and raise it."""
    delay = retry_delay(error.code(), error.trailing_metadata())
    if delay is None or attempt >= max_retries:
        return None
    if time_left is not None and delay >= time_left:
        return None  # the deadline would pass while waiting: fail now with the server's answer
    return delay
