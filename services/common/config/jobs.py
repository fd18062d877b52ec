"""Batch jobs: where they are stored, how long they are kept, what they may read and call."""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, BeforeValidator, Field
from pydantic_settings import NoDecode

from services.common.config.security import SECRET
from services.common.config.types import Flag


def _comma_list(value: Any) -> Any:
    if isinstance(value, str):
        return tuple(item.strip() for item in value.split(",") if item.strip())
    return value


def _folders(values: tuple[str, ...]) -> tuple[Path, ...]:
    return tuple(Path(v).expanduser().resolve() for v in values)


def _networks(values: tuple[str, ...]) -> tuple[str, ...]:
    for value in values:
        try:
            ipaddress.ip_network(value, strict=False)
        except ValueError:
            raise ValueError(f"{value!r} is not a network: write CIDRs such as 127.0.0.0/8,10.0.0.0/8") from None
    return values


def _database_url(value: str) -> str:
    value = value.strip()
    if value and not value.startswith(("postgresql://", "postgresql+psycopg://", "postgres://", "sqlite:///")):
        raise ValueError(
            "must be postgresql://USER:PASSWORD@HOST/DB (or sqlite:///PATH), or empty for SQLite in RUN_DIR"
        )
    return value


def _webhook_secret(value: str) -> str:
    value = value.strip()
    if value:
        import base64
        import binascii

        try:
            raw = base64.b64decode(value.removeprefix("whsec_") + "==", validate=False)
        except (binascii.Error, ValueError):
            raw = b""
        if not value.startswith("whsec_") or len(raw) < 24:
            raise ValueError(
                "must be whsec_ and the base64 of 24 to 64 random bytes, e.g. "
                "`python -c \"import base64,os; print('whsec_' + base64.b64encode(os.urandom(32)).decode())\"`"
            )
    return value


def _optional_folder(value: Any) -> Any:
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    return Path(str(value).strip()).expanduser().resolve()


OptionalFolder = Annotated[Path | None, BeforeValidator(_optional_folder)]
Folders = Annotated[tuple[Path, ...], NoDecode, BeforeValidator(_comma_list), AfterValidator(_folders)]
Networks = Annotated[tuple[str, ...], NoDecode, BeforeValidator(_comma_list), AfterValidator(_networks)]


class JobFields(BaseModel):
    """Batch jobs: where they are stored, how long they are kept, what they may read and call."""

    jobs_database_url: Annotated[str, AfterValidator(_database_url)] = Field(
        "",
        description="Where jobs are stored. Empty: SQLite (WAL) at `RUN_DIR/jobs/jobs.db`, no set-up. "
        "`postgresql://USER:PASSWORD@HOST/DB`: PostgreSQL, shared by several gateways (each claims work with "
        "`FOR UPDATE SKIP LOCKED`); their `JOB_SPOOL_DIR` must then be one volume they all mount.",
        json_schema_extra=SECRET,
    )
    job_spool_dir: OptionalFolder = Field(
        None,
        description="Folder for the audio of jobs (uploads and fetched URLs). Empty: `RUN_DIR/jobs/audio`. With "
        "PostgreSQL, a volume every gateway mounts at this path (e.g. a ReadWriteMany PersistentVolumeClaim).",
    )
    job_spool_max_gb: float = Field(
        20,
        ge=0,
        description="Most audio (GB) the jobs' spool holds; a new upload past it gets RESOURCE_EXHAUSTED. Audio "
        "stays until its job is deleted or expires (`JOB_RETENTION_H`). `0`: no limit.",
    )
    job_retention_h: float = Field(
        168,
        ge=0,
        description="Hours a finished job (succeeded, failed or cancelled), its result and its audio are kept. "
        "`0`: forever.",
    )
    job_max_queued_per_token: int = Field(
        10_000,
        ge=1,
        description="Jobs one client (token, else certificate, else host) may have queued or running; more get "
        "RESOURCE_EXHAUSTED.",
    )
    job_source_dirs: Folders = Field(
        (),
        description="Comma-separated folders on the gateway's host a job may name as its source (`source.path`). "
        "Empty: jobs come only from uploads (and URLs, with `JOB_ALLOW_URLS`).",
    )
    job_allow_urls: Flag = Field(
        False,
        description="Let a job name an `http(s)://` URL as its source; the gateway fetches it (never from a "
        "loopback or private address unless `JOB_ALLOW_NETWORKS` allows it).",
    )
    job_webhook_secret: Annotated[str, AfterValidator(_webhook_secret)] = Field(
        "",
        description="Standard Webhooks signing secret (`whsec_` + base64 of 24+ random bytes). Jobs may ask for a "
        "webhook only when it is set.",
        json_schema_extra=SECRET,
    )
    job_webhook_retry_h: float = Field(
        24,
        gt=0,
        description="How long a webhook that fails (no answer, or not 2xx) is retried, with backoff, after its first "
        "attempt.",
    )
    job_webhook_retry_s: float = Field(
        5,
        gt=0,
        le=3600,
        description="Delay before a webhook's first retry; each later delay doubles, up to an hour.",
    )
    job_allow_networks: Networks = Field(
        (),
        description="CIDRs that webhooks and URL sources may reach although they are loopback, private or "
        "link-local (denied by default, so jobs cannot probe the gateway's network), e.g. `10.20.0.0/16`.",
    )
    job_piece_seconds: float = Field(
        60,
        ge=30,
        le=3600,
        description="A job's recording is cut at silences into pieces of about this length, each stored as it "
        "finishes: a job resumes after a gateway restart from its last finished piece. A file no longer than "
        "this goes to a worker whole.",
    )
    job_worker_slots: int = Field(
        0,
        ge=0,
        le=64,
        description="Slots of each worker that job pieces may hold at once; interactive calls and streams always "
        "go first. `0`: half the worker's `WORKER_CONCURRENCY` (at least 1). With several gateways on one set of "
        "workers, keep their sum under `WORKER_CONCURRENCY`.",
    )
    job_lease_s: float = Field(
        30,
        ge=1,
        le=3600,
        description="A running job is renewed by its gateway every third of this; a gateway silent this long "
        "(killed) loses its jobs to the others, which resume them from their last finished piece.",
    )
    job_poll_s: float = Field(
        1.0,
        ge=0.05,
        le=60,
        description="How often an idle gateway looks for queued jobs (those submitted to it start at once).",
    )
    job_gateway_id: str = Field(
        "",
        description="This gateway's name in the job store. Empty: the host name and `RUN_DIR`, so a restarted "
        "gateway takes back its own jobs at once; others take them after `JOB_LEASE_S`.",
    )
