"""Routing choices: least loaded SERVING worker, ties round-robin, nothing when none serves."""

from __future__ import annotations

import pytest

from services.gateway.routing.registry import WorkerHandle, choose_least_loaded
from services.gen import fleet_pb2, worker_pb2

pytestmark = pytest.mark.fast


def handle(
    name: str, status: int = worker_pb2.WORKER_STATUS_SERVING, active: int = 0, state: str = "RUNNING"
) -> WorkerHandle:
    h = WorkerHandle(name=name, address=f"unix:///tmp/{name}.sock", channel_options=[], supervisor_state=state)
    h.record_health(worker_pb2.WorkerHealth(worker_id=name, status=status, active_requests=active))  # type: ignore[arg-type]
    return h


def test_least_loaded_wins() -> None:
    a, b = handle("a", active=2), handle("b", active=0)
    assert choose_least_loaded([a, b], 0) is b
    b.in_flight = 3  # our own in-flight count outranks the worker's last report
    assert choose_least_loaded([a, b], 0) is a


def test_ties_rotate() -> None:
    workers = [handle("a"), handle("b"), handle("c")]
    assert [choose_least_loaded(workers, t).name for t in range(4)] == ["a", "b", "c", "a"]  # type: ignore[union-attr]


def test_only_serving_workers_are_chosen() -> None:
    stopped = handle("a", state="STOPPED")
    draining = handle("b", status=worker_pb2.WORKER_STATUS_DRAINING)
    failing = handle("c")
    failing.mark_unreachable("call failed")
    assert choose_least_loaded([stopped, draining, failing], 0) is None
    assert stopped.routing == (fleet_pb2.ROUTING_STATE_UNREACHABLE, "supervisor state STOPPED")
    assert draining.routing[0] == fleet_pb2.ROUTING_STATE_NOT_SERVING
    assert "DRAINING" in draining.routing[1]


def test_static_workers_route_without_supervisor() -> None:
    static = handle("10.0.0.5:50061", state="UNSUPERVISED")
    assert choose_least_loaded([static], 0) is static
    assert static.to_pb().supervisor_state == fleet_pb2.SUPERVISOR_STATE_UNSUPERVISED
