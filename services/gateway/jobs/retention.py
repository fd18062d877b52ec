"""Retention: finished jobs older than JOB_RETENTION_H go, with their pieces, results and audio.

Every gateway sweeps (deleting is idempotent, so two sweeping at once only share the work). Files in the
spool that no job names any more (a gateway killed between storing a file and recording its job) go too,
once they are an hour old.
"""

from __future__ import annotations

import asyncio
import time

import structlog

from services.common.config import Settings
from services.gateway.jobs.fairness import JobEvents
from services.gateway.jobs.spool import JobSpool
from services.gateway.jobs.store import JobStore

log = structlog.get_logger()
BATCH = 500
#: How often files no job names are looked for.
ORPHANS_EVERY_S = 3600.0


class Retention:
    def __init__(self, store: JobStore, spool: JobSpool, settings: Settings, events: JobEvents) -> None:
        self._store = store
        self._spool = spool
        self._events = events
        self._keep_s = settings.job_retention_h * 3600
        self.removed = 0

    def interval(self) -> float:
        """A quarter of the retention time, between half a second and a minute."""
        return max(0.5, min(60.0, self._keep_s / 4)) if self._keep_s else 60.0

    async def run(self) -> None:
        orphans_at = time.monotonic() + 60.0
        while True:
            try:
                if self._keep_s:
                    await self.sweep()
                if time.monotonic() >= orphans_at:
                    orphans_at = time.monotonic() + ORPHANS_EVERY_S
                    await self.sweep_orphans()
            except Exception as exc:  # the store is down: try again at the next round
                log.warning("job_retention_failed", error=str(exc))
            await asyncio.sleep(self.interval())

    async def sweep(self, now: float | None = None) -> int:
        """Remove the finished jobs past retention; returns how many."""
        before = (time.time() if now is None else now) - self._keep_s
        removed = 0
        while True:
            expired = await self._store.run(self._store.expired, before, BATCH)
            if not expired:
                break
            await self._store.run(self._store.purge, [job.id for job in expired])
            for job in expired:
                self._spool.remove(job.audio_path)
                self._events.changed(job.id)
            removed += len(expired)
        if removed:
            self.removed += removed
            log.info("jobs_expired", jobs=removed, retention_h=round(self._keep_s / 3600, 4))
        return removed

    async def sweep_orphans(self) -> int:
        known = await self._store.run(self._store.audio_paths)
        orphans = await asyncio.to_thread(self._spool.orphans, known)
        for path in orphans:
            self._spool.remove(path)
        if orphans:
            log.info("job_spool_orphans_removed", files=len(orphans))
        return len(orphans)
