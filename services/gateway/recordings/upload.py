"""TranscribeUpload's first half: the client's chunks to a private file, within MAX_UPLOAD_MB.

The upload goes to disk as it arrives, so the gateway holds one chunk of it in memory whatever its
size; the file is 0600 in RUN_DIR/uploads (0700), removed when the call ends however it ends, and any
left by a gateway that was killed are removed when the next one starts.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import structlog

from services.common.errors import RequestError
from services.gen import transcription_pb2 as pb

log = structlog.get_logger()

SUFFIX = ".upload"


def uploads_dir(run_dir: Path) -> Path:
    return run_dir / "uploads"


def remove_leftovers(run_dir: Path) -> int:
    """Delete spool files of calls that ended with their gateway; returns how many."""
    folder = uploads_dir(run_dir)
    removed = 0
    for path in folder.glob(f"*{SUFFIX}") if folder.is_dir() else ():
        path.unlink(missing_ok=True)
        removed += 1
    if removed:
        log.info("upload_leftovers_removed", files=removed)
    return removed


class Spool:
    """One upload's file; `remove()` deletes it (call it in a finally)."""

    def __init__(self, run_dir: Path, limit_bytes: int) -> None:
        folder = uploads_dir(run_dir)
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        folder.chmod(0o700)  # also when it was there before, made by someone else's umask
        fd, name = tempfile.mkstemp(prefix="upload-", suffix=SUFFIX, dir=folder)  # mode 0600
        self.path = Path(name)
        self._file = os.fdopen(fd, "wb")
        self._limit = limit_bytes
        self.size = 0

    def write(self, chunk: bytes) -> None:
        if self.size + len(chunk) > self._limit:
            raise RequestError(
                grpc.StatusCode.OUT_OF_RANGE,
                "UPLOAD_TOO_LARGE",
                f"the upload is larger than the {self._limit // 2**20} MiB (MAX_UPLOAD_MB) the server takes: "
                "compress it (FLAC, MP3, Opus) or split it",
            )
        # A page-cache write of one chunk (1 MiB) is quick; the event loop is not held for long.
        self._file.write(chunk)
        self.size += len(chunk)

    def close(self) -> None:
        self._file.close()

    def remove(self) -> None:
        self._file.close()
        self.path.unlink(missing_ok=True)


def _config_error(message: str, reason: str = "CONFIG_NOT_FIRST") -> RequestError:
    return RequestError(grpc.StatusCode.INVALID_ARGUMENT, reason, message)


async def receive(requests: AsyncIterator[pb.TranscribeUploadRequest], spool: Spool) -> pb.UploadConfig:
    """Read the whole upload into `spool`; returns its config. A bad sequence is INVALID_ARGUMENT."""
    first = await anext(requests, None)
    if first is None or first.WhichOneof("upload_request") != "upload_config":
        raise _config_error("the first TranscribeUploadRequest must carry upload_config, and only it")
    async for request in requests:
        if request.WhichOneof("upload_request") != "audio_content":
            raise _config_error(
                "upload_config may only be sent once, in the first request; later requests carry audio_content",
                "CONFIG_TWICE",
            )
        spool.write(request.audio_content)
    spool.close()
    if not spool.size:
        raise _config_error("the upload holds no audio: send the file's bytes after upload_config", "EMPTY_AUDIO")
    return first.upload_config
