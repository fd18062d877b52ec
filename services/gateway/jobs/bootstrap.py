"""The job service of one gateway process: its store, spool, runner, webhooks, retention and metrics,
built from the settings, started with the gateway and stopped with it."""

from __future__ import annotations

import asyncio
import hashlib
import socket
from collections.abc import Callable

import grpc
import structlog

from services.common.config import Settings
from services.common.rpclog import RequestLine
from services.gateway.jobs.execution import JobContext
from services.gateway.jobs.fairness import FairSlots, JobEvents
from services.gateway.jobs.metrics import JobMetrics
from services.gateway.jobs.retention import Retention
from services.gateway.jobs.runner import JobRunner
from services.gateway.jobs.servicer import JobServicer
from services.gateway.jobs.spool import JobSpool
from services.gateway.jobs.store import JobStore
from services.gateway.jobs.webhooks import WebhookSender
from services.gateway.routing.dispatch import Dispatcher
from services.gateway.routing.models import FleetModels
from services.gateway.routing.registry import Registry
from services.gen import jobs_pb2, jobs_pb2_grpc

log = structlog.get_logger()
SERVICE = jobs_pb2.DESCRIPTOR.services_by_name["JobService"].full_name


def gateway_id(settings: Settings) -> str:
    """JOB_GATEWAY_ID, else this host's name and RUN_DIR: the same for a gateway restarted in place."""
    if settings.job_gateway_id:
        return settings.job_gateway_id
    folder = hashlib.sha256(str(settings.run_dir).encode()).hexdigest()[:8]
    return f"{socket.gethostname()}:{folder}"


class Jobs:
    def __init__(
        self,
        settings: Settings,
        registry: Registry,
        dispatcher: Dispatcher,
        models: FleetModels,
        observe: Callable[[RequestLine, float], None] | None = None,
    ) -> None:
        self.gateway_id = gateway_id(settings)
        self.store = JobStore(settings.jobs_database)
        limit = int(settings.job_spool_max_gb * 1e9)

        async def stored_bytes() -> int:
            return await self.store.run(self.store.spool_bytes)

        self.spool = JobSpool(settings.jobs_spool, self.gateway_id, limit, stored_bytes)
        self.events = JobEvents()
        self.runner: JobRunner
        slots = FairSlots(lambda: self.runner.capacity())
        ctx = JobContext(
            self.store, dispatcher, models, settings, self.gateway_id, self.spool, slots, self.events.changed
        )
        self.runner = JobRunner(ctx, registry)
        self.webhooks = WebhookSender(self.store, settings, self.events)
        self.retention = Retention(self.store, self.spool, settings, self.events)
        self.metrics = JobMetrics(self.store, ctx.counters, self.webhooks, limit)
        self.servicer = JobServicer(self.store, self.runner, self.spool, self.events, settings, models, observe)
        self._tasks: list[asyncio.Task[None]] = []

    def add_to(self, server: grpc.aio.Server) -> None:
        jobs_pb2_grpc.add_JobServiceServicer_to_server(self.servicer, server)

    def start(self) -> None:
        self.spool.remove_leftovers()
        self._tasks.append(asyncio.create_task(self._start(), name="job-store"))

    async def _start(self) -> None:
        """Create the tables (retried while the database is down: the gateway serves interactive calls
        meanwhile, and JobService answers UNAVAILABLE), then start the loops."""
        delay = 1.0
        while True:
            try:
                await self.store.run(self.store.create_schema)
                break
            except Exception as exc:
                log.error("job_store_unavailable", error=str(exc.__cause__ or exc), retry_s=delay)
                await asyncio.sleep(delay)
                delay = min(30.0, delay * 2)
        for name, coro in (
            ("job-runner", self.runner.run()),
            ("job-leases", self.runner.renew()),
            ("job-webhooks", self.webhooks.run()),
            ("job-retention", self.retention.run()),
            ("job-metrics", self.metrics.run()),
        ):
            self._tasks.append(asyncio.create_task(coro, name=name))
        log.info(
            "jobs_ready",
            gateway_id=self.gateway_id,
            store=self.store.backend,
            spool=str(self.spool.folder),
            webhooks=self.webhooks.enabled,
        )

    async def stop(self) -> None:
        """Stop claiming, give running jobs back to the queue, stop the loops."""
        await self.runner.stop()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self.store.close()
