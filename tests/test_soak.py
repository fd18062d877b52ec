"""The short soak: `make soak` (bench/soak.py) for about two minutes on the tests' fleet.

Two live streams (real read speech and synthetic speech, at twice real time) and two unary clients loop
through the Python client library while workers are killed with SIGKILL, sent SIGTERM, scaled up and
down and restarted as a group. Every call must succeed, every stream with exactly the words of its
undisturbed run, and the gateway must come out as it went in.
"""

from __future__ import annotations

import pytest

from bench.soak import run_soak
from tests.conftest import Fleet

SECONDS = 90


@pytest.mark.heavy  # about 2 minutes of mixed traffic: make test-heavy
def test_short_soak_loses_no_call_and_no_word(serving_fleet: Fleet) -> None:
    report = run_soak(serving_fleet, SECONDS, streams=2, clients=2, workers=2, interval_s=3.0, pace=2.0)
    assert not report.problems, "\n".join(report.problems)
    assert report.failed_calls == 0 and report.lost_words == 0
    assert report.equal_streams == len(report.stream_runs)
    assert report.chaos.get("kill9", 0) >= 5 and report.chaos.get("restart_group", 0) >= 1, report.chaos
    assert len(report.stream_runs) >= 4 and len(report.unary_runs) >= 10
    assert report.queue_at_end == "empty"
