"""scribe-client on its own: `pip install ./clients/python` into a fresh virtualenv, with nothing of the server,
lets a script transcribe a file and stream one against the live fleet, without faster-whisper, CTranslate2
or PyAV (nor the server's own `services` package) in that environment."""

from __future__ import annotations

import os
import subprocess
import textwrap
import venv
from pathlib import Path

import pytest

from tests.conftest import Fleet
from tests.helpers import DATA, ROOT, words_of

SCRIPT = textwrap.dedent(
    """
    import sys
    import wave

    from scribe_client import ScribeClient, StreamConfig, TranscribeOptions, render

    address, recording, live = sys.argv[1:]
    with ScribeClient(address, timeout=120) as client:
        response = client.transcribe(recording, TranscribeOptions(language="en"))
        print("transcript:", response.transcript.strip())
        print("srt:", render(response, "srt").splitlines()[1])
        with wave.open(live) as wav:
            rate, pcm = wav.getframerate(), wav.readframes(wav.getnframes())
        step = rate // 10 * 2
        chunks = (pcm[i : i + step] for i in range(0, len(pcm), step))
        for streamed in client.stream(chunks, StreamConfig(sample_rate_hertz=rate)):
            for result in streamed.results:
                if result.is_final:
                    print("final:", result.alternatives[0].transcript.strip())
    """
)


@pytest.fixture(scope="module")
def client_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh virtualenv with `pip install ./clients/python` and nothing else."""
    home = tmp_path_factory.mktemp("client_venv")
    venv.create(home / "venv", with_pip=True)
    python = home / "venv" / "bin" / "python"
    installed = subprocess.run(
        [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", str(ROOT / "clients" / "python")],
        capture_output=True,
        text=True,
        timeout=600,
        env=_clean_env(),
    )
    assert installed.returncode == 0, installed.stdout + installed.stderr
    return python


def _clean_env() -> dict[str, str]:
    # Nothing from this checkout or the server's virtualenv may leak into the client's environment.
    return {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}


def run_in(python: Path, cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(python), *args], capture_output=True, text=True, timeout=180, cwd=cwd, env=_clean_env())


def test_the_client_environment_has_nothing_of_the_server(client_venv: Path, tmp_path: Path) -> None:
    probe = (
        "import importlib.util, json;"
        "print(json.dumps({m: importlib.util.find_spec(m) is not None for m in"
        " ('scribe_client', 'grpc', 'google.protobuf', 'grpc_status',"
        " 'faster_whisper', 'ctranslate2', 'av', 'services', 'supervisor', 'numpy', 'transcription')}))"
    )
    found = run_in(client_venv, tmp_path, "-c", probe)
    assert found.returncode == 0, found.stderr
    assert found.stdout.strip() == (
        '{"scribe_client": true, "grpc": true, "google.protobuf": true, "grpc_status": true, '
        '"faster_whisper": false, "ctranslate2": false, "av": false, "services": false, "supervisor": false, '
        '"numpy": false, "transcription": false}'
    )
    # The stubs were generated into the package when it was built, and import without the server's sys.path.
    stubs = run_in(
        client_venv, tmp_path, "-c", "from scribe_client.gen import transcription_pb2 as pb; print(pb.__file__)"
    )
    assert stubs.returncode == 0, stubs.stderr
    assert "site-packages/scribe_client/gen/transcription/v1/transcription_pb2.py" in stubs.stdout


def test_a_script_transcribes_a_file_and_streams_one(serving_fleet: Fleet, client_venv: Path, tmp_path: Path) -> None:
    script = tmp_path / "call_scribe.py"
    script.write_text(SCRIPT)
    result = run_in(
        client_venv,
        tmp_path,
        str(script),
        serving_fleet.address,
        str(DATA / "speech_short.flac"),
        str(DATA / "speech_long.wav"),
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    transcript = next(line for line in lines if line.startswith("transcript:"))
    assert "lazy" in words_of(transcript), result.stdout
    assert any(line.startswith("srt: 00:00:00,") for line in lines), result.stdout
    finals = " ".join(line.removeprefix("final:") for line in lines if line.startswith("final:"))
    assert words_of(finals)[:2] == ["good", "morning"] and "coat" in words_of(finals), result.stdout


def test_the_cli_shows_status_and_asks_for_the_cli_extra(
    serving_fleet: Fleet, client_venv: Path, tmp_path: Path
) -> None:
    command = client_venv.parent / "scribe-client"
    status = subprocess.run(
        [str(command), "status", "--address", serving_fleet.address],
        capture_output=True,
        text=True,
        timeout=60,
        env=_clean_env(),
        cwd=tmp_path,
    )
    assert status.returncode == 0, status.stderr
    assert status.stdout.startswith("WORKER") and "gpu_worker_01" in status.stdout, status.stdout
    # Progress bars need rich, which only the [cli] extra installs.
    bare = subprocess.run(
        [str(command), "transcribe", str(DATA / "speech_short.wav"), "--address", serving_fleet.address],
        capture_output=True,
        text=True,
        timeout=60,
        env=_clean_env(),
        cwd=tmp_path,
    )
    assert bare.returncode == 2 and "pip install 'scribe-grpc-client[cli]'" in bare.stderr, bare.stderr
