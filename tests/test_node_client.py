"""The Node.js example (examples/node): @grpc/grpc-js with stubs loaded from our .proto files streams a
WAV file to the live gateway and prints interim and final results."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import Fleet, Process
from tests.helpers import DATA, ROOT, speech_recording, words_of

EXAMPLE = ROOT / "examples" / "node"


@pytest.fixture(scope="module")
def node_example() -> Path:
    """The example with its locked dependencies installed (`npm ci` from package-lock.json on a fresh clone)."""
    node, npm = shutil.which("node"), shutil.which("npm")
    assert node and npm, "Node.js and npm are needed for the Node client example"
    if not (EXAMPLE / "node_modules" / "@grpc" / "grpc-js").is_dir():
        subprocess.run([npm, "ci", "--no-audit", "--no-fund"], cwd=EXAMPLE, check=True, timeout=300)
    return EXAMPLE / "stream_wav.js"


@pytest.fixture(scope="module")
def transcribe_file(node_example: Path) -> Path:
    return EXAMPLE / "transcribe_file.js"


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


def test_node_client_uploads_a_file_larger_than_one_message(
    serving_fleet: Fleet, small_gateway: Process, transcribe_file: Path, tmp_path: Path
) -> None:
    audio = tmp_path / "talk.wav"
    audio.write_bytes(speech_recording(70))  # 2.2 MB, past the gateway's 1 MiB message limit
    result = run_node(transcribe_file, str(audio), "--address", small_gateway.address)
    assert result.returncode == 0, result.stderr
    assert "with TranscribeUpload" in result.stderr and "100.0% 70/70 s of audio" in result.stderr, result.stderr
    assert "gpu_worker_00" in result.stderr and "gpu_worker_01" in result.stderr, result.stderr
    assert words_of(result.stdout)[:2] == ["good", "morning"] and "captions" in words_of(result.stdout)

    small = run_node(transcribe_file, str(DATA / "speech_short.flac"), "--address", small_gateway.address)
    assert small.returncode == 0 and "with TranscribeWithProgress" in small.stderr, small.stderr
    assert "lazy" in words_of(small.stdout)
