"""The job store: one interface over SQLite (embedded, the default) and PostgreSQL (several gateways).

`JobStore` is the API's records (`records`), a run's claims, leases and pieces (`lifecycle`), and webhook
deliveries (`deliveries`), over one `Database` (`database`, tables in `schema`).
"""

from __future__ import annotations

from services.gateway.jobs.store.database import Database
from services.gateway.jobs.store.deliveries import Deliveries
from services.gateway.jobs.store.lifecycle import Lifecycle
from services.gateway.jobs.store.records import Records


class JobStore(Records, Lifecycle, Deliveries):
    """Blocking methods; async callers go through `run` (a few store threads)."""

    def __init__(self, url: str) -> None:
        self.db = Database(url)
        self.db.create_schema()
        self.run = self.db.run

    @property
    def backend(self) -> str:
        return "sqlite" if self.db.sqlite else "postgresql"

    def close(self) -> None:
        self.db.close()


__all__ = ["Database", "JobStore"]
