"""The API check (`make api`, run by `make test`): buf lint with the STANDARD rules, and buf breaking
against the protos main served last, so a change that would break generated stubs fails the build."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from tests.helpers import ROOT

CHECK = ROOT / "tools" / "api_check.sh"
PROTO = Path("transcription") / "v1" / "transcription.proto"


@pytest.fixture(scope="module")
def buf() -> Path:
    """The pinned buf CLI (`npm ci` from package-lock.json on a fresh clone)."""
    binary = ROOT / "node_modules" / ".bin" / "buf"
    if not binary.exists():
        npm = shutil.which("npm")
        assert npm, "npm is needed for the buf CLI (@bufbuild/buf)"
        subprocess.run([npm, "ci", "--no-audit", "--no-fund"], cwd=ROOT, check=True, timeout=300)
    return binary


def api_check(protos: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(CHECK), str(protos)], capture_output=True, text=True, timeout=120, cwd=ROOT)


def edited_copy(tmp_path: Path, old: str, new: str) -> Path:
    copy = tmp_path / "protos"
    shutil.copytree(ROOT / "protos", copy)
    source = (copy / PROTO).read_text()
    assert old in source
    (copy / PROTO).write_text(source.replace(old, new, 1))
    return copy


def test_the_protos_pass_lint_and_breaking(buf: Path) -> None:
    result = api_check(ROOT / "protos")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "buf lint and buf breaking passed" in result.stdout


def test_renumbering_a_field_fails_with_bufs_message(buf: Path, tmp_path: Path) -> None:
    copy = edited_copy(tmp_path, "string language_code = 1;", "string language_code = 9;")
    result = api_check(copy)
    assert result.returncode != 0
    assert 'Previously present field "1" with name "language_code" on message "RecognitionOptions"' in result.stdout


def test_a_lint_violation_fails(buf: Path, tmp_path: Path) -> None:
    copy = edited_copy(tmp_path, "string initial_prompt = 6;", "string initialPrompt = 6;")
    result = api_check(copy)
    assert result.returncode != 0
    assert 'Field name "initialPrompt" should be lower_snake_case' in result.stdout


def test_adding_an_rpc_and_a_field_is_not_breaking(buf: Path, tmp_path: Path) -> None:
    copy = edited_copy(
        tmp_path,
        "  rpc GetConfig(GetConfigRequest) returns (GetConfigResponse);\n",
        "  rpc GetConfig(GetConfigRequest) returns (GetConfigResponse);\n"
        "  // Says hello.\n  rpc Hello(HelloRequest) returns (HelloResponse);\n",
    )
    with (copy / PROTO).open("a") as proto:
        proto.write("\n// A greeting.\nmessage HelloRequest {\n  // Who.\n  string name = 1;\n}\n")
        proto.write("\n// The answer.\nmessage HelloResponse {\n  // What.\n  string text = 1;\n}\n")
    result = api_check(copy)
    assert result.returncode == 0, result.stdout + result.stderr
