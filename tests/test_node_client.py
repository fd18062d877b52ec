"""The Node.js example (examples/node): @grpc/grpc-js with stubs loaded from our .proto files streams a
WAV file to the live gateway and prints interim and final results."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import Fleet
from tests.helpers import DATA, ROOT, words_of

EXAMPLE = ROOT / "examples" / "node"


@pytest.fixture(scope="module")
def node_example() -> Path:
    """The example with its locked dependencies installed (`npm ci` from package-lock.json on a fresh clone)."""
    node, npm = shutil.which("node"), shutil.which("npm")
    assert node and npm, "Node.js and npm are needed for the Node client example"
    if not (EXAMPLE / "node_modules" / "@grpc" / "grpc-js").is_dir():
        subprocess.run([npm, "ci", "--no-audit", "--no-fund"], cwd=EXAMPLE, check=True, timeout=300)
    return EXAMPLE / "stream_wav.js"


def run_node(script: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["node", str(script), *args], capture_output=True, text=True, timeout=120, cwd=ROOT)


def test_node_client_streams_a_wav_and_prints_interim_and_final_results(
    serving_fleet: Fleet, node_example: Path
) -> None:
    result = run_node(node_example, str(DATA / "speech_long.wav"), "--address", serving_fleet.address, "--speed", "4")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    finals = " ".join(line.split("] ", 1)[1] for line in lines if line.startswith("final"))
    assert any(line.startswith("interim") for line in lines), result.stdout
    assert words_of(finals)[:2] == ["good", "morning"] and "coat" in words_of(finals), result.stdout


def test_node_client_streams_44k_stereo_and_reports_errors(serving_fleet: Fleet, node_example: Path) -> None:
    stereo = run_node(
        node_example, str(DATA / "speech_short_44k_stereo.wav"), "--address", serving_fleet.address, "--speed", "0"
    )
    assert stereo.returncode == 0, stereo.stderr
    assert "lazy" in words_of(stereo.stdout), stereo.stdout
    not_wav = run_node(node_example, str(DATA / "speech_short.flac"), "--address", serving_fleet.address)
    assert not_wav.returncode != 0 and "not a RIFF/WAVE file" in not_wav.stderr
