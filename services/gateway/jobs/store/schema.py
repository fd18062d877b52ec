"""The job store's tables (SQLAlchemy Core): the same schema on SQLite and PostgreSQL.

Times are seconds since the epoch (float). A job's transcript is stored piece by piece as each piece
finishes (`job_pieces`), which is what lets a killed gateway's job resume without decoding a finished
piece again; the merged result goes into `jobs.result` when the job succeeds.
"""

from __future__ import annotations

from sqlalchemy import (
    Boolean,
    Column,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    SmallInteger,
    String,
    Table,
    Text,
    UniqueConstraint,
)
from sqlalchemy.types import BigInteger

metadata = MetaData()

# SQLite's INTEGER PRIMARY KEY rules do not apply to these: every key is a text id or a composite.
jobs = Table(
    "jobs",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("owner", String(200), nullable=False),
    Column("tenant", String(200), nullable=False),
    Column("request_id", String(128)),
    Column("state", SmallInteger, nullable=False),
    Column("spec", LargeBinary, nullable=False),
    Column("created_at", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
    Column("started_at", Float),
    Column("finished_at", Float),
    Column("version", BigInteger, nullable=False, default=1),
    Column("audio_path", Text),
    Column("audio_bytes", BigInteger, nullable=False, default=0),
    Column("audio_s", Float, nullable=False, default=0.0),
    Column("processed_s", Float, nullable=False, default=0.0),
    Column("pieces_done", Integer, nullable=False, default=0),
    Column("pieces_total", Integer, nullable=False, default=0),
    Column("piece_s", Float),
    Column("whole_file", Boolean, nullable=False, default=False),
    Column("gateway_id", String(200)),
    Column("lease_until", Float),
    Column("runs", Integer, nullable=False, default=0),
    Column("error", LargeBinary),
    Column("result", LargeBinary),
    Column("webhook_state", SmallInteger, nullable=False, default=0),
    Column("webhook_next_at", Float),
    Column("webhook_attempts", Integer, nullable=False, default=0),
    UniqueConstraint("owner", "request_id", name="uq_jobs_owner_request"),
)
# Listing newest first, all states or one (ListJobs, and the 100,000-row benchmark).
Index("ix_jobs_tenant_created", jobs.c.tenant, jobs.c.created_at, jobs.c.id)
Index("ix_jobs_tenant_state_created", jobs.c.tenant, jobs.c.state, jobs.c.created_at, jobs.c.id)
# Claiming: queued jobs by owner, oldest first; running jobs by lease.
Index("ix_jobs_state_owner_created", jobs.c.state, jobs.c.owner, jobs.c.created_at)
# Retention and the finished-per-second figure.
Index("ix_jobs_state_finished", jobs.c.state, jobs.c.finished_at)
# Webhooks due.
Index("ix_jobs_webhook", jobs.c.webhook_state, jobs.c.webhook_next_at)
# The spool's size: a covering index, summed without reading the rows.
Index("ix_jobs_audio", jobs.c.audio_path, jobs.c.audio_bytes)

job_pieces = Table(
    "job_pieces",
    metadata,
    Column("job_id", String(40), ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True),
    Column("idx", Integer, primary_key=True),
    Column("offset_s", Float, nullable=False),
    Column("seconds", Float, nullable=False),
    Column("result", LargeBinary, nullable=False),
    Column("gateway_id", String(200), nullable=False),
)

job_labels = Table(
    "job_labels",
    metadata,
    Column("job_id", String(40), ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True),
    Column("key", String(63), primary_key=True),
    Column("value", String(256), nullable=False),
)
Index("ix_job_labels_kv", job_labels.c.key, job_labels.c.value, job_labels.c.job_id)

webhook_attempts = Table(
    "webhook_attempts",
    metadata,
    Column("job_id", String(40), ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True),
    Column("attempt", Integer, primary_key=True),
    Column("at", Float, nullable=False),
    Column("http_status", Integer, nullable=False),
    Column("error", Text, nullable=False),
    Column("latency_s", Float, nullable=False),
)
