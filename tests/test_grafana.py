"""The Grafana dashboard in deploy/ asks only for metrics the gateway really serves (scraped from the
live fleet), so a renamed metric cannot leave a panel silently empty."""

from __future__ import annotations

import json
import re
import urllib.request
from pathlib import Path

from services.gen import transcription_pb2 as pb
from tests.conftest import Fleet
from tests.helpers import ROOT, clip

DASHBOARD = ROOT / "deploy" / "grafana" / "scribe-fleet.json"
SUFFIXES = {"counter": ("",), "gauge": ("",), "histogram": ("_bucket", "_sum", "_count"), "summary": ("_sum", "_count")}


def served_names(exposition: str) -> set[str]:
    """Every series name a query can use, from the `# TYPE` lines (series with no sample yet included)."""
    names: set[str] = set()
    for name, kind in re.findall(r"^# TYPE (\S+) (\S+)$", exposition, re.MULTILINE):
        names.update(name + suffix for suffix in SUFFIXES.get(kind, ("",)))
    return names


def dashboard_names(path: Path) -> set[str]:
    panels = json.loads(path.read_text())["panels"]
    exprs = [t["expr"] for p in panels for t in p["targets"]]
    return {m for e in exprs for m in re.findall(r"\bscribe_[a-z0-9_]+", e)}


def test_dashboard_uses_only_metrics_the_gateway_serves(serving_fleet: Fleet) -> None:
    # One Transcribe first, so every per-method family has been touched at least once.
    serving_fleet.transcription.Transcribe(pb.TranscribeRequest(audio_content=clip("speech_short.flac")), timeout=60)
    exposition = urllib.request.urlopen(f"http://{serving_fleet.metrics}/metrics", timeout=10).read().decode()
    served = served_names(exposition)
    used = dashboard_names(DASHBOARD)
    assert {"scribe_request_duration_seconds_bucket", "scribe_queue_depth", "scribe_worker_vram_used_bytes"} <= used
    assert used <= served, f"not served by the gateway: {sorted(used - served)}"
    assert re.search(r'^scribe_request_duration_seconds_bucket\{[^}]*method="Transcribe"', exposition, re.MULTILINE)


def test_dashboard_panels_are_well_formed() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    assert [v["name"] for v in dashboard["templating"]["list"]] == ["datasource"]
    for panel in dashboard["panels"]:
        assert panel["datasource"]["uid"] == "${datasource}" and panel["targets"], panel["title"]
