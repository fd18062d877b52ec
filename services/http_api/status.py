"""The status page's data: the fleet from ListWorkers, and a few minutes of throughput history.

Only states, counts, device names and memory figures: no audio, no text, no worker addresses, no secrets,
which is why the page needs no token (like the gateway's /metrics).
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from dataclasses import dataclass, field

import grpc
import structlog

from services.gen import fleet_pb2, worker_pb2
from services.http_api.gateway import Gateway

log = structlog.get_logger()

#: Seconds between two samples, and how many samples the chart keeps (10 minutes).
SAMPLE_S = 2.0
HISTORY = 300


def _state(enum: object, value: int, prefix: str) -> str:
    return enum.Name(value).removeprefix(prefix)  # type: ignore[attr-defined]


def worker_row(w: fleet_pb2.Worker) -> dict[str, object]:
    """One worker as the page shows it; a stale health report (ListWorkers' health_stale) gives only the
    device, as its load and memory belong to a process that no longer answers."""
    row: dict[str, object] = {
        "name": w.name,
        "supervisor": _state(fleet_pb2.SupervisorState, w.supervisor_state, "SUPERVISOR_STATE_"),
        "routing": _state(fleet_pb2.RoutingState, w.routing_state, "ROUTING_STATE_"),
        "reason": w.routing_reason,
        "in_flight": w.in_flight,
        "streams": w.streams,
        "health_stale": w.health_stale,
        "model_name": w.model,
    }
    if w.HasField("health"):
        h = w.health
        cuda = h.device_kind == worker_pb2.DEVICE_KIND_CUDA
        row["device"] = f"cuda:{h.device_index} {h.gpu_name}".strip() if cuda else "cpu"
        if not w.health_stale:
            row.update(
                status=_state(worker_pb2.WorkerStatus, h.status, "WORKER_STATUS_"),
                model=h.model,
                model_state=_state(worker_pb2.ModelState, h.model_state, "MODEL_STATE_"),
                rss_bytes=h.process_rss_bytes,
                vram_used_bytes=h.vram_process_bytes if h.HasField("vram_process_bytes") else None,
                vram_total_bytes=h.vram_total_bytes if h.HasField("vram_total_bytes") else None,
                active=h.active_requests,
                queued=h.queued_requests,
                slots=h.max_concurrent_requests,
                done=h.requests_completed,
                uptime_s=round(h.uptime.ToNanoseconds() / 1e9),
            )
            if h.HasField("batch"):
                batches = sum(h.batch.batches_by_size)
                row.update(
                    batch_max=h.batch.max_batch_size,
                    batch_mean=round(h.batch.windows_decoded / batches, 2) if batches else None,
                    windows_queued=h.batch.windows_queued,
                )
            if h.speaker_model:
                # Speaker labels' work: seconds of speech turned into voice embeddings since the worker started.
                row["speaker_seconds"] = round(h.speakers.audio_seconds_embedded, 1)
    return row


def jobs_row(j: fleet_pb2.JobStats) -> dict[str, object]:
    """Batch jobs as the page shows them: counts by state, queue age, throughput, spool use."""
    return {
        "queued": j.queued,
        "running": j.running,
        "succeeded": j.succeeded,
        "failed": j.failed,
        "cancelled": j.cancelled,
        "oldest_queued_s": round(j.oldest_queued_age.ToNanoseconds() / 1e9, 1),
        "finished_per_second": round(j.finished_per_second, 3),
        "spool_bytes": j.spool_bytes,
        "spool_limit_bytes": j.spool_limit_bytes,
    }


@dataclass
class Sample:
    t: float
    requests: int
    audio_s: float


@dataclass
class StatusBoard:
    """Polls ListWorkers every SAMPLE_S and keeps the last answer and a rate history."""

    gateway: Gateway
    token: str | None
    latest: fleet_pb2.ListWorkersResponse | None = None
    error: str | None = None
    updated: float = 0.0
    history: deque[dict[str, float]] = field(default_factory=lambda: deque(maxlen=HISTORY))
    _last: Sample | None = None

    async def poll_once(self) -> None:
        try:
            listed = await self.gateway.list_workers(self.token)
        except grpc.aio.AioRpcError as err:
            self.latest, self.error = None, f"gateway did not answer: {err.code().name}"
            self._last = None
            return
        now = time.time()
        stats = listed.stats
        sample = Sample(now, stats.requests_ok + stats.requests_failed, stats.audio_seconds)
        if self._last is not None and now > self._last.t:
            dt = now - self._last.t
            self.history.append(
                {
                    "t": round(now, 1),
                    # Audio seconds transcribed per wall-clock second: the fleet's real-time factor.
                    "rtf": round(max(0.0, sample.audio_s - self._last.audio_s) / dt, 3),
                    "requests_per_min": round(max(0, sample.requests - self._last.requests) * 60 / dt, 2),
                }
            )
        self._last = sample
        self.latest, self.error, self.updated = listed, None, now

    async def run(self) -> None:
        while True:
            try:
                await self.poll_once()
            except Exception as exc:  # the page must keep updating whatever one poll met
                log.warning("status_poll_failed", error=str(exc))
            await asyncio.sleep(SAMPLE_S)

    def snapshot(self) -> dict[str, object]:
        body: dict[str, object] = {
            "updated": round(self.updated, 1),
            "error": self.error,
            "history": list(self.history),
        }
        if self.latest is not None:
            s = self.latest.stats
            body.update(
                workers=[worker_row(w) for w in self.latest.workers],
                models=[
                    {
                        "name": m.name,
                        "default": m.is_default,
                        "workers": m.workers,
                        "serving": m.serving_workers,
                        "loaded": m.loaded_workers,
                        "queued": m.queued_requests,
                    }
                    for m in self.latest.models
                ],
                queue={"waiting": s.queued_requests, "size": s.queue_size},
                streams=s.active_streams,
                requests_ok=s.requests_ok,
                requests_failed=s.requests_failed,
                audio_seconds=round(s.audio_seconds, 1),
                realtime_factor=round(s.realtime_factor, 3),
            )
            if s.HasField("jobs"):
                body["jobs"] = jobs_row(s.jobs)
        else:
            body["workers"] = []
            body["models"] = []
        return body
