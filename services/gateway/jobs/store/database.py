"""The job store's connection: SQLite (WAL, in RUN_DIR by default) or PostgreSQL (psycopg 3), one interface.

SQLite: every write transaction starts with BEGIN IMMEDIATE, so two writers (threads, or gateways on one
host) queue on the database lock instead of failing half-way; readers never wait (WAL).
PostgreSQL: claims lock rows with FOR UPDATE SKIP LOCKED, so gateways sharing one database never claim
the same job and never wait on each other's claims.

The store's methods block; the gateway calls them through `Database.run`, on a few threads of its own.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.engine import make_url

from services.gateway.jobs.model import JobRecord
from services.gateway.jobs.store.schema import jobs, metadata
from services.gen import jobs_pb2 as jpb

T = TypeVar("T")
#: Threads that run store calls: enough for the runner, the watchers and the API at once.
STORE_THREADS = 4
_WRITE = "scribe_write"


def _sqlite_engine(url: str) -> Engine:
    path = make_url(url).database
    if path and path != ":memory:":
        Path(path).parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 60})

    @event.listens_for(engine, "connect")
    def _connect(dbapi: Any, _record: Any) -> None:
        dbapi.isolation_level = None  # pysqlite must not BEGIN on its own: `_begin` does, with the right lock
        cursor = dbapi.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        # WAL with synchronous=NORMAL survives a killed process (kill -9) with every commit; only an OS
        # crash or power loss may lose the last transactions, never corrupt the file.
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA busy_timeout=60000")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _begin(conn: Connection) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE" if conn.get_execution_options().get(_WRITE) else "BEGIN")

    return engine


class Database:
    """The engine, transactions, and the thread pool the async callers use."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.sqlite = url.startswith("sqlite")
        if self.sqlite:
            self.engine = _sqlite_engine(url)
        else:
            self.engine = create_engine(url, pool_size=STORE_THREADS + 2, max_overflow=4, pool_pre_ping=True)
        self._executor = ThreadPoolExecutor(max_workers=STORE_THREADS, thread_name_prefix="job-store")

    def create_schema(self) -> None:
        """Create the tables that are missing (every gateway does at start; it is idempotent)."""
        with self.engine.begin() as conn:
            if not self.sqlite:
                # Two gateways starting at once must not both create the tables: one waits for the other.
                conn.exec_driver_sql("SELECT pg_advisory_xact_lock(210021)")
            metadata.create_all(conn, checkfirst=True)

    @contextmanager
    def write(self) -> Iterator[Connection]:
        """A transaction that writes (BEGIN IMMEDIATE on SQLite)."""
        with self.engine.connect() as conn:
            conn = conn.execution_options(**{_WRITE: True})
            with conn.begin():
                yield conn

    @contextmanager
    def read(self) -> Iterator[Connection]:
        with self.engine.connect() as conn, conn.begin():
            yield conn

    async def run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """`fn(*args, **kwargs)` on a store thread."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, functools.partial(fn, *args, **kwargs))

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
        self.engine.dispose()


#: Columns read into a JobRecord (everything but the merged result, which only GetJobResult reads).
RECORD_COLUMNS = [c for c in jobs.c if c.name != "result"]


def record(row: Any) -> JobRecord:
    m = row._mapping
    spec = jpb.JobSpec()
    spec.ParseFromString(m["spec"])
    return JobRecord(
        id=m["id"],
        owner=m["owner"],
        tenant=m["tenant"],
        state=m["state"],
        spec=spec,
        created_at=m["created_at"],
        updated_at=m["updated_at"],
        version=m["version"],
        request_id=m["request_id"],
        started_at=m["started_at"],
        finished_at=m["finished_at"],
        audio_path=m["audio_path"],
        audio_bytes=m["audio_bytes"],
        audio_s=m["audio_s"],
        processed_s=m["processed_s"],
        pieces_done=m["pieces_done"],
        pieces_total=m["pieces_total"],
        piece_s=m["piece_s"],
        whole_file=bool(m["whole_file"]),
        gateway_id=m["gateway_id"],
        lease_until=m["lease_until"],
        runs=m["runs"],
        error=m["error"],
        webhook_state=m["webhook_state"],
        webhook_next_at=m["webhook_next_at"],
        webhook_attempts=m["webhook_attempts"],
    )
