"""Every command of the docs' "grpcurl recipes" page (docs/calling/grpcurl.md), run as written against the live fleet.

The page is the source: its `$ ` lines (with their `\\` continuations) are run by bash from the
repository root, with the documented address and socket path swapped for the test fleet's. Each
recipe is checked by its heading, and a recipe without a check (or a check without a recipe) fails.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from collections.abc import Callable
from dataclasses import dataclass

import pytest

from tests.conftest import BIN, Fleet
from tests.helpers import ROOT, words_of

DOC_ADDRESS = "127.0.0.1:50051"
DOC_SOCKET = "run/worker-00.sock"


@dataclass(frozen=True)
class Ran:
    command: str
    returncode: int
    stdout: str
    stderr: str


def recipes(page: str) -> dict[str, list[str]]:
    """Heading -> the commands of its first console block, on the grpcurl recipes page."""
    section = page.split("# grpcurl recipes", 1)[1]
    found: dict[str, list[str]] = {}
    for part in section.split("\n## ")[1:]:
        title = part.split("\n", 1)[0].strip()
        block = re.search(r"```console\n(.*?)```", part, re.S)
        assert block, f"recipe {title!r} has no console block"
        commands: list[str] = []
        lines = iter(block.group(1).splitlines())
        for line in lines:
            if not line.startswith("$ "):
                continue
            command = line[2:]
            while command.endswith("\\"):
                command = command[:-1] + next(lines).strip()
            commands.append(command)
        assert commands, f"recipe {title!r} has no $ command"
        found[title] = commands
    return found


def json_objects(text: str) -> list[dict]:
    """grpcurl prints a server stream as JSON objects one after the other."""
    decoder, objects, at = json.JSONDecoder(), [], 0
    while at < len(text.strip()):
        while text[at].isspace():
            at += 1
        obj, at = decoder.raw_decode(text, at)
        objects.append(obj)
    return objects


def check_list(runs: list[Ran]) -> None:
    names = runs[0].stdout.split()
    for service in ("transcription.v1.TranscriptionService", "transcription.v1.FleetService", "grpc.health.v1.Health"):
        assert service in names


def check_describe(runs: list[Ran]) -> None:
    method, message = runs
    assert "rpc Transcribe (" in method.stdout and "// Transcribes a whole recording" in method.stdout
    assert "message RecognitionOptions" in message.stdout
    assert message.stdout.count("//") >= 7  # the message and each of its six fields


def check_health(runs: list[Ran]) -> None:
    assert all(json.loads(r.stdout)["status"] == "SERVING" for r in runs)


def check_transcribe(runs: list[Ran]) -> None:
    response = json.loads(runs[0].stdout)
    assert "lazy" in words_of(response["transcript"]) and response["workerId"].startswith("gpu_worker_")
    assert response["segments"][0]["words"][0]["startOffset"].endswith("s")


def check_progress(runs: list[Ran]) -> None:
    reports = json_objects(runs[0].stdout)
    assert "segments" not in reports[0] and reports[0]["audioDuration"].startswith("11.9")
    assert any("segments" in r and r.get("progressPercent", 0) < 100 for r in reports)
    assert reports[-1]["progressPercent"] == 100
    assert words_of(reports[-1]["result"]["transcript"])[:2] == ["good", "morning"]


def check_workers(runs: list[Ran]) -> None:
    workers = json.loads(runs[0].stdout)["workers"]
    assert [w["name"] for w in workers] == ["gpu_worker_00", "gpu_worker_01"]
    assert all(w["routingState"] == "ROUTING_STATE_SERVING" for w in workers)


def check_worker_health(runs: list[Ran]) -> None:
    health = json.loads(runs[0].stdout)["health"]
    assert health["workerId"] == "gpu_worker_00" and health["status"] == "WORKER_STATUS_SERVING"
    assert health["deviceKind"] == "DEVICE_KIND_CPU" and "vramTotalBytes" not in health


def check_config(runs: list[Ran]) -> None:
    config = json.loads(runs[0].stdout)
    assert config["model"] == "tiny.en (embedded)" and config["workerCount"] == 2


def check_bad_request(runs: list[Ran]) -> None:
    (run,) = runs
    assert run.returncode != 0
    assert "InvalidArgument" in run.stderr and '"reason":"UNDECODABLE_AUDIO"' in run.stderr


CHECKS: dict[str, Callable[[list[Ran]], None]] = {
    "List the services": check_list,
    "Describe a method or a message": check_describe,
    "Health check": check_health,
    "Transcribe a file from the shell": check_transcribe,
    "Transcribe a long file with progress": check_progress,
    "List the workers": check_workers,
    "Ask one worker for its health": check_worker_health,
    "Model, device and limits": check_config,
    "A bad request": check_bad_request,
}
FAILS = {"A bad request"}
RECIPES = recipes((ROOT / "docs" / "calling" / "grpcurl.md").read_text())


def test_every_recipe_has_a_check() -> None:
    assert set(RECIPES) == set(CHECKS)


@pytest.mark.parametrize("title", sorted(RECIPES))
def test_documented_grpcurl_recipe(serving_fleet: Fleet, title: str) -> None:
    env = dict(serving_fleet.env, PATH=f"{BIN}{os.pathsep}{os.environ['PATH']}")
    runs = []
    for command in RECIPES[title]:
        assert command.startswith(("grpcurl ", "{ ")), command
        live = command.replace(DOC_ADDRESS, serving_fleet.address).replace(
            DOC_SOCKET, str(serving_fleet.run_dir / "worker-00.sock")
        )
        done = subprocess.run(
            ["bash", "-o", "pipefail", "-c", live], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
        )
        if title not in FAILS:
            assert done.returncode == 0, f"{command}\n{done.stderr}"
        runs.append(Ran(command, done.returncode, done.stdout, done.stderr))
    CHECKS[title](runs)
