"""Webhook deliveries as the store records them: which are due, who sends each, every attempt."""

from __future__ import annotations

import time

from sqlalchemy import insert, select, update

from services.gateway.jobs.model import FINISHED, AttemptRecord, JobRecord
from services.gateway.jobs.store.database import RECORD_COLUMNS, Database, record
from services.gateway.jobs.store.schema import jobs, webhook_attempts
from services.gen import jobs_pb2 as jpb

PENDING = jpb.WEBHOOK_STATE_PENDING


class Deliveries:
    db: Database

    def due_webhooks(self, hold_s: float, limit: int = 16, now: float | None = None) -> list[JobRecord]:
        """Finished jobs whose webhook is due, each taken for `hold_s` (pushed back that far, so no other
        gateway sends it meanwhile; the attempt's record sets the real next time)."""
        now = time.time() if now is None else now
        with self.db.write() as conn:
            query = (
                select(*RECORD_COLUMNS)
                .where(jobs.c.webhook_state == PENDING, jobs.c.webhook_next_at <= now, jobs.c.state.in_(FINISHED))
                .order_by(jobs.c.webhook_next_at)
                .limit(limit)
                .with_for_update(skip_locked=True)
            )
            due = [record(row) for row in conn.execute(query)]
            if due:
                conn.execute(
                    update(jobs).where(jobs.c.id.in_([j.id for j in due])).values(webhook_next_at=now + hold_s)
                )
        return due

    def record_attempt(self, job_id: str, attempt: AttemptRecord, state: int, next_at: float | None) -> None:
        """Keep an attempt, and what follows it: DELIVERED, FAILED, or PENDING again at `next_at`."""
        with self.db.write() as conn:
            conn.execute(
                insert(webhook_attempts).values(
                    job_id=job_id,
                    attempt=attempt.attempt,
                    at=attempt.at,
                    http_status=attempt.http_status,
                    error=attempt.error[:1000],
                    latency_s=attempt.latency_s,
                )
            )
            conn.execute(
                update(jobs)
                .where(jobs.c.id == job_id)
                .values(
                    webhook_state=state,
                    webhook_next_at=next_at,
                    webhook_attempts=attempt.attempt,
                    updated_at=time.time(),
                    version=jobs.c.version + 1,
                )
            )
