"""Jobs from every client: `scribe jobs ...`, `scribe batch` (run twice, and after being killed), the HTTP
face's /v1/jobs, and the figures in Prometheus, `scribe status` and the status page."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import srt

from services.gen import jobs_pb2 as jpb
from tests.conftest import BIN, Fleet, Process, spawn
from tests.helpers import DATA, ROOT, clip, free_port, port_open, speech_recording, wait_for
from tests.jobs_support import client, job_gateway, wait_state


@pytest.fixture(scope="module")
def served(fleet: Fleet, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Process, str, str]]:
    """A job gateway with Prometheus on, and an HTTP server (status page on) in front of it."""
    folder = tmp_path_factory.mktemp("jobs-clients")
    metrics = f"127.0.0.1:{free_port()}"
    gateway = job_gateway(fleet, folder / "gateway", METRICS_ADDRESS=metrics)
    address = f"127.0.0.1:{free_port()}"
    server = spawn(
        fleet, folder / "http", "services.http_api", {"GATEWAY_ADDRESS": gateway.address, "HTTP_ADDRESS": address}
    )
    try:
        assert wait_for(lambda: port_open(address), 30, 0.1), server.logs()
        yield gateway, address, metrics
    finally:
        server.stop()
        gateway.stop()


def scribe(fleet: Fleet, gateway: Process, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return fleet.scribe(*args, "--address", gateway.address, check=check)


@pytest.mark.jobs_heavy
def test_scribe_jobs_commands(fleet: Fleet, served: tuple[Process, str, str], tmp_path: Path) -> None:
    gateway = served[0]
    made = scribe(
        fleet,
        gateway,
        "jobs",
        "submit",
        str(DATA / "speech_short.wav"),
        "--format",
        "srt",
        "--label",
        "via=cli",
        "--wait",
    )
    job_id = made.stdout.strip()
    assert job_id.startswith("job_") and "succeeded" in made.stderr
    listed = scribe(fleet, gateway, "jobs", "list", "--label", "via=cli", "--state", "succeeded").stdout
    assert job_id in listed and "speech_short.wav" in listed and "via=cli" in listed
    got = json.loads(scribe(fleet, gateway, "jobs", "get", job_id, "--json").stdout)
    assert got["state"] == "JOB_STATE_SUCCEEDED" and got["spec"]["labels"] == {"via": "cli"}
    watched = scribe(fleet, gateway, "jobs", "watch", job_id)
    assert watched.returncode == 0 and "succeeded" in watched.stdout.splitlines()[-1]
    out = tmp_path / "short.srt"
    scribe(fleet, gateway, "jobs", "results", job_id, "--format", "srt", "--output", str(out))
    assert "fox" in next(iter(srt.parse(out.read_text()))).content.lower()

    long_id = scribe(fleet, gateway, "jobs", "submit", "--path", str(DATA / "speech_paragraph.ogg")).stdout.strip()
    cancelled = scribe(fleet, gateway, "jobs", "cancel", long_id).stdout
    assert long_id in cancelled
    assert scribe(fleet, gateway, "jobs", "watch", long_id, check=False).returncode in (0, 1)
    scribe(fleet, gateway, "jobs", "delete", long_id)
    missing = scribe(fleet, gateway, "jobs", "get", long_id, check=False)
    assert missing.returncode == 1 and "NOT_FOUND" in missing.stderr


def _batch(fleet: Fleet, gateway: Process, inputs: Path, out: Path) -> list[str]:
    return [
        str(BIN / "scribe"),
        "--config",
        str(fleet.conf),
        "batch",
        str(inputs),
        "--out",
        str(out),
        "--format",
        "srt",
        "--address",
        gateway.address,
    ]


@pytest.mark.jobs_heavy
def test_scribe_batch_resumes_and_writes_each_output_once(
    fleet: Fleet, served: tuple[Process, str, str], tmp_path: Path
) -> None:
    gateway = served[0]
    inputs = tmp_path / "in"
    (inputs / "sub").mkdir(parents=True)
    for i in range(4):
        shutil.copy(DATA / "speech_short.wav", inputs / f"short{i}.wav")
    (inputs / "sub" / "long.wav").write_bytes(speech_recording(70))
    shutil.copy(DATA / "speech_short.flac", inputs / "sub" / "short0.flac")
    out = tmp_path / "out"
    # The first run is killed once every file is submitted (its state file lists them all).
    first = subprocess.Popen(
        _batch(fleet, gateway, inputs, out), env=fleet.env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )

    def submitted() -> bool:
        try:
            return len(json.loads((out / ".scribe-batch.json").read_text())["jobs"]) == 6
        except (OSError, ValueError, KeyError):
            return False

    assert wait_for(submitted, 120, 0.05)
    os.kill(first.pid, signal.SIGKILL)
    first.wait(10)
    second = subprocess.run(
        _batch(fleet, gateway, inputs, out), env=fleet.env, cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert second.returncode == 0, second.stderr
    outputs = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.srt"))
    assert outputs == ["short0.srt", "short1.srt", "short2.srt", "short3.srt", "sub/long.srt", "sub/short0.srt"]
    assert all(list(srt.parse(p.read_text())) for p in out.rglob("*.srt"))
    label = hashlib.sha256(str(out.resolve()).encode()).hexdigest()[:16]  # as scribe batch labels its jobs
    with client(gateway, None) as c:
        mine = list(c.jobs.list(labels={"scribe-batch": label}))
    # Killed and run again, and still one job per file.
    assert sorted(j.spec.display_name for j in mine) == sorted(p.name for p in inputs.rglob("*.*"))
    # Run again: everything is done, nothing is written or submitted again.
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("*.srt")}
    third = subprocess.run(
        _batch(fleet, gateway, inputs, out), env=fleet.env, cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert third.returncode == 0 and "0 written, 6 already done" in third.stderr, third.stderr
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*.srt")} == stamps


def test_http_jobs_routes(served: tuple[Process, str, str]) -> None:
    base = f"http://{served[1]}/v1/jobs"
    with httpx.Client(timeout=120) as http:
        made = http.post(
            base,
            files={"file": ("short.wav", clip("speech_short.wav"), "audio/wav")},
            data={"formats": "srt,txt", "label": ["via=http", "n=1"]},
        )
        assert made.status_code == 201, made.text
        job = made.json()
        assert (
            job["state"] == "queued"
            and job["display_name"] == "short.wav"
            and job["labels"] == {"via": "http", "n": "1"}
        )

        def finished() -> bool:
            return http.get(f"{base}/{job['id']}").json()["state"] == "succeeded"

        assert wait_for(finished, 120, 0.2)
        listed = http.get(base, params={"label": "via=http", "state": "succeeded"}).json()
        assert [j["id"] for j in listed["data"]] == [job["id"]] and listed["object"] == "list"
        text = http.get(f"{base}/{job['id']}/result", params={"format": "srt"})
        assert text.headers["content-type"].startswith("application/x-subrip") and "fox" in text.text.lower()
        whole = http.get(f"{base}/{job['id']}/result").json()
        assert "fox" in whole["text"].lower() and whole["segments"]
        # Refusals in OpenAI's error shape.
        assert http.get(f"{base}/job_missing").status_code == 404
        assert http.post(base, data={"formats": "srt"}).status_code == 400
        assert http.get(base, params={"state": "sleeping"}).status_code == 400
        long = http.post(base, files={"file": ("long.wav", speech_recording(120), "audio/wav")}).json()
        early = http.get(f"{base}/{long['id']}/result")
        assert early.status_code == 409 and early.json()["error"]["code"] == "job_not_succeeded"
        cancelled = http.post(f"{base}/{long['id']}/cancel").json()
        assert cancelled["state"] == "cancelled"
        gone = http.delete(f"{base}/{long['id']}")
        assert gone.json()["deleted"] is True and http.get(f"{base}/{long['id']}").status_code == 404


def test_jobs_in_prometheus_scribe_status_and_the_status_page(fleet: Fleet, served: tuple[Process, str, str]) -> None:
    gateway, address, metrics = served
    with client(gateway, None) as c:
        job = c.jobs.submit(clip("speech_short.wav"))
        wait_state(c, job.id, {jpb.JOB_STATE_SUCCEEDED})

    def scraped() -> dict[str, float]:
        text = urllib.request.urlopen(f"http://{metrics}/metrics", timeout=5).read().decode()
        return {
            line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line and line[0] != "#"
        }

    assert wait_for(lambda: scraped().get('scribe_jobs{state="succeeded"}', 0) >= 1, 10, 0.2)
    samples = scraped()
    assert "scribe_jobs_queue_age_seconds" in samples and samples["scribe_job_pieces_total"] >= 1
    assert samples["scribe_jobs_finished_per_second"] > 0
    status = scribe(fleet, gateway, "status").stdout
    assert "jobs " in status and "succeeded" in status
    with httpx.Client(timeout=10) as http:

        def board() -> dict[str, float]:
            return dict(http.get(f"http://{address}/api/status").json().get("jobs", {}))

        # The page samples ListWorkers every 2 s: the sample before the gateway's figures counted the job
        # shows it not yet succeeded.
        assert wait_for(lambda: board().get("succeeded", 0) >= 1, 10, 0.5), board()
        shown = board()
    # The page itself, rendered by a real browser (its script fetches /api/status and fills the cards).
    browser = shutil.which("chromium")
    assert browser, "Debian's chromium is missing: `make test` installs it (apt-get install chromium)"
    command = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=4000", "--dump-dom"]
    dom = subprocess.run(
        [*command, f"http://{address}/"], capture_output=True, text=True, timeout=90, check=True
    ).stdout
    assert f'id="jobs"><b>{shown["queued"]} / {shown["running"]} / {shown["failed"]}</b>' in dom, (shown, dom)
    assert 'id="jobs-age"><b>0 · ' in dom, dom  # nothing queued: the oldest queued job waited 0 s
