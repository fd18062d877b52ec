"""dns:///NAME:PORT entries of STATIC_WORKERS, resolved by a real dnsmasq on loopback.

The whole path (hosts joining, leaving and dying under a running gateway) is tests/test_hosts.py's; this
file covers the parts on their own: the target syntax, what an answer turns into, and that a failing or
empty answer never empties the fleet.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from services.common.config import ConfigError, Settings
from services.gateway.routing.discovery import DnsDiscovery, DnsTarget
from services.gateway.routing.registry import Registry
from services.gen import fleet_pb2, worker_pb2
from tests.dnsmasq import Dnsmasq

NAME = "scribe-worker.test"


@pytest.fixture(scope="module")
def dnsmasq(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Dnsmasq]:
    server = Dnsmasq(tmp_path_factory.mktemp("dnsmasq"))
    try:
        yield server
    finally:
        server.stop()


def test_dns_targets_are_accepted_beside_host_port_and_unix(tmp_path: Path) -> None:
    env = {"SCRIBE_ENV_FILE": str(tmp_path / "none"), "STATIC_WORKERS": "dns:///scribe-worker:50061,10.0.0.5:1,unix:/x"}
    assert Settings.from_env(env).static_workers == ("dns:///scribe-worker:50061", "10.0.0.5:1", "unix:/x")
    with pytest.raises(ConfigError, match=r"STATIC_WORKERS: .*dns:///NAME:PORT"):
        Settings.from_env({**env, "STATIC_WORKERS": "dns:scribe-worker"})


def test_target_names_the_server_to_ask() -> None:
    plain = DnsTarget.parse("dns:///scribe-worker.ns.svc.cluster.local:50061")
    assert (plain.name, plain.port, plain.server) == ("scribe-worker.ns.svc.cluster.local", 50061, "")
    asked = DnsTarget.parse("dns://127.0.0.1:5353/w.test:7000")
    assert (asked.name, asked.port, asked.server, asked.server_port) == ("w.test", 7000, "127.0.0.1", 5353)
    assert DnsTarget.parse("dns://10.0.0.10/w.test:7000").server_port == 53


def test_every_address_is_a_host_with_its_workers_on_consecutive_ports(dnsmasq: Dnsmasq) -> None:
    discovery = DnsDiscovery([f"dns://{dnsmasq.server}/{NAME}:7000"], refresh_s=1, per_host=2)
    dnsmasq.set_hosts(NAME, ["10.9.0.12", "10.9.0.3"])

    async def resolved() -> list[tuple[str, str, str]]:
        for _ in range(50):  # dnsmasq re-reads its hosts file on SIGHUP, a moment after the signal
            await discovery.refresh()
            found = [(e.address, e.host, e.source) for e in discovery.endpoints()]
            if len(found) == 4:
                return found
            await asyncio.sleep(0.1)
        return found

    source = f"dns://{dnsmasq.server}/{NAME}:7000"
    assert asyncio.run(resolved()) == [
        ("10.9.0.3:7000", "10.9.0.3", source),
        ("10.9.0.3:7001", "10.9.0.3", source),
        ("10.9.0.12:7000", "10.9.0.12", source),
        ("10.9.0.12:7001", "10.9.0.12", source),
    ]


def test_failed_or_empty_answers_keep_the_last_good_one(dnsmasq: Dnsmasq, tmp_path: Path) -> None:
    discovery = DnsDiscovery([f"dns://{dnsmasq.server}/{NAME}:7000"], refresh_s=0.5, per_host=1)

    async def scenario() -> tuple[list[str], list[str], list[str]]:
        dnsmasq.set_hosts(NAME, ["10.9.0.7"])
        for _ in range(50):  # until dnsmasq has re-read its hosts file (the previous test left other hosts)
            await discovery.refresh()
            if [e.address for e in discovery.endpoints()] == ["10.9.0.7:7000"]:
                break
            await asyncio.sleep(0.1)
        first = [e.address for e in discovery.endpoints()]
        dnsmasq.set_hosts(NAME, [])  # the name is gone (dnsmasq, forwarding nothing, answers REFUSED)
        for _ in range(50):
            await discovery.refresh()
            if discovery.errors():
                break
            await asyncio.sleep(0.1)
        assert "REFUSED" in str(discovery.errors()), discovery.errors()
        after_empty = [e.address for e in discovery.endpoints()]
        # No server on that port at all: the query times out.
        dead = DnsDiscovery([f"dns://127.0.0.1:9/{NAME}:7000"], refresh_s=0.5, per_host=1)
        dead._entries[0].hosts = ["10.9.0.8"]
        await dead.refresh()
        assert dead.errors(), "a query nobody answers must count as a failure"
        return first, after_empty, [e.address for e in dead.endpoints()]

    first, after_empty, after_timeout = asyncio.run(scenario())
    assert first == ["10.9.0.7:7000"]
    assert after_empty == first
    assert after_timeout == ["10.9.0.8:7000"]
    assert f"query[A] {NAME}" in dnsmasq.logs()


def test_a_retired_worker_takes_no_work_and_says_why() -> None:
    registry = Registry(channel_options=[])
    handle = registry.ensure("10.9.0.7:7000", "10.9.0.7:7000", host="10.9.0.7", source="dns:///w:7000")
    handle.record_health(worker_pb2.WorkerHealth(status=worker_pb2.WORKER_STATUS_SERVING))
    assert registry.pick() is handle
    handle.retire("host 10.9.0.7 left the answer of dns:///w:7000")
    assert registry.pick() is None and handle.retiring.is_set()
    listed = handle.to_pb()
    assert listed.routing_state == fleet_pb2.ROUTING_STATE_NOT_SERVING
    assert listed.routing_reason.startswith("draining: host 10.9.0.7 left")
    assert (listed.host, listed.source) == ("10.9.0.7", "dns:///w:7000")
    handle.rejoin()
    assert registry.pick() is handle and not handle.retiring.is_set()
