"""Gateway process: grpc.aio server on GATEWAY_ADDRESS, routing to the workers the monitor tracks."""

from __future__ import annotations

import asyncio
import ctypes
import faulthandler
import os
import signal
import sys

import grpc
import structlog
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from scribe_client.credentials import channel_credentials

from services.common.auth import TokenAuthInterceptor, TokenSet, configured_tokens
from services.common.config import ConfigError, Settings
from services.common.logging import configure_logging
from services.common.probes import start_probe_server
from services.common.reflection import enable_reflection
from services.common.tls import bind
from services.gateway.jobs.bootstrap import SERVICE as JOB_SERVICE
from services.gateway.jobs.bootstrap import Jobs
from services.gateway.metrics import GatewayStats
from services.gateway.recordings import upload
from services.gateway.routing.discovery import DnsDiscovery
from services.gateway.routing.dispatch import Dispatcher
from services.gateway.routing.models import FleetModels
from services.gateway.routing.monitor import FleetMonitor
from services.gateway.routing.registry import Registry
from services.gateway.routing.supervisor import SupervisorClient
from services.gateway.servicer import FleetServicer, TranscriptionProxy
from services.gen import fleet_pb2, fleet_pb2_grpc, transcription_pb2, transcription_pb2_grpc

log = structlog.get_logger()
_M_MMAP_THRESHOLD, _M_ARENA_MAX = -3, -8  # mallopt parameters, from glibc's malloc.h
SERVICES = (
    transcription_pb2.DESCRIPTOR.services_by_name["TranscriptionService"].full_name,
    fleet_pb2.DESCRIPTOR.services_by_name["FleetService"].full_name,
    JOB_SERVICE,
)


async def serve(settings: Settings, supervisor_url: str | None) -> None:
    options = [
        ("grpc.max_receive_message_length", settings.max_message_bytes),
        ("grpc.max_send_message_length", settings.max_message_bytes),
    ]
    server_options = list(options)
    if settings.max_connection_age_s:
        # GOAWAY after this age: clients open a new connection, which a Service may send to another gateway.
        # No grace limit: a stream on the old connection runs to its end.
        server_options.append(("grpc.max_connection_age_ms", int(settings.max_connection_age_s * 1000)))
    tokens = configured_tokens(settings)
    # Remote workers (STATIC_WORKERS on TCP) are given the first token, so they must accept it too.
    worker_tls = channel_credentials(settings.worker_tls_ca_file) if settings.worker_tls_ca_file else None
    worker_options: list[tuple[str, int | str]] = list(options)
    if settings.worker_tls_server_name:
        # Pods found through DNS are dialled by IP; one certificate for the Service's name serves them all.
        worker_options.append(("grpc.ssl_target_name_override", settings.worker_tls_server_name))
    registry = Registry(
        channel_options=worker_options,
        worker_token=tokens[0] if tokens else None,
        tcp_credentials=worker_tls,
        health_interval_s=settings.health_interval_s,
    )
    interceptors = [TokenAuthInterceptor(TokenSet(tokens))] if tokens else []
    server = grpc.aio.server(options=server_options, interceptors=interceptors)
    dispatcher = Dispatcher(registry, settings.gateway_queue_size, settings.stream_failover_wait_s)
    models = FleetModels(settings, registry)
    stats = GatewayStats(registry, dispatcher, models)
    health_servicer = health.aio.HealthServicer()
    transcription_pb2_grpc.add_TranscriptionServiceServicer_to_server(
        TranscriptionProxy(registry, dispatcher, stats, settings, models), server
    )
    fleet_pb2_grpc.add_FleetServiceServicer_to_server(FleetServicer(registry, stats, models), server)
    jobs = Jobs(settings, registry, dispatcher, models, stats.observe)
    jobs.add_to(server)
    stats.prometheus.register(jobs.metrics)
    stats.jobs = jobs.metrics.to_pb
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    enable_reflection(server, (*SERVICES, health.SERVICE_NAME))

    async def on_change(serving: int) -> None:
        # Probes see the gateway as SERVING only while at least one worker can take work.
        status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        for name in ("", *SERVICES):
            await health_servicer.set(name, status)
        log.info("fleet_serving", serving_workers=serving)

    upload.remove_leftovers(settings.run_dir)
    supervisor = SupervisorClient(supervisor_url) if supervisor_url else None
    dns_targets = [t for t in settings.static_workers if t.startswith("dns:")]
    dns = DnsDiscovery(dns_targets, settings.dns_refresh_s, settings.dns_workers_per_host) if dns_targets else None
    monitor = FleetMonitor(
        registry, settings, supervisor, on_change, after_refresh=dispatcher.notify, dns=dns, slugs=models.slugs
    )
    await on_change(0)
    if settings.metrics_address:
        stats.serve(settings.metrics_address)
    transport = bind(server, settings.gateway_address, settings, "GATEWAY_ADDRESS")
    await server.start()
    probe = await start_probe_server(health_servicer, settings.health_probe_address)
    log.info(
        "gateway_listening",
        address=settings.gateway_address,
        transport=transport,
        tokens=len(tokens),
        metrics=settings.metrics_address,
        supervisor=supervisor_url,
        static=settings.static_workers,
    )
    monitor_task = asyncio.create_task(monitor.run())
    jobs.start()
    dns_task = asyncio.create_task(dns.run()) if dns is not None else None

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await health_servicer.enter_graceful_shutdown()
    await jobs.stop()  # first: its runs give their jobs back to the queue while the workers still answer
    await server.stop(grace=20)
    if probe is not None:
        await probe.stop(0)
    monitor_task.cancel()
    if dns_task is not None:
        dns_task.cancel()
    for name in list(registry.workers):
        await registry.remove(name)
    log.info("gateway_stopped")


def _return_freed_memory() -> None:
    """Make glibc give large buffers back to the system as soon as they are freed.

    Upload chunks and recording pieces are megabytes each and come and go all the time. With glibc's
    defaults the first free raises the mmap threshold, later buffers land in per-thread arenas that are
    never trimmed, and the gateway's RSS grows to several times what it holds (measured over an
    hour-long upload with 180 s pieces: +250 MiB with the defaults, +50 MiB with these settings). A fixed
    128 KiB threshold maps each large buffer on its own, and two arenas bound the rest.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return  # not glibc: nothing to tune
    libc.mallopt(_M_MMAP_THRESHOLD, 128 * 1024)
    libc.mallopt(_M_ARENA_MAX, 2)


def main() -> None:
    _return_freed_memory()
    # A crash in native code (grpc core) leaves the Python stacks of every thread in the log.
    faulthandler.enable(all_threads=True)
    try:
        settings = Settings.from_env()
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        sys.exit(2)
    configure_logging(settings.log_level, settings.log_format, service="gateway")
    # supervisord tells its children where its socket is; run by hand, the gateway uses static workers only.
    try:
        asyncio.run(serve(settings, os.environ.get("SUPERVISOR_SERVER_URL")))
    except ConfigError as exc:  # TLS files or tokens that only turn out bad when read
        print(f"configuration error: {exc}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
