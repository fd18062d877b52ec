"""Jobs in Prometheus, `scribe status` (ListWorkers' JobStats) and the status page.

The store's figures (jobs by state, the oldest queued job, jobs finished in the last minute, the spool's
size) cover every gateway sharing the store; they are read every REFRESH_S, never while a scrape or a
ListWorkers waits. Pieces and their audio are this gateway's own counts.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import structlog
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from services.common.convert import duration
from services.gateway.jobs.execution import JobCounters
from services.gateway.jobs.model import STATE_NAMES, StoreStats
from services.gateway.jobs.store import JobStore
from services.gateway.jobs.webhooks import WebhookSender
from services.gen import fleet_pb2
from services.gen import jobs_pb2 as jpb

log = structlog.get_logger()
#: How often the store's figures are read (a count by state reads every row: 0.1 s at 100,000 rows).
REFRESH_S = 5.0


class JobMetrics(Collector):
    def __init__(self, store: JobStore, counters: JobCounters, webhooks: WebhookSender, spool_limit: int) -> None:
        self._store = store
        self._counters = counters
        self._webhooks = webhooks
        self._spool_limit = spool_limit
        self.latest = StoreStats()
        self._read_at = time.time()

    async def run(self) -> None:
        while True:
            try:
                self.latest = await self._store.run(self._store.stats)
                self._read_at = time.time()
            except Exception as exc:
                log.warning("job_stats_failed", error=str(exc))
            await asyncio.sleep(REFRESH_S)

    def queue_age_s(self) -> float:
        oldest = self.latest.oldest_queued_at
        return max(0.0, time.time() - oldest) if oldest is not None else 0.0

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        by_state = GaugeMetricFamily("scribe_jobs", "Jobs in the store by state (every gateway's)", labels=["state"])
        for state, name in STATE_NAMES.items():
            by_state.add_metric([name], self.latest.by_state.get(state, 0))
        yield by_state
        yield GaugeMetricFamily(
            "scribe_jobs_queue_age_seconds", "How long the oldest queued job has waited", value=self.queue_age_s()
        )
        yield GaugeMetricFamily(
            "scribe_jobs_finished_per_second",
            "Jobs that ended (any final state) per second over the last minute, every gateway's",
            value=self.latest.finished_last_minute / 60.0,
        )
        yield GaugeMetricFamily(
            "scribe_jobs_spool_bytes", "Bytes of job audio in the spool", value=self.latest.spool_bytes
        )
        yield GaugeMetricFamily(
            "scribe_jobs_spool_limit_bytes", "JOB_SPOOL_MAX_GB in bytes (0: no limit)", value=self._spool_limit
        )
        yield GaugeMetricFamily(
            "scribe_job_pieces_in_flight", "Job pieces this gateway has on workers", value=self._counters.in_flight
        )
        yield CounterMetricFamily(
            "scribe_job_pieces",
            "Job pieces this gateway sent to workers (a retried piece counts again)",
            value=self._counters.pieces,
        )
        yield CounterMetricFamily(
            "scribe_job_piece_audio_seconds",
            "Seconds of job audio this gateway sent to workers (a retried piece counts again)",
            value=self._counters.piece_seconds,
        )
        yield CounterMetricFamily(
            "scribe_job_runs_finished", "Job runs this gateway ended", value=self._counters.jobs_finished
        )
        yield CounterMetricFamily(
            "scribe_webhooks_delivered", "Webhooks a receiver accepted (2xx)", value=self._webhooks.delivered
        )
        yield CounterMetricFamily(
            "scribe_webhook_failed_attempts",
            "Webhook attempts that failed (retried or given up)",
            value=self._webhooks.failed_attempts,
        )

    def to_pb(self) -> fleet_pb2.JobStats:
        s = self.latest.by_state
        return fleet_pb2.JobStats(
            queued=s.get(jpb.JOB_STATE_QUEUED, 0),
            running=s.get(jpb.JOB_STATE_RUNNING, 0),
            succeeded=s.get(jpb.JOB_STATE_SUCCEEDED, 0),
            failed=s.get(jpb.JOB_STATE_FAILED, 0),
            cancelled=s.get(jpb.JOB_STATE_CANCELLED, 0),
            oldest_queued_age=duration(self.queue_age_s()),
            finished_per_second=self.latest.finished_last_minute / 60.0,
            spool_bytes=self.latest.spool_bytes,
            spool_limit_bytes=self._spool_limit,
            pieces_in_flight=self._counters.in_flight,
        )
