"""A gateway's job runner: claims queued jobs while its workers have room, leases them, runs them.

Claims go through the store (fair between owners, never one job to two gateways). While this gateway
runs a job it renews the job's lease every few seconds; a job that was cancelled, deleted or taken over
in the meantime is missing from the renewal's answer, and its run is stopped at once (its pieces on the
workers are cancelled, which frees their slots). A gateway that stops cleanly gives its jobs back to the
queue; one that is killed leaves them leased, and they are taken back by the next process with its
JOB_GATEWAY_ID at once, or by any other gateway when the lease has run out.
"""

from __future__ import annotations

import asyncio
import contextlib

import structlog

from services.gateway.jobs.execution import JobContext, JobRun
from services.gateway.jobs.model import JobRecord
from services.gateway.routing.registry import Registry

log = structlog.get_logger()

#: Longest time between two lease renewals (shorter when JOB_LEASE_S is short).
RENEW_MAX_S = 2.0


class JobRunner:
    def __init__(self, ctx: JobContext, registry: Registry) -> None:
        self.ctx = ctx
        self._registry = registry
        self.runs: dict[str, asyncio.Task[None]] = {}
        self._jobs: dict[str, JobRun] = {}
        self._wake = asyncio.Event()
        self._stopping = False

    def slots_per_worker(self, capacity: int) -> int:
        """Slots of a worker that job pieces may hold: JOB_WORKER_SLOTS, else half of its own."""
        configured = self.ctx.settings.job_worker_slots
        return min(capacity, configured) if configured else max(1, capacity // 2)

    def capacity(self) -> int:
        """Pieces of batch jobs this gateway may have on the workers at once."""
        return sum(self.slots_per_worker(w.capacity) for w in self._registry.workers.values() if w.serving)

    def max_jobs(self) -> int:
        """Jobs run at once: enough that every slot is fed while the next pieces are being read."""
        return 2 * self.capacity()

    def wake(self) -> None:
        """A job was created or released here, or a run ended: look for work now."""
        self._wake.set()

    def cancel_local(self, job_id: str) -> bool:
        """Stop this gateway's run of a job (cancelled or deleted through this gateway)."""
        task = self.runs.get(job_id)
        if task is None:
            return False
        task.cancel()
        return True

    async def run(self) -> None:
        """Claim and start jobs until stopped."""
        store, settings = self.ctx.store, self.ctx.settings
        while not self._stopping:
            self._wake.clear()
            try:
                while len(self.runs) < self.max_jobs():
                    job = await store.run(store.claim, self.ctx.gateway_id, settings.job_lease_s, set(self.runs))
                    if job is None:
                        break
                    self._start(job)
            except Exception as exc:  # the store is down: keep the gateway serving, try again later
                log.warning("job_claim_failed", error=str(exc))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), settings.job_poll_s)

    def _start(self, job: JobRecord) -> None:
        log.info("job_claimed", job_id=job.id, owner=job.owner, run=job.runs)
        self.ctx.changed(job.id)
        run = JobRun(self.ctx, job)
        task = asyncio.create_task(run.run(), name=f"job-{job.id}")
        self.runs[job.id], self._jobs[job.id] = task, run

        def ended(_: asyncio.Task[None]) -> None:
            if self.runs.get(job.id) is task:
                del self.runs[job.id], self._jobs[job.id]
            self.wake()

        task.add_done_callback(ended)

    async def renew(self) -> None:
        """Keep the leases of running jobs; stop the runs of jobs this gateway no longer holds."""
        store, settings = self.ctx.store, self.ctx.settings
        interval = min(settings.job_lease_s / 3, RENEW_MAX_S)
        while True:
            await asyncio.sleep(interval)
            ids = list(self.runs)
            if not ids:
                continue
            try:
                held = await store.run(store.renew, self.ctx.gateway_id, ids, settings.job_lease_s)
            except Exception as exc:
                log.warning("job_lease_renewal_failed", error=str(exc))
                continue
            for job_id in ids:
                if job_id not in held and self.cancel_local(job_id):
                    log.info("job_run_cancelled", job_id=job_id, reason="cancelled, deleted or taken over")

    async def stop(self) -> None:
        """Stop every run and give the jobs back to the queue, so another gateway resumes them at once."""
        self._stopping = True
        ids = list(self.runs)
        unstarted = [job_id for job_id, run in self._jobs.items() if not run.reached_worker]
        for task in list(self.runs.values()):
            task.cancel()
        await asyncio.gather(*self.runs.values(), return_exceptions=True)
        if ids:
            store = self.ctx.store
            released = await store.run(store.release, self.ctx.gateway_id, ids, unstarted)
            log.info("jobs_released", jobs=released)
