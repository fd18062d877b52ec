"""The model catalogue and joining `base` from its two packages (writes the 145 MB model into temp folders)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from services.common.models import assembly
from services.common.models.catalogue import lookup, served_name, slug


def test_catalogue_names_and_aliases() -> None:
    assert served_name("embedded") == served_name("tiny.en") == "tiny.en"
    assert served_name("base") == "base" and served_name(" large-v2 ") == "large-v2"
    assert lookup("base") is not None and lookup("base").multilingual  # type: ignore[union-attr]
    assert slug("tiny.en") == "tiny.en" and slug("/srv/models/my_model") == "my-model" and slug("2x") == "m2x"


def test_base_is_joined_once_checked_and_complete(tmp_path: Path) -> None:
    folder = assembly.assembled_base(tmp_path)
    assert folder.parent == tmp_path and assembly.is_complete(folder)
    model = folder / "model.bin"
    assert model.stat().st_size == assembly.BASE_SIZE
    digest = hashlib.sha256()
    with open(model, "rb") as f:
        while chunk := f.read(1 << 22):
            digest.update(chunk)
    assert digest.hexdigest() == assembly.BASE_SHA256
    assert {p.name for p in folder.iterdir()} == {
        "model.bin",
        "config.json",
        "tokenizer.json",
        "vocabulary.txt",
        "checked.sha256",
    }
    stamp = model.stat().st_mtime_ns
    assert assembly.assembled_base(tmp_path) == folder and model.stat().st_mtime_ns == stamp  # not joined again
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".base-")]  # no work folder left


def test_wrong_parts_are_refused_and_leave_nothing_that_looks_finished(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = tmp_path / "pkg"
    for package, name in assembly.PARTS:
        (fake / package / "data").mkdir(parents=True)
        (fake / package / "data" / name).write_bytes(b"\0" * 1000)
    monkeypatch.setattr(assembly, "_data", lambda package: fake / package / "data")
    with pytest.raises(assembly.ModelFilesError, match="reinstall"):
        assembly.assembled_base(tmp_path / "cache")
    assert [p.name for p in (tmp_path / "cache").iterdir()] == ["base.lock"]


def test_a_read_only_cache_falls_back_to_the_run_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    if os.geteuid() == 0:
        # root writes anywhere: a cache that is a file stands for one that cannot be written
        (tmp_path / "home").write_text("not a folder")
    else:
        (tmp_path / "home").mkdir(mode=0o500)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "home"))
    folder = assembly.assembled_base(None, tmp_path / "run")
    assert folder.parent == tmp_path / "run" / "models" and assembly.is_complete(folder)
