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


def test_on_main_a_breaking_commit_is_judged_against_the_protos_before_it(buf: Path, tmp_path: Path) -> None:
    """CI on main right after a proto change: the last commit that changed the protos is HEAD itself, so the
    check compares with the change before it instead of passing against itself."""
    repo = tmp_path / "repo"
    shutil.copytree(ROOT / "protos", repo / "protos")
    (repo / "tools").mkdir()
    shutil.copy(CHECK, repo / "tools" / CHECK.name)
    (repo / "node_modules").symlink_to(ROOT / "node_modules")
    (repo / ".gitignore").write_text("node_modules\n")

    def git(*args: str) -> None:
        subprocess.run(
            ["git", "-c", "user.name=test", "-c", "user.email=test@example.com", *args],
            cwd=repo,
            check=True,
            capture_output=True,
        )

    git("init", "-q", "-b", "main")
    git("add", ".")
    git("commit", "-qm", "the API as served")
    source = (repo / "protos" / PROTO).read_text()
    (repo / "protos" / PROTO).write_text(source.replace("string language_code = 1;", "string language_code = 9;", 1))
    git("commit", "-qam", "renumber a field")
    result = subprocess.run([str(repo / "tools" / CHECK.name)], capture_output=True, text=True, timeout=120, cwd=repo)
    assert result.returncode != 0, result.stdout + result.stderr
    assert 'Previously present field "1" with name "language_code"' in result.stdout
    git("commit", "-q", "--allow-empty", "-m", "a later commit that leaves the protos alone")
    later = subprocess.run([str(repo / "tools" / CHECK.name)], capture_output=True, text=True, timeout=120, cwd=repo)
    # The break is main's history now: later commits are held to it, not to what came before it.
    assert later.returncode == 0 and "renumber a field" in later.stdout, later.stdout + later.stderr
