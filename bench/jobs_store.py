"""The job store with 100,000 finished jobs (synthetic rows): ListJobs by state, first page and deep page,
on SQLite and on PostgreSQL, at the store and through a gateway's JobService.

    python -m bench.jobs_store [--rows 100000]      (bench.jobs runs it as part of `make bench-jobs`)
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import grpc
from sqlalchemy import insert

from bench.fleet import ROOT, free_port
from services.common.config import Settings
from services.gateway.jobs.model import FAILED, SUCCEEDED, page_token
from services.gateway.jobs.store import JobStore
from services.gateway.jobs.store.schema import job_labels, jobs
from services.gen import jobs_pb2 as jpb
from services.gen import jobs_pb2_grpc

#: A page as ListJobs returns it by default.
PAGE = 100
TARGET_MS = 100.0


def fill(store: JobStore, rows: int, batch: int = 5000) -> None:
    """`rows` finished jobs of one client (90% succeeded, 10% failed), two labels each, one second apart."""
    spec = jpb.JobSpec(display_name="synthetic.wav", labels={"project": "bench"}).SerializeToString()
    start = time.time() - rows
    with store.db.write() as conn:
        for first in range(0, rows, batch):
            chunk = []
            for i in range(first, min(rows, first + batch)):
                at = start + i
                chunk.append(
                    {
                        "id": f"job_{int(at * 1000):011x}{i:012x}",
                        "owner": "token:bench",
                        "tenant": "token:bench",
                        "request_id": None,
                        "state": FAILED if i % 10 == 0 else SUCCEEDED,
                        "spec": spec,
                        "created_at": at,
                        "updated_at": at + 30,
                        "started_at": at + 1,
                        "finished_at": at + 30,
                        "version": 4,
                        "audio_bytes": 0,
                        "audio_s": 30.0,
                        "processed_s": 30.0,
                        "pieces_done": 1,
                        "pieces_total": 1,
                        "whole_file": True,
                        "runs": 1,
                        "webhook_state": 0,
                        "webhook_attempts": 0,
                    }
                )
            conn.execute(insert(jobs), chunk)
            conn.execute(
                insert(job_labels),
                [{"job_id": r["id"], "key": "batch", "value": str(i % 50)} for i, r in enumerate(chunk)],
            )
        if not store.db.sqlite:
            conn.exec_driver_sql("ANALYZE")


def timed(fn: Callable[[], object], runs: int = 30) -> tuple[float, float]:
    """(median, p95) milliseconds of `fn`, after one warm-up call."""
    fn()
    samples = []
    for _ in range(runs):
        started = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - started) * 1000)
    samples.sort()
    return statistics.median(samples), samples[int(0.95 * (len(samples) - 1))]


def through_gateway(url: str, rows: int) -> tuple[float, float]:
    """ListJobs by state over gRPC, from a gateway on this store (its worker never answers: no claims)."""
    import os

    folder = Path(tempfile.mkdtemp(prefix="scribe-bench-list-"))
    address = f"127.0.0.1:{free_port()}"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GPU_", "WHISPER_", "SUPERVISOR_"))}
    env.update(
        SCRIBE_ENV_FILE=str(folder / "none.env"),
        GATEWAY_ADDRESS=address,
        RUN_DIR=str(folder / "run"),
        STATIC_WORKERS=f"unix://{folder / 'none.sock'}",
        METRICS_ADDRESS="",
        HTTP_ADDRESS="",
        JOBS_DATABASE_URL=url,
        AUTH_TOKENS="bench-token-0123456789abcdef",
        LOG_FORMAT="json",
        LOG_LEVEL="warning",
    )
    gateway = subprocess.Popen([sys.executable, "-m", "services.gateway"], env=env, cwd=ROOT)
    try:
        channel = grpc.insecure_channel(address)
        grpc.channel_ready_future(channel).result(timeout=60)
        stub = jobs_pb2_grpc.JobServiceStub(channel)
        # The rows belong to this token's client (`run` gives them its fingerprint as owner and tenant).
        metadata = (("authorization", "Bearer bench-token-0123456789abcdef"),)
        request = jpb.ListJobsRequest(states=[jpb.JOB_STATE_SUCCEEDED], page_size=PAGE)
        answer = stub.ListJobs(request, metadata=metadata, timeout=30)
        assert len(answer.jobs) == PAGE, len(answer.jobs)
        return timed(lambda: stub.ListJobs(request, metadata=metadata, timeout=30))
    finally:
        gateway.terminate()
        gateway.wait(30)


def run(rows: int, postgres_url: str | None) -> list[str]:
    """The table rows of both backends."""
    from services.common.auth import token_fingerprint

    lines = []
    backends = [("SQLite (WAL)", None)] + ([("PostgreSQL 15", postgres_url)] if postgres_url else [])
    for name, url in backends:
        folder = Path(tempfile.mkdtemp(prefix="scribe-bench-store-"))
        raw_url = url or f"sqlite:///{folder / 'jobs.db'}"
        store = JobStore(Settings.from_env({"JOBS_DATABASE_URL": raw_url}).jobs_database)
        store.create_schema()
        started = time.perf_counter()
        fill(store, rows)
        filled_s = time.perf_counter() - started
        tenant = token_fingerprint("bench-token-0123456789abcdef")
        with store.db.write() as conn:
            conn.execute(jobs.update().values(tenant=tenant, owner=tenant))
        results = measure_as(store, rows, tenant)
        results["ListJobs by state over gRPC (first page)"] = through_gateway(raw_url, rows)
        store.close()
        for what, (median, p95) in results.items():
            verdict = "met" if p95 < TARGET_MS or "counts" in what else "MISSED"
            lines.append(f"| {name} | {what} | {median:.1f} | {p95:.1f} | {verdict} |")
        lines.append(f"| {name} | (inserting {rows:,} rows) | {filled_s * 1000:.0f} | | |")
    return lines


def measure_as(store: JobStore, rows: int, tenant: str) -> dict[str, tuple[float, float]]:
    first = store.page(tenant, [SUCCEEDED], None, PAGE)
    middle = store.page(tenant, [SUCCEEDED], None, rows // 2)[-1]
    after = (middle.created_at, middle.id)
    assert len(first) == PAGE and page_token(*after)
    return {
        "first page (100) by state": timed(lambda: store.page(tenant, [SUCCEEDED], None, PAGE)),
        f"page at row {rows // 2:,} by state": timed(lambda: store.page(tenant, [SUCCEEDED], None, PAGE, after)),
        "first page by state and label": timed(lambda: store.page(tenant, [FAILED], {"batch": "0"}, PAGE)),
        "jobs by state (counts, for metrics)": timed(store.stats, 10),
    }


def table(rows: int, postgres_url: str | None) -> str:
    head = [
        f"{rows:,} finished jobs of one client (synthetic rows: 90% succeeded, 10% failed, a label each), "
        f"a page of {PAGE}; median and p95 of 30 calls, in ms. Target: under {TARGET_MS:.0f} ms.",
        "",
        "| Store | Listing | Median ms | p95 ms | Target |",
        "|---|---|---:|---:|---|",
    ]
    return "\n".join(head + run(rows, postgres_url))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--no-postgres", action="store_true")
    args = parser.parse_args()
    if args.no_postgres:
        print(table(args.rows, None))
        return
    from tests.postgres import postgres_server

    with postgres_server() as pg:
        print(table(args.rows, pg.url))


if __name__ == "__main__":
    main()
