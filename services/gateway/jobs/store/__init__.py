"""The job store: one interface over SQLite (embedded, the default) and PostgreSQL (several gateways).

`JobStore` is the API's records (`records`), a run's claims, leases and pieces (`lifecycle`), and webhook
deliveries (`deliveries`), over one `Database` (`database`, tables in `schema`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import grpc
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from services.common.errors import RequestError
from services.gateway.jobs.store.database import Database
from services.gateway.jobs.store.deliveries import Deliveries
from services.gateway.jobs.store.lifecycle import Lifecycle
from services.gateway.jobs.store.records import Records

T = TypeVar("T")


class JobStore(Records, Lifecycle, Deliveries):
    """Blocking methods; async callers go through `run` (a few store threads). Nothing connects until the
    first call: `create_schema` is the gateway's first, and is retried while the database is down."""

    def __init__(self, url: str) -> None:
        self.db = Database(url)

    def create_schema(self) -> None:
        self.db.create_schema()

    async def run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """`fn` on a store thread; a database that does not answer is UNAVAILABLE, not an internal error."""
        try:
            return await self.db.run(fn, *args, **kwargs)
        except IntegrityError:
            raise
        except SQLAlchemyError as exc:
            raise RequestError(
                grpc.StatusCode.UNAVAILABLE,
                "JOB_STORE_UNAVAILABLE",
                f"the job store does not answer ({type(exc).__name__}); retry later",
                retry_after_s=5.0,
            ) from exc

    @property
    def backend(self) -> str:
        return "sqlite" if self.db.sqlite else "postgresql"

    def close(self) -> None:
        self.db.close()


__all__ = ["Database", "JobStore"]
