"""A real PostgreSQL server for a test run, from Debian's `postgresql` package: initdb into a temporary
folder, listening only on a unix socket there, stopped at the end. Run as root (as CI is), the server runs
as the `postgres` user the package creates, since PostgreSQL refuses to run as root."""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path


def bin_dir() -> Path:
    """The newest /usr/lib/postgresql/<version>/bin (Debian installs the server there, not on PATH)."""
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin/postgres"), key=lambda p: int(p.parent.parent.name))
    if not versions:
        raise RuntimeError("PostgreSQL is not installed: `make test-postgres` installs Debian's postgresql package")
    return versions[-1].parent


@dataclass
class Postgres:
    socket_dir: Path
    database: str
    user: str

    @property
    def url(self) -> str:
        """For JOBS_DATABASE_URL (psycopg reads the socket folder from `host`)."""
        return f"postgresql://{self.user}@/{self.database}?host={self.socket_dir}"

    def dsn(self) -> str:
        return f"host={self.socket_dir} dbname={self.database} user={self.user}"


@contextmanager
def postgres_server(database: str = "scribe") -> Iterator[Postgres]:
    """A server in a fresh folder of /tmp (the `postgres` user must reach it: pytest's folders are private)."""
    binaries = bin_dir()
    run_as: list[str] = []
    folder = Path(tempfile.mkdtemp(prefix="scribe-pg-"))
    data, log = folder / "data", folder / "server.log"
    if os.geteuid() == 0:
        account = pwd.getpwnam("postgres")
        shutil.chown(folder, account.pw_uid, account.pw_gid)
        folder.chmod(0o755)
        run_as = ["runuser", "-u", "postgres", "--"]

    def run(*args: str) -> None:
        done = subprocess.run([*run_as, *args], capture_output=True, text=True, timeout=120)
        if done.returncode:
            raise RuntimeError(f"{' '.join(args[:1])} failed: {done.stderr or done.stdout}")

    user = "scribe"
    run(str(binaries / "initdb"), "-D", str(data), "-U", user, "--auth=trust", "-E", "UTF8", "--no-sync")
    options = f"-k {folder} -c listen_addresses='' -c max_connections=100"
    run(str(binaries / "pg_ctl"), "-D", str(data), "-l", str(log), "-o", options, "-w", "-t", "60", "start")
    try:
        run(str(binaries / "createdb"), "-h", str(folder), "-U", user, database)
        yield Postgres(folder, database, user)
    finally:
        subprocess.run(
            [*run_as, str(binaries / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"],
            capture_output=True,
            timeout=120,
        )
        shutil.rmtree(folder, ignore_errors=True)
