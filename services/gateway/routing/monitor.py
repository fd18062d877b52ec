"""Keeps the registry current: supervisord's process table, static endpoints and DNS, and each worker's health.

A worker whose host leaves the DNS answer is drained as a `supervisorctl stop` drains one: it takes no
new work, its streams move (the relays watch its `retiring` event), and the calls in flight on it end
there; then it is dropped. Its process is not ours to stop.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

import grpc
import structlog

from services.common.config import Settings
from services.gateway.routing.discovery import DnsDiscovery
from services.gateway.routing.registry import UNSUPERVISED, Registry, WorkerHandle, health_check_timeout
from services.gateway.routing.supervisor import ProcessInfo, SupervisorClient, group_model_slug, worker_process_num
from services.gen import worker_pb2

log = structlog.get_logger()


class FleetMonitor:
    """Polls every `health_interval_s`; `on_change(serving_count)` runs when that count changes."""

    def __init__(
        self,
        registry: Registry,
        settings: Settings,
        supervisor: SupervisorClient | None,
        on_change: Callable[[int], Awaitable[None]],
        after_refresh: Callable[[], Awaitable[None]] | None = None,
        dns: DnsDiscovery | None = None,
        slugs: dict[str, str] | None = None,
    ) -> None:
        self._registry = registry
        self._settings = settings
        self._supervisor = supervisor
        self._on_change = on_change
        self._after_refresh = after_refresh
        self._dns = dns
        # a model's group name part -> the model ("" for the single model's gpu_worker group), for workers
        # that have not reported their model yet
        self._slugs = {"": settings.default_model, **(slugs or {})}
        self._serving: int | None = None
        self._routing: dict[str, int] = {}
        self._table: asyncio.Future[list[ProcessInfo]] | None = None  # a process-table read still under way

    async def run(self) -> None:
        while True:
            try:
                await self.refresh()
            except Exception:
                log.exception("fleet_refresh_failed")
            await self._pause()

    async def _pause(self) -> None:
        """One health interval, cut short by a fresh DNS answer so a new host is checked at once."""
        if self._dns is None:
            await asyncio.sleep(self._settings.health_interval_s)
            return
        self._dns.refreshed.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._dns.refreshed.wait(), self._settings.health_interval_s)

    async def refresh(self) -> None:
        await self._discover()
        await asyncio.gather(*(self._check(h) for h in list(self._registry.workers.values())))
        for handle in self._registry.sorted():
            state, reason = handle.routing
            if self._routing.get(handle.name) != state:
                self._routing[handle.name] = state
                log.info("worker_routing", worker=handle.name, serving=handle.serving, reason=reason)
        serving = sum(1 for w in self._registry.workers.values() if w.serving)
        if serving != self._serving:
            self._serving = serving
            await self._on_change(serving)
        if self._after_refresh is not None:
            await self._after_refresh()

    async def _discover(self) -> None:
        for endpoint in self._settings.static_workers:
            if not endpoint.startswith("dns:"):
                host = "" if endpoint.startswith("unix:") else endpoint.rpartition(":")[0].strip("[]")
                self._registry.ensure(endpoint, endpoint, host=host, source="STATIC_WORKERS")
        if self._dns is not None:
            await self._discover_dns(self._dns)
        if self._supervisor is None:
            return
        processes = await self._process_table(self._supervisor)
        if processes is None:
            return
        seen = set()
        for proc in processes:
            num = worker_process_num(proc.name)
            if num is None:
                continue
            tcp = self._settings.worker_tcp(num).replace("0.0.0.0:", "127.0.0.1:")
            address = tcp or f"unix://{self._settings.worker_socket(num)}"
            handle = self._registry.ensure(proc.name, address)
            handle.supervisor_state, handle.supervisor_pid = proc.state, proc.pid
            group = group_model_slug(proc.group)
            if group is not None:
                handle.group_model = self._slugs.get(group, group)
            seen.add(proc.name)
        for name, handle in list(self._registry.workers.items()):
            if handle.supervisor_state != UNSUPERVISED and name not in seen:
                log.info("worker_removed", worker=name)  # numprocs lowered and `supervisorctl update` run
                await self._registry.remove(name)

    async def _process_table(self, supervisor: SupervisorClient) -> list[ProcessInfo] | None:
        """supervisord's worker table, or None (keep the last one) when it fails or is slow to answer.

        The XML-RPC transport has no timeout: a supervisord that hangs without closing its socket would
        otherwise hold up every health check, and each worker's report would go stale and leave routing.
        A read that is late goes on in its thread and is picked up by a later poll; only one runs at a time.
        """
        if self._table is None:
            self._table = asyncio.ensure_future(asyncio.to_thread(supervisor.workers))
        done, _ = await asyncio.wait({self._table}, timeout=health_check_timeout(self._settings.health_interval_s))
        if not done:
            log.warning("supervisor_slow", url=supervisor.server_url)
            return None
        table, self._table = self._table, None
        try:
            return table.result()
        except Exception as exc:  # supervisord restarting: keep the last known table
            log.warning("supervisor_unreachable", url=supervisor.server_url, error=str(exc))
            return None

    async def _discover_dns(self, dns: DnsDiscovery) -> None:
        found = {ep.address: ep for ep in dns.endpoints()}
        for ep in found.values():
            handle = self._registry.ensure(ep.address, ep.address, host=ep.host, source=ep.source)
            if handle.retired:
                log.info("worker_rejoined", worker=handle.name, source=ep.source)
                handle.rejoin()
        for name, handle in list(self._registry.workers.items()):
            if not handle.source.startswith("dns:") or name in found:
                continue
            if not handle.retired:
                log.info("worker_draining", worker=name, host=handle.host, source=handle.source)
                handle.retire(f"host {handle.host} left the answer of {handle.source}")
            if handle.idle:
                log.info("worker_removed", worker=name, source=handle.source)
                await self._registry.remove(name)

    async def _check(self, handle: WorkerHandle) -> None:
        if handle.supervisor_state not in ("RUNNING", UNSUPERVISED):
            handle.health_error = ""
            return
        try:
            response = await handle.worker.GetWorkerHealth(
                worker_pb2.GetWorkerHealthRequest(), timeout=health_check_timeout(self._settings.health_interval_s)
            )
        except grpc.aio.AioRpcError as exc:
            handle.health_error = f"health check failed: {exc.code().name}"
            return
        handle.record_health(response.health)
