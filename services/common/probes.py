"""A plaintext listener with grpc.health.v1 only, for Kubernetes' native gRPC probes.

The kubelet's gRPC probe cannot use TLS, and health must not need a token; the main port may have both.
This second server shares the process's HealthServicer, so it says exactly what the main port says, and
answers nothing else: no audio and no fleet state crosses it. Service "liveness" is SERVING for as long
as the process's event loop runs, so a liveness probe does not restart a process that is only waiting
for workers or draining.
"""

from __future__ import annotations

import grpc
import structlog
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

log = structlog.get_logger()
LIVENESS = "liveness"


async def start_probe_server(servicer: health.aio.HealthServicer, address: str) -> grpc.aio.Server | None:
    """Serve `servicer` in plaintext on `address` (none when empty) and mark the process live."""
    await servicer.set(LIVENESS, health_pb2.HealthCheckResponse.SERVING)
    if not address:
        return None
    server = grpc.aio.server()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    server.add_insecure_port(address)
    await server.start()
    log.info("health_probe_listening", address=address)
    return server
