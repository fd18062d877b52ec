"""Jobs as the store keeps them, and as the API shows them (pure)."""

from __future__ import annotations

import base64
import binascii
import json
import secrets
import time
from dataclasses import dataclass, field

import grpc
from google.protobuf import any_pb2, timestamp_pb2
from google.rpc import error_details_pb2, status_pb2

from services.common.convert import duration
from services.common.errors import DOMAIN, RequestError
from services.gen import jobs_pb2 as jpb

QUEUED, RUNNING = jpb.JOB_STATE_QUEUED, jpb.JOB_STATE_RUNNING
SUCCEEDED, FAILED, CANCELLED = jpb.JOB_STATE_SUCCEEDED, jpb.JOB_STATE_FAILED, jpb.JOB_STATE_CANCELLED
ACTIVE = (QUEUED, RUNNING)
FINISHED = (SUCCEEDED, FAILED, CANCELLED)
STATE_NAMES: dict[int, str] = {s: jpb.JobState.Name(s).removeprefix("JOB_STATE_").lower() for s in (*ACTIVE, *FINISHED)}


def new_job_id(now: float | None = None) -> str:
    """job_ + milliseconds since the epoch (hex, so ids sort by creation) + 48 random bits."""
    millis = int((time.time() if now is None else now) * 1000)
    return f"job_{millis:011x}{secrets.token_hex(6)}"


@dataclass
class JobRecord:
    """One row of the jobs table."""

    id: str
    owner: str  # who made it (client identity): the unit of fairness and of JOB_MAX_QUEUED_PER_TOKEN
    tenant: str  # who may see it: the owner when tokens or certificates identify clients, else ""
    state: int
    spec: jpb.JobSpec
    created_at: float
    updated_at: float
    version: int = 1
    request_id: str | None = None
    started_at: float | None = None
    finished_at: float | None = None
    audio_path: str | None = None  # the spooled file (uploads and fetched URLs)
    audio_bytes: int = 0
    audio_s: float = 0.0
    processed_s: float = 0.0
    pieces_done: int = 0
    pieces_total: int = 0
    piece_s: float | None = None  # fixed at the first run, so a resumed run cuts the same pieces
    whole_file: bool = False  # one piece: the file as uploaded, decoded by the worker itself
    gateway_id: str | None = None
    lease_until: float | None = None
    runs: int = 0
    error: bytes | None = None  # google.rpc.Status
    webhook_state: int = jpb.WEBHOOK_STATE_UNSPECIFIED
    webhook_next_at: float | None = None
    webhook_attempts: int = 0

    @property
    def finished(self) -> bool:
        return self.state in FINISHED


@dataclass(frozen=True)
class PieceRecord:
    """A finished piece: its place in the recording and its transcript in piece time."""

    index: int
    offset_s: float
    seconds: float
    result: bytes  # TranscribeResponse
    gateway_id: str = ""


@dataclass(frozen=True)
class AttemptRecord:
    """One webhook delivery attempt."""

    attempt: int
    at: float
    http_status: int
    error: str
    latency_s: float


@dataclass
class StoreStats:
    """Jobs by state, the oldest queued job's creation time, and what finished lately."""

    by_state: dict[int, int] = field(default_factory=dict)
    oldest_queued_at: float | None = None
    finished_last_minute: int = 0
    spool_bytes: int = 0


def timestamp(seconds: float | None) -> timestamp_pb2.Timestamp | None:
    if seconds is None:
        return None
    ts = timestamp_pb2.Timestamp()
    ts.FromNanoseconds(round(seconds * 1e9))
    return ts


def job_pb(job: JobRecord, attempts: list[AttemptRecord] | None = None) -> jpb.Job:
    """The API's view of a job."""
    progress = 100.0 if job.state == SUCCEEDED else 0.0
    if job.state != SUCCEEDED and job.audio_s > 0:
        progress = round(min(99.99, 100.0 * job.processed_s / job.audio_s), 2)
    out = jpb.Job(
        id=job.id,
        state=job.state,  # type: ignore[arg-type]
        spec=job.spec,
        create_time=timestamp(job.created_at),
        start_time=timestamp(job.started_at),
        end_time=timestamp(job.finished_at),
        audio_duration=duration(job.audio_s),
        processed_audio=duration(job.audio_s if job.state == SUCCEEDED else job.processed_s),
        progress_percent=progress,
        pieces_done=job.pieces_done,
        pieces_total=job.pieces_total,
        audio_bytes=job.audio_bytes,
        runs=job.runs,
        gateway_id=job.gateway_id or "",
        webhook_state=job.webhook_state,  # type: ignore[arg-type]
        version=job.version,
    )
    if job.error:
        out.error.ParseFromString(job.error)
    for a in attempts or ():
        out.webhook_attempts.add(
            attempt=a.attempt,
            time=timestamp(a.at),
            http_status=a.http_status,
            error=a.error,
            latency=duration(a.latency_s),
        )
    return out


def error_status(code: grpc.StatusCode, reason: str, message: str) -> bytes:
    """A google.rpc.Status with an ErrorInfo, as stored for a failed job."""
    info = any_pb2.Any()
    info.Pack(error_details_pb2.ErrorInfo(reason=reason, domain=DOMAIN))
    return status_pb2.Status(code=code.value[0], message=message, details=[info]).SerializeToString()


def status_of(err: RequestError) -> bytes:
    return error_status(err.code, err.reason, err.message)


# --- page tokens ------------------------------------------------------------------------------------


def page_token(created_at: float, job_id: str) -> str:
    """Where the next page starts: after this job in newest-first order (opaque to clients)."""
    return base64.urlsafe_b64encode(json.dumps([created_at, job_id]).encode()).decode().rstrip("=")


def parse_page_token(token: str) -> tuple[float, str] | None:
    """The position a page token names; None for the first page. A token that is not ours is INVALID_ARGUMENT."""
    if not token:
        return None
    try:
        created_at, job_id = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
        if not isinstance(job_id, str) or not isinstance(created_at, int | float):
            raise ValueError(token)
        return float(created_at), job_id
    except (ValueError, TypeError, binascii.Error, UnicodeDecodeError):
        raise RequestError(
            grpc.StatusCode.INVALID_ARGUMENT,
            "BAD_PAGE_TOKEN",
            "page_token is not one ListJobs returned: pass next_page_token unchanged, or empty for the first page",
        ) from None
