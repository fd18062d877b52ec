"""The jobs' audio on disk: uploads and fetched URL sources, within JOB_SPOOL_MAX_GB.

A file arrives in a private folder of this gateway (`.incoming/<gateway>`), is flushed to disk, and only
then moves to its final name (`<job id>.audio`, an atomic rename) and is recorded in the store. A gateway
killed mid-upload leaves only its own incoming folder, which it empties when it starts again; a full
budget or a full disk refuses the upload with RESOURCE_EXHAUSTED and removes what arrived, and the store
never names a file that is not complete.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from urllib.parse import urljoin

import grpc
import httpx
import structlog

from services.common.errors import RequestError
from services.gateway.jobs import netguard

log = structlog.get_logger()
SUFFIX = ".audio"
#: How long the store's spool total may be reused before it is read again.
TOTAL_TTL_S = 2.0


def spool_full(limit: int, used: int) -> RequestError:
    return RequestError(
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "JOB_SPOOL_FULL",
        f"the job spool holds {used / 1e9:.2f} GB of audio and its limit is {limit / 1e9:.2f} GB "
        "(JOB_SPOOL_MAX_GB): delete finished jobs, wait for JOB_RETENTION_H to expire them, or retry later",
        retry_after_s=60.0,
    )


class Upload:
    """One incoming file; `commit` gives it its final name, `discard` removes it."""

    def __init__(self, spool: JobSpool, path: Path) -> None:
        self._spool = spool
        self.path = path
        self._file = open(path, "wb")  # noqa: SIM115 - closed by commit or discard
        self.size = 0

    async def write(self, chunk: bytes) -> None:
        await self._spool.reserve(len(chunk))
        try:
            self._file.write(chunk)
        except OSError as exc:
            self._spool.unreserve(len(chunk))
            raise RequestError(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                "JOB_SPOOL_WRITE_FAILED",
                f"the job spool cannot take the file: {exc}",
            ) from None
        self.size += len(chunk)

    def commit(self, job_id: str) -> Path:
        """Flush to disk and move to the job's name; the caller records it in the store next."""
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        final = self._spool.path_of(job_id)
        os.replace(self.path, final)
        self._spool.unreserve(self.size)
        return final

    def discard(self) -> None:
        if not self._file.closed:
            self._file.close()
        self.path.unlink(missing_ok=True)
        self._spool.unreserve(self.size)
        self.size = 0


class JobSpool:
    """The folder of job audio (JOB_SPOOL_DIR), shared by every gateway of a store."""

    def __init__(
        self,
        folder: Path,
        gateway_id: str,
        max_bytes: int,
        stored_bytes: Callable[[], Awaitable[int]],
    ) -> None:
        self.folder = folder
        self.max_bytes = max_bytes
        self._stored_bytes = stored_bytes
        safe = hashlib.sha256(gateway_id.encode()).hexdigest()[:16]
        self.incoming = folder / ".incoming" / safe
        self.incoming.mkdir(parents=True, exist_ok=True, mode=0o700)
        folder.chmod(0o700)
        self._uploading = 0  # bytes of this gateway's uploads in progress
        self._total = 0
        self._total_at = float("-inf")

    def path_of(self, job_id: str) -> Path:
        return self.folder / f"{job_id}{SUFFIX}"

    def remove_leftovers(self) -> int:
        """Files of uploads this gateway had in progress when it stopped."""
        removed = 0
        for path in self.incoming.iterdir():
            path.unlink(missing_ok=True)
            removed += 1
        if removed:
            log.info("job_upload_leftovers_removed", files=removed)
        return removed

    def open(self) -> Upload:
        name = f"{time.time_ns():x}-{os.urandom(4).hex()}.part"
        return Upload(self, self.incoming / name)

    async def used(self, fresh: bool = False) -> int:
        """Bytes stored (every gateway's) plus this gateway's uploads in progress."""
        now = time.monotonic()
        if fresh or now - self._total_at > TOTAL_TTL_S:
            self._total = await self._stored_bytes()
            self._total_at = now
        return self._total + self._uploading

    async def check(self) -> None:
        """RESOURCE_EXHAUSTED if the spool is already full (before an upload starts)."""
        if self.max_bytes and (used := await self.used(fresh=True)) >= self.max_bytes:
            raise spool_full(self.max_bytes, used)

    async def reserve(self, size: int) -> None:
        if self.max_bytes:
            used = await self.used()
            if used + size > self.max_bytes:
                raise spool_full(self.max_bytes, used)
        self._uploading += size

    def unreserve(self, size: int) -> None:
        self._uploading = max(0, self._uploading - size)

    def stored(self, size: int) -> None:
        """A committed file now counts in the store's total; count it here until the total is read again."""
        self._total += size

    def remove(self, path: str | os.PathLike[str] | None) -> None:
        """Delete a job's file (retention, DeleteJob); a file already gone is fine."""
        if path:
            Path(path).unlink(missing_ok=True)

    def orphans(self, known: set[str], older_than_s: float = 3600.0) -> list[Path]:
        """Files no job refers to any more (a gateway killed between the rename and the insert), old
        enough that no upload is about to record them."""
        cutoff = time.time() - older_than_s
        return [p for p in self.folder.glob(f"*{SUFFIX}") if str(p) not in known and p.stat().st_mtime < cutoff]


#: Redirects a URL source may take (each hop's address is checked again).
MAX_REDIRECTS = 5


async def fetch(
    url: str, spool: JobSpool, job_id: str, max_bytes: int, allowed: list[netguard.Network]
) -> tuple[Path, int]:
    """Download a URL source into the spool as the job's file; (its path, its size). The address of every
    hop is checked (netguard); the file counts against the spool's budget and MAX_UPLOAD_MB."""
    async with httpx.AsyncClient(timeout=httpx.Timeout(30.0, read=120.0)) as client:
        for _ in range(MAX_REDIRECTS + 1):
            try:
                response = await netguard.send(client, "GET", url, allowed, "url", stream=True)
            except httpx.HTTPError as exc:
                raise RequestError(grpc.StatusCode.UNAVAILABLE, "URL_FETCH_FAILED", f"GET {url}: {exc}") from None
            try:
                if response.is_redirect and "location" in response.headers:
                    url = urljoin(url, response.headers["location"])
                    continue
                if response.status_code != 200:
                    raise RequestError(
                        grpc.StatusCode.FAILED_PRECONDITION,
                        "URL_FETCH_FAILED",
                        f"GET {url} answered HTTP {response.status_code}, not 200",
                    )
                upload = spool.open()
                try:
                    async for chunk in response.aiter_bytes(1 << 20):
                        if upload.size + len(chunk) > max_bytes:
                            raise RequestError(
                                grpc.StatusCode.OUT_OF_RANGE,
                                "UPLOAD_TOO_LARGE",
                                f"{url} is larger than the {max_bytes // 2**20} MiB (MAX_UPLOAD_MB) a job may hold",
                            )
                        await upload.write(chunk)
                    size = upload.size
                    return upload.commit(job_id), size
                except httpx.HTTPError as exc:
                    upload.discard()
                    raise RequestError(grpc.StatusCode.UNAVAILABLE, "URL_FETCH_FAILED", f"GET {url}: {exc}") from None
                except BaseException:
                    upload.discard()
                    raise
            finally:
                await response.aclose()
    raise RequestError(
        grpc.StatusCode.FAILED_PRECONDITION, "URL_FETCH_FAILED", f"{url}: more than {MAX_REDIRECTS} redirects"
    )
