"""Two gateways sharing one real PostgreSQL server (Debian's package, started here) and one spool folder,
over the fleet's real workers: a job submitted to one is claimed by the other, no job runs twice while
both poll, and a gateway killed mid-job has its job finished by the other from its last finished piece.

`make test-postgres` runs these (marker `postgres`); `.ci/run` runs it after `make test`.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from services.gen import jobs_pb2 as jpb
from tests.conftest import Fleet, start_gateway
from tests.helpers import clip, speech_recording
from tests.jobs_support import (
    both_workers,
    client,
    decoded_seconds,
    gateway_id,
    idle_gateway,
    job_env,
    kill9,
    until,
    wait_state,
)
from tests.postgres import Postgres, postgres_server

pytestmark = pytest.mark.postgres


@pytest.fixture(scope="module")
def pg() -> Iterator[Postgres]:
    with postgres_server() as server:
        yield server


@pytest.fixture
def shared(pg: Postgres, tmp_path: Path) -> dict[str, str]:
    """Job settings every gateway of a test shares: the database (emptied first) and the spool folder."""
    with psycopg.connect(pg.dsn(), autocommit=True) as conn:
        conn.execute("DROP TABLE IF EXISTS webhook_attempts, job_labels, job_pieces, jobs")
    spool = tmp_path / "spool"
    spool.mkdir()
    return job_env(JOBS_DATABASE_URL=pg.url, JOB_SPOOL_DIR=str(spool), JOB_LEASE_S="3", JOB_WORKER_SLOTS="1")


def test_a_job_submitted_to_one_gateway_is_claimed_by_the_other(
    fleet: Fleet, shared: dict[str, str], tmp_path: Path
) -> None:
    front = idle_gateway(fleet, tmp_path / "front", shared)
    back = start_gateway(fleet, tmp_path / "back", shared, workers=both_workers(fleet))
    try:
        with client(front, None) as c:
            job = c.jobs.submit(clip("speech_short.wav"), formats=["txt"])
            final = wait_state(c, job.id, {jpb.JOB_STATE_SUCCEEDED, jpb.JOB_STATE_FAILED})
            assert final.state == jpb.JOB_STATE_SUCCEEDED, final.error
            assert final.gateway_id == gateway_id(back) != gateway_id(front)
            # The result is read through the gateway that never ran it: the store and spool are shared.
            assert "fox" in c.jobs.result(job.id, "txt").content.lower()
        assert '"job_claimed"' not in front.logs()
    finally:
        front.stop()
        back.stop()


def test_no_job_runs_twice_while_both_gateways_poll(fleet: Fleet, shared: dict[str, str], tmp_path: Path) -> None:
    first = start_gateway(fleet, tmp_path / "one", shared, workers=both_workers(fleet))
    second = start_gateway(fleet, tmp_path / "two", shared, workers=both_workers(fleet))
    try:
        before = decoded_seconds(fleet)
        with client(first, None) as a, client(second, None) as b:
            made = [(a if i % 2 else b).jobs.submit(clip("speech_short.wav")) for i in range(24)]
            finals = [wait_state(a, job.id, {jpb.JOB_STATE_SUCCEEDED}) for job in made]
        assert all(job.runs == 1 for job in finals), [(j.id, j.runs) for j in finals if j.runs != 1]
        claimed_by = {job.gateway_id for job in finals}
        assert claimed_by == {gateway_id(first), gateway_id(second)}  # both claimed work, never the same job
        audio = sum(job.audio_duration.ToNanoseconds() / 1e9 for job in finals)
        decoded = decoded_seconds(fleet) - before
        assert 0.8 * audio <= decoded <= audio * 1.01 + 1, (decoded, audio)
    finally:
        first.stop()
        second.stop()


def test_a_gateway_killed_mid_job_has_its_job_finished_by_the_other(
    pg: Postgres, fleet: Fleet, shared: dict[str, str], tmp_path: Path
) -> None:
    doomed = start_gateway(fleet, tmp_path / "doomed", shared, workers=both_workers(fleet))
    survivor = None
    audio_s = 240.0
    try:
        with client(doomed, None) as c:
            job = c.jobs.submit(speech_recording(audio_s))
            before = decoded_seconds(fleet)
            until(lambda: c.jobs.get(job.id).pieces_done >= 2, 120)
        survivor = start_gateway(fleet, tmp_path / "survivor", shared, workers=both_workers(fleet))
        kill9(doomed)
        with client(survivor, None) as c:
            final = c.jobs.wait(job.id)
        assert final.state == jpb.JOB_STATE_SUCCEEDED, final.error
        assert final.runs == 2 and final.gateway_id == gateway_id(survivor)
        decoded = decoded_seconds(fleet) - before
        assert 0.8 * audio_s <= decoded <= audio_s + 2 * 30.0, decoded  # at most the pieces in flight at the kill
        with psycopg.connect(pg.dsn()) as conn:
            pieces = conn.execute(
                "SELECT idx, gateway_id FROM job_pieces WHERE job_id = %s ORDER BY idx", (job.id,)
            ).fetchall()
        by = [gw for _, gw in pieces]
        assert [idx for idx, _ in pieces] == list(range(final.pieces_total))  # every piece once
        assert by[0] == gateway_id(doomed) and by[-1] == gateway_id(survivor)
        assert by == sorted(by, key=lambda gw: gw == gateway_id(survivor))  # the survivor took over, never back
    finally:
        doomed.stop()
        if survivor is not None:
            survivor.stop()
