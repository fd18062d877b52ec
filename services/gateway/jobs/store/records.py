"""Jobs as the API sees them: create (once per request id), get, list by state and label, cancel,
delete, results, the figures for metrics, and what retention removes."""

from __future__ import annotations

import time
from collections.abc import Sequence

from sqlalchemy import delete, exists, func, insert, select, tuple_, update
from sqlalchemy.exc import IntegrityError

from services.gateway.jobs.model import (
    ACTIVE,
    FINISHED,
    QUEUED,
    AttemptRecord,
    JobRecord,
    StoreStats,
)
from services.gateway.jobs.store.database import RECORD_COLUMNS, Database, record
from services.gateway.jobs.store.schema import job_labels, jobs, webhook_attempts
from services.gen import jobs_pb2 as jpb

CANCELLED = jpb.JOB_STATE_CANCELLED
PENDING = jpb.WEBHOOK_STATE_PENDING


def _values(job: JobRecord) -> dict[str, object]:
    return {
        "id": job.id,
        "owner": job.owner,
        "tenant": job.tenant,
        "request_id": job.request_id,
        "state": job.state,
        "spec": job.spec.SerializeToString(),
        "created_at": job.created_at,
        "updated_at": job.updated_at,
        "version": job.version,
        "audio_path": job.audio_path,
        "audio_bytes": job.audio_bytes,
        "audio_s": job.audio_s,
        "webhook_state": job.webhook_state,
    }


class Records:
    db: Database

    def create(self, job: JobRecord) -> tuple[JobRecord, bool]:
        """Store a new job and its labels; (the job, True), or (the job this owner made with the same
        request id, False)."""
        try:
            with self.db.write() as conn:
                if job.request_id:
                    found = self._by_request(conn, job.owner, job.request_id)
                    if found is not None:
                        return found, False
                conn.execute(insert(jobs).values(**_values(job)))
                labels = [{"job_id": job.id, "key": k, "value": v} for k, v in sorted(job.spec.labels.items())]
                if labels:
                    conn.execute(insert(job_labels), labels)
        except IntegrityError:
            # Another gateway stored the same owner's request id between our check and our insert.
            with self.db.read() as conn:
                found = self._by_request(conn, job.owner, job.request_id or "")
            if found is None:
                raise
            return found, False
        return job, True

    @staticmethod
    def _by_request(conn: object, owner: str, request_id: str) -> JobRecord | None:
        row = conn.execute(  # type: ignore[attr-defined]
            select(*RECORD_COLUMNS).where(jobs.c.owner == owner, jobs.c.request_id == request_id)
        ).first()
        return None if row is None else record(row)

    def find_request(self, owner: str, request_id: str) -> JobRecord | None:
        with self.db.read() as conn:
            return self._by_request(conn, owner, request_id)

    def get(self, job_id: str, tenant: str | None = None) -> JobRecord | None:
        """The job, if it exists and `tenant` may see it (None: any tenant)."""
        query = select(*RECORD_COLUMNS).where(jobs.c.id == job_id)
        if tenant is not None:
            query = query.where(jobs.c.tenant == tenant)
        with self.db.read() as conn:
            row = conn.execute(query).first()
        return None if row is None else record(row)

    def attempts(self, job_id: str) -> list[AttemptRecord]:
        query = select(webhook_attempts).where(webhook_attempts.c.job_id == job_id).order_by(webhook_attempts.c.attempt)
        with self.db.read() as conn:
            rows = conn.execute(query).all()
        return [AttemptRecord(r.attempt, r.at, r.http_status, r.error, r.latency_s) for r in rows]

    def page(
        self,
        tenant: str,
        states: Sequence[int] = (),
        labels: dict[str, str] | None = None,
        limit: int = 100,
        after: tuple[float, str] | None = None,
    ) -> list[JobRecord]:
        """Jobs of `tenant`, newest first, from after `after` (created_at, id); at most `limit`."""
        query = select(*RECORD_COLUMNS).where(jobs.c.tenant == tenant)
        if states:
            query = query.where(jobs.c.state.in_(sorted(set(states))))
        for key, value in sorted((labels or {}).items()):
            query = query.where(
                exists().where(job_labels.c.job_id == jobs.c.id, job_labels.c.key == key, job_labels.c.value == value)
            )
        if after is not None:
            # A row-value comparison: both databases seek the (tenant, state, created_at, id) index to it.
            query = query.where(tuple_(jobs.c.created_at, jobs.c.id) < tuple_(*after))
        query = query.order_by(jobs.c.created_at.desc(), jobs.c.id.desc()).limit(limit)
        with self.db.read() as conn:
            return [record(row) for row in conn.execute(query)]

    def count_active(self, owner: str) -> int:
        """Jobs of this owner queued or running (JOB_MAX_QUEUED_PER_TOKEN)."""
        query = select(func.count()).select_from(jobs).where(jobs.c.state.in_(ACTIVE), jobs.c.owner == owner)
        with self.db.read() as conn:
            return int(conn.execute(query).scalar_one())

    def spool_bytes(self) -> int:
        """Bytes of job audio in the spool, every gateway's."""
        query = select(func.coalesce(func.sum(jobs.c.audio_bytes), 0)).where(jobs.c.audio_path.is_not(None))
        with self.db.read() as conn:
            return int(conn.execute(query).scalar_one())

    def cancel(self, job_id: str, tenant: str | None, now: float | None = None) -> JobRecord | None:
        """Mark a queued or running job CANCELLED (its gateway stops it); a finished job stays as it is."""
        now = time.time() if now is None else now
        with self.db.write() as conn:
            query = select(*RECORD_COLUMNS).where(jobs.c.id == job_id)
            if tenant is not None:
                query = query.where(jobs.c.tenant == tenant)
            row = conn.execute(query.with_for_update()).first()
            if row is None:
                return None
            job = record(row)
            if job.finished:
                return job
            conn.execute(update(jobs).where(jobs.c.id == job_id).values(**finish_values(job, CANCELLED, now)))
            row = conn.execute(select(*RECORD_COLUMNS).where(jobs.c.id == job_id)).first()
        return record(row)

    def delete(self, job_id: str, tenant: str | None) -> JobRecord | None:
        """Remove the job and everything of it from the store; returns what it was (its audio is the
        caller's to remove), or None when there is no such job."""
        with self.db.write() as conn:
            query = select(*RECORD_COLUMNS).where(jobs.c.id == job_id)
            if tenant is not None:
                query = query.where(jobs.c.tenant == tenant)
            row = conn.execute(query.with_for_update()).first()
            if row is None:
                return None
            conn.execute(delete(jobs).where(jobs.c.id == job_id))
        return record(row)

    def result(self, job_id: str, tenant: str | None) -> tuple[JobRecord, bytes | None] | None:
        query = select(*RECORD_COLUMNS, jobs.c.result).where(jobs.c.id == job_id)
        if tenant is not None:
            query = query.where(jobs.c.tenant == tenant)
        with self.db.read() as conn:
            row = conn.execute(query).first()
        return None if row is None else (record(row), row._mapping["result"])

    def stats(self, now: float | None = None) -> StoreStats:
        now = time.time() if now is None else now
        with self.db.read() as conn:
            counts = conn.execute(select(jobs.c.state, func.count()).group_by(jobs.c.state)).all()
            oldest = conn.execute(select(func.min(jobs.c.created_at)).where(jobs.c.state == QUEUED)).scalar()
            recent = conn.execute(
                select(func.count()).where(jobs.c.state.in_(FINISHED), jobs.c.finished_at >= now - 60.0)
            ).scalar_one()
        return StoreStats(
            by_state={int(s): int(n) for s, n in counts},
            oldest_queued_at=oldest,
            finished_last_minute=int(recent),
            spool_bytes=self.spool_bytes(),
        )

    def expired(self, before: float, limit: int = 500) -> list[JobRecord]:
        """Finished jobs that ended before `before`, oldest first."""
        query = (
            select(*RECORD_COLUMNS)
            .where(jobs.c.state.in_(FINISHED), jobs.c.finished_at < before)
            .order_by(jobs.c.finished_at)
            .limit(limit)
        )
        with self.db.read() as conn:
            return [record(row) for row in conn.execute(query)]

    def purge(self, job_ids: Sequence[str]) -> int:
        """Delete these jobs (their pieces, labels and webhook attempts go with them)."""
        if not job_ids:
            return 0
        with self.db.write() as conn:
            return int(conn.execute(delete(jobs).where(jobs.c.id.in_(list(job_ids)))).rowcount or 0)

    def audio_paths(self) -> set[str]:
        """Every spooled file a job still refers to (retention removes the others)."""
        with self.db.read() as conn:
            rows = conn.execute(select(jobs.c.audio_path).where(jobs.c.audio_path.is_not(None))).all()
        return {r[0] for r in rows}


def finish_values(job: JobRecord, state: int, now: float) -> dict[str, object]:
    """The columns that end a job: its state, its end time, and its webhook due now."""
    values: dict[str, object] = {
        "state": state,
        "finished_at": now,
        "updated_at": now,
        "lease_until": None,
        "version": jobs.c.version + 1,
    }
    if job.webhook_state == PENDING:
        values["webhook_next_at"] = now
    return values
