"""Webhooks: one signed POST when a job ends, retried with backoff, every attempt recorded on the job.

The request follows the Standard Webhooks specification (standardwebhooks.com): headers `webhook-id`
(the same on every retry of one message, so a receiver can drop duplicates), `webhook-timestamp` (Unix
seconds) and `webhook-signature` (`v1,` + base64 HMAC-SHA256 of `id.timestamp.body` with the secret
JOB_WEBHOOK_SECRET), signed by the `standardwebhooks` package; a receiver verifies it with
`standardwebhooks.Webhook(secret).verify(body, headers)`. The body is JSON:

    {"type": "job.succeeded" | "job.failed" | "job.cancelled", "timestamp": "2026-...Z",
     "data": {"id", "state", "display_name", "labels", "audio_duration_s", "create_time", "end_time",
              "error": {"code", "message", "reason"} | null, "outputs": {"srt": "...", ...}}}

`outputs` holds the transcript in the spec's output_formats (left out, with "outputs_omitted": true, past
1 MiB). A 2xx answer delivers it; 410 Gone stops; anything else (another status, a timeout, no
connection) is retried after JOB_WEBHOOK_RETRY_S, doubling each time up to an hour, until
JOB_WEBHOOK_RETRY_H after the job ended. Each attempt's time, status and error are stored on the job.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from datetime import UTC, datetime

import grpc
import httpx
import structlog
from google.rpc import status_pb2
from scribe_client.errors import error_reason
from standardwebhooks import Webhook

from services.common.config import Settings
from services.common.errors import RequestError
from services.gateway.jobs import netguard
from services.gateway.jobs.fairness import JobEvents
from services.gateway.jobs.model import STATE_NAMES, SUCCEEDED, AttemptRecord, JobRecord
from services.gateway.jobs.requests import FORMATS
from services.gateway.jobs.store import JobStore
from services.gen import jobs_pb2 as jpb
from services.gen import transcription_pb2 as pb

log = structlog.get_logger()

#: One delivery's time limit; a webhook due is held this long so no other gateway sends it meanwhile.
TIMEOUT_S = 15.0
HOLD_S = 60.0
MAX_DELAY_S = 3600.0
MAX_OUTPUTS_BYTES = 1 << 20
#: Deliveries one gateway makes at once.
PARALLEL = 8


def retry_delay(attempt: int, first_s: float) -> float:
    """Seconds before the attempt after attempt number `attempt` (1, 2, ...): doubling, with jitter."""
    return min(MAX_DELAY_S, first_s * 2 ** (attempt - 1)) * random.uniform(0.9, 1.1)


def _iso(seconds: float | None) -> str | None:
    if seconds is None:
        return None
    return datetime.fromtimestamp(seconds, UTC).isoformat().replace("+00:00", "Z")


def _error(job: JobRecord) -> dict[str, object] | None:
    if not job.error:
        return None
    status = status_pb2.Status.FromString(job.error)
    code = next((c.name for c in grpc.StatusCode if c.value[0] == status.code), str(status.code))
    reason = error_reason([("grpc-status-details-bin", job.error)])
    return {"code": code, "message": status.message, "reason": reason}


def payload(job: JobRecord, result: bytes | None, now: float) -> bytes:
    """The JSON body of a job's webhook."""
    from scribe_client.formats import render

    data: dict[str, object] = {
        "id": job.id,
        "state": STATE_NAMES.get(job.state, str(job.state)),
        "display_name": job.spec.display_name,
        "labels": dict(sorted(job.spec.labels.items())),
        "audio_duration_s": round(job.audio_s, 3),
        "create_time": _iso(job.created_at),
        "end_time": _iso(job.finished_at),
        "error": _error(job),
    }
    if job.state == SUCCEEDED and result is not None and job.spec.output_formats:
        response = pb.TranscribeResponse.FromString(result)
        outputs = {FORMATS[f][0]: render(response, FORMATS[f][0]) for f in job.spec.output_formats if f in FORMATS}
        if sum(len(v) for v in outputs.values()) <= MAX_OUTPUTS_BYTES:
            data["outputs"] = outputs
        else:
            data["outputs_omitted"] = True
    body = {"type": f"job.{data['state']}", "timestamp": _iso(now), "data": data}
    return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()


class WebhookSender:
    """Sends the webhooks that are due, from every gateway's finished jobs (each is taken by one)."""

    def __init__(self, store: JobStore, settings: Settings, events: JobEvents) -> None:
        self._store = store
        self._settings = settings
        self._events = events
        self._signer = Webhook(settings.job_webhook_secret) if settings.job_webhook_secret else None
        self._allowed = netguard.allowed_networks(settings.job_allow_networks)
        self._running: set[asyncio.Task[None]] = set()
        self.delivered = 0
        self.failed_attempts = 0

    @property
    def enabled(self) -> bool:
        return self._signer is not None

    async def run(self) -> None:
        if self._signer is None:
            return  # no secret: no job can have asked for a webhook
        interval = min(1.0, self._settings.job_poll_s)
        async with httpx.AsyncClient(timeout=TIMEOUT_S, headers={"user-agent": "scribe-webhooks/1"}) as client:
            while True:
                try:
                    room = PARALLEL - len(self._running)
                    due = await self._store.run(self._store.due_webhooks, HOLD_S, room) if room > 0 else []
                except Exception as exc:
                    log.warning("webhook_poll_failed", error=str(exc))
                    due = []
                for job in due:
                    task = asyncio.create_task(self.deliver(client, job))
                    self._running.add(task)
                    task.add_done_callback(self._running.discard)
                await asyncio.sleep(interval)

    async def deliver(self, client: httpx.AsyncClient, job: JobRecord) -> None:
        assert self._signer is not None
        attempt = job.webhook_attempts + 1
        found = await self._store.run(self._store.result, job.id, None)
        result = found[1] if found is not None else None
        now = time.time()
        body = payload(job, result, now)
        message_id = f"msg_{job.id}"  # the same on every retry of this job's message
        headers = {
            "content-type": "application/json",
            "webhook-id": message_id,
            "webhook-timestamp": str(int(now)),
            "webhook-signature": self._signer.sign(message_id, datetime.fromtimestamp(int(now), UTC), body),
        }
        status, error, final = 0, "", False
        started = time.monotonic()
        try:
            response = await netguard.send(
                client, "POST", job.spec.webhook.url, self._allowed, "webhook.url", content=body, headers=headers
            )
            status = response.status_code
            if not 200 <= status < 300:
                error = f"HTTP {status}"
                final = status == 410  # Gone: the receiver asks for no more
        except RequestError as err:
            error = err.message
            final = err.code == grpc.StatusCode.PERMISSION_DENIED  # its address is now one we may not call
        except httpx.HTTPError as exc:
            error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        latency = time.monotonic() - started
        record = AttemptRecord(attempt, now, status, error, latency)
        if not error:
            state, next_at = jpb.WEBHOOK_STATE_DELIVERED, None
            self.delivered += 1
        else:
            self.failed_attempts += 1
            next_at = now + retry_delay(attempt, self._settings.job_webhook_retry_s)
            deadline = (job.finished_at or now) + self._settings.job_webhook_retry_h * 3600
            if final or next_at > deadline:
                state, next_at = jpb.WEBHOOK_STATE_FAILED, None
            else:
                state = jpb.WEBHOOK_STATE_PENDING
        log.info(
            "webhook_attempt",
            job_id=job.id,
            attempt=attempt,
            http_status=status,
            error=error or None,
            state=jpb.WebhookState.Name(state),
            latency_ms=round(latency * 1000, 1),
        )
        try:
            await self._store.run(self._store.record_attempt, job.id, record, state, next_at)
        except Exception as exc:  # deleted meanwhile, or the store is down: the attempt is lost, not the gateway
            log.warning("webhook_attempt_not_recorded", job_id=job.id, error=str(exc))
        self._events.changed(job.id)
