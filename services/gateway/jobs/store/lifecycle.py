"""A job's run as the store records it: claimed fairly (never by two gateways), leased while it runs,
each finished piece stored, and ended SUCCEEDED or FAILED by the gateway that holds it.

Every write a run makes is conditional on the job still being RUNNING under this gateway's id: a
gateway that lost its lease (it was stopped long enough for another to take the job over), or whose
job was cancelled or deleted, finds its writes refused and stops, so no job's result is written twice.
"""

from __future__ import annotations

import time
from collections.abc import Iterable

from sqlalchemy import ColumnElement, Connection, and_, func, insert, or_, select, update

from services.gateway.jobs.model import FAILED, QUEUED, RUNNING, SUCCEEDED, JobRecord, PieceRecord
from services.gateway.jobs.store.database import RECORD_COLUMNS, Database, record
from services.gateway.jobs.store.records import finish_values
from services.gateway.jobs.store.schema import job_pieces, jobs


def _held(job_id: str, gateway_id: str) -> ColumnElement[bool]:
    return and_(jobs.c.id == job_id, jobs.c.state == RUNNING, jobs.c.gateway_id == gateway_id)


class Lifecycle:
    db: Database

    def claim(
        self, gateway_id: str, lease_s: float, held: Iterable[str] = (), now: float | None = None
    ) -> JobRecord | None:
        """Take one job to run, or None when there is nothing to take.

        First a job this gateway id ran before it was restarted (not in `held`, the jobs it runs now), or
        one whose gateway's lease ran out; then a queued job of the owner with the fewest jobs running
        (ties: whose oldest job waited longest), so one client's ten thousand jobs do not hold back
        another's ten."""
        now = time.time() if now is None else now
        with self.db.write() as conn:
            orphan = (
                select(jobs.c.id)
                .where(
                    jobs.c.state == RUNNING,
                    or_(jobs.c.gateway_id == gateway_id, jobs.c.lease_until < now),
                    jobs.c.id.not_in(list(held)),
                )
                .order_by(jobs.c.created_at)
                .limit(1)
                .with_for_update(skip_locked=True)
            )
            found = conn.execute(orphan).scalar()
            if found is not None:
                return self._take(conn, found, RUNNING, gateway_id, lease_s, now)
            for owner in self._fair_owners(conn):
                pick = (
                    select(jobs.c.id)
                    .where(jobs.c.state == QUEUED, jobs.c.owner == owner)
                    .order_by(jobs.c.created_at, jobs.c.id)
                    .limit(1)
                    .with_for_update(skip_locked=True)
                )
                found = conn.execute(pick).scalar()
                if found is not None:
                    return self._take(conn, found, QUEUED, gateway_id, lease_s, now)
        return None

    @staticmethod
    def _fair_owners(conn: Connection) -> list[str]:
        """Owners with queued jobs, fewest running first, then oldest waiting first."""
        running: dict[str, int] = dict(
            conn.execute(select(jobs.c.owner, func.count()).where(jobs.c.state == RUNNING).group_by(jobs.c.owner)).all()
        )
        waiting = conn.execute(
            select(jobs.c.owner, func.min(jobs.c.created_at)).where(jobs.c.state == QUEUED).group_by(jobs.c.owner)
        ).all()
        return [owner for owner, oldest in sorted(waiting, key=lambda w: (running.get(w[0], 0), w[1]))]

    @staticmethod
    def _take(conn: Connection, job_id: str, was: int, gateway_id: str, lease_s: float, now: float) -> JobRecord | None:
        taken = conn.execute(
            update(jobs)
            .where(jobs.c.id == job_id, jobs.c.state == was)
            .values(
                state=RUNNING,
                gateway_id=gateway_id,
                lease_until=now + lease_s,
                runs=jobs.c.runs + 1,
                started_at=func.coalesce(jobs.c.started_at, now),
                updated_at=now,
                version=jobs.c.version + 1,
            )
        )
        if taken.rowcount != 1:
            return None  # SQLite has no row locks: the state check is what keeps a claim single
        return record(conn.execute(select(*RECORD_COLUMNS).where(jobs.c.id == job_id)).one())

    def renew(self, gateway_id: str, job_ids: Iterable[str], lease_s: float, now: float | None = None) -> set[str]:
        """Extend the leases of the jobs this gateway runs; returns those it still holds (a job cancelled,
        deleted or taken over is missing: its run must stop)."""
        ids = list(job_ids)
        if not ids:
            return set()
        now = time.time() if now is None else now
        held = and_(jobs.c.id.in_(ids), jobs.c.state == RUNNING, jobs.c.gateway_id == gateway_id)
        with self.db.write() as conn:
            conn.execute(update(jobs).where(held).values(lease_until=now + lease_s))
            return set(conn.execute(select(jobs.c.id).where(held)).scalars())

    def release(
        self, gateway_id: str, job_ids: Iterable[str], unstarted: Iterable[str] = (), now: float | None = None
    ) -> int:
        """Give running jobs back to the queue (a gateway stopping cleanly): another gateway resumes them
        at once from their last finished piece. `unstarted` jobs never reached a worker: their claim is
        not counted as a run."""
        ids, fresh = list(job_ids), set(unstarted)
        if not ids:
            return 0
        now = time.time() if now is None else now
        released = 0
        with self.db.write() as conn:
            for group, runs in (
                ([i for i in ids if i not in fresh], jobs.c.runs),
                ([i for i in ids if i in fresh], jobs.c.runs - 1),
            ):
                if group:
                    result = conn.execute(
                        update(jobs)
                        .where(jobs.c.id.in_(group), jobs.c.state == RUNNING, jobs.c.gateway_id == gateway_id)
                        .values(state=QUEUED, lease_until=None, runs=runs, updated_at=now, version=jobs.c.version + 1)
                    )
                    released += int(result.rowcount or 0)
        return released

    def update_run(self, job_id: str, gateway_id: str, **values: object) -> bool:
        """Set columns of a job this gateway holds (its plan, its fetched audio); False when it no longer does."""
        values.update(updated_at=time.time(), version=jobs.c.version + 1)
        with self.db.write() as conn:
            return conn.execute(update(jobs).where(_held(job_id, gateway_id)).values(**values)).rowcount == 1

    def pieces(self, job_id: str) -> list[PieceRecord]:
        query = select(job_pieces).where(job_pieces.c.job_id == job_id).order_by(job_pieces.c.idx)
        with self.db.read() as conn:
            return [PieceRecord(r.idx, r.offset_s, r.seconds, r.result, r.gateway_id) for r in conn.execute(query)]

    def piece_done(
        self, job_id: str, gateway_id: str, piece: PieceRecord, processed_s: float, pieces_done: int
    ) -> bool:
        """Store a finished piece and the job's progress in one transaction; False when the job is no
        longer this gateway's (the piece is then not stored)."""
        with self.db.write() as conn:
            if not self._progress(conn, job_id, gateway_id, processed_s=processed_s, pieces_done=pieces_done):
                return False
            self._insert_piece(conn, job_id, gateway_id, piece)
        return True

    def finish(
        self,
        job_id: str,
        gateway_id: str,
        result: bytes,
        audio_s: float,
        pieces_total: int,
        last: PieceRecord | None = None,
    ) -> bool:
        """SUCCEEDED with its merged result (and its last piece, stored in the same transaction)."""
        now = time.time()
        with self.db.write() as conn:
            row = conn.execute(select(*RECORD_COLUMNS).where(_held(job_id, gateway_id)).with_for_update()).first()
            if row is None:
                return False
            values = finish_values(record(row), SUCCEEDED, now)
            values.update(
                result=result, audio_s=audio_s, processed_s=audio_s, pieces_total=pieces_total, pieces_done=pieces_total
            )
            conn.execute(update(jobs).where(jobs.c.id == job_id).values(**values))
            if last is not None:
                self._insert_piece(conn, job_id, gateway_id, last)
        return True

    def fail(self, job_id: str, gateway_id: str, error: bytes) -> bool:
        """FAILED with a google.rpc.Status."""
        now = time.time()
        with self.db.write() as conn:
            row = conn.execute(select(*RECORD_COLUMNS).where(_held(job_id, gateway_id)).with_for_update()).first()
            if row is None:
                return False
            values = finish_values(record(row), FAILED, now)
            values["error"] = error
            conn.execute(update(jobs).where(jobs.c.id == job_id).values(**values))
        return True

    @staticmethod
    def _progress(conn: Connection, job_id: str, gateway_id: str, **values: object) -> bool:
        values.update(updated_at=time.time(), version=jobs.c.version + 1)
        return conn.execute(update(jobs).where(_held(job_id, gateway_id)).values(**values)).rowcount == 1

    @staticmethod
    def _insert_piece(conn: Connection, job_id: str, gateway_id: str, piece: PieceRecord) -> None:
        stored = conn.execute(
            select(job_pieces.c.idx).where(job_pieces.c.job_id == job_id, job_pieces.c.idx == piece.index)
        ).first()
        if stored is None:
            conn.execute(
                insert(job_pieces).values(
                    job_id=job_id,
                    idx=piece.index,
                    offset_s=piece.offset_s,
                    seconds=piece.seconds,
                    result=piece.result,
                    gateway_id=gateway_id,
                )
            )
