"""Where each process listens, how the gateway finds workers, and what it logs."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, Field

from services.common.config.types import (
    Address,
    Endpoints,
    Flag,
    Folder,
    LogFormat,
    LogLevel,
    OptionalAddress,
    Origins,
)


class NetworkFields(BaseModel):
    """Where each process listens, how the gateway finds workers, and what it logs."""

    gateway_address: Address = Field("127.0.0.1:50051", description="Where the gateway listens.")
    run_dir: Folder = Field(
        Path("./run"), description="Worker sockets, logs (`RUN_DIR/logs/`) and supervisord's pid file."
    )
    static_workers: Endpoints = Field(
        (),
        description="Comma-separated worker endpoints on other hosts: `HOST:PORT`, `unix:PATH`, or `dns:///NAME:PORT` "
        "(every address NAME resolves to is a worker host, re-resolved every `DNS_REFRESH_S`; "
        "`dns://SERVER[:PORT]/NAME:PORT` asks that DNS server).",
    )
    dns_refresh_s: float = Field(
        5, ge=0.1, le=3600, description="How often `dns:` entries of `STATIC_WORKERS` are resolved again."
    )
    dns_workers_per_host: int = Field(
        1,
        ge=1,
        le=64,
        description="Workers on each host a `dns:` entry finds, on ports PORT, PORT+1, ...: set it to the worker "
        "hosts' `GPU_SCALE_WORKERS`.",
    )
    health_probe_address: OptionalAddress = Field(
        "",
        description="Plaintext `grpc.health.v1` only, for Kubernetes' gRPC probes (which cannot speak TLS); a "
        "worker adds its number to the port as with `WORKER_LISTEN`. Service `liveness` answers SERVING while the "
        "process runs. Empty: off.",
    )
    max_connection_age_s: float = Field(
        0,
        ge=0,
        description="The gateway closes a client connection this old to new calls (gRPC GOAWAY; calls on it "
        "finish), so clients reconnect and spread over a load balancer's gateways. `0`: never.",
    )
    worker_listen: OptionalAddress = Field(
        "",
        description="Worker host mode: worker NN serves TCP on this `HOST:PORT` with NN added to the port, instead "
        "of its unix socket (needs `AUTH_TOKENS`; TLS as for `--listen`). Empty: unix sockets in `RUN_DIR`.",
    )
    health_interval_s: float = Field(
        0.5, ge=0.05, description="How often the gateway polls supervisord and worker health."
    )
    metrics_address: OptionalAddress = Field(
        "127.0.0.1:9464", description="Prometheus metrics of the gateway. Empty turns them off."
    )
    http_address: OptionalAddress = Field(
        "127.0.0.1:8000",
        description="The HTTP server beside the gateway: OpenAI-compatible `/v1/audio/transcriptions` and the "
        "status page. Empty turns it off.",
    )
    status_page: Flag = Field(
        True,
        description="Serve the live status page at `/` and `/api/status` of `HTTP_ADDRESS` (no token needed, "
        "see Security). `false` turns it off.",
    )
    http_allowed_origins: Origins = Field(
        (),
        description="Comma-separated origins (`scheme://host[:port]`) of web pages allowed to use the HTTP API "
        "from a browser: the realtime WebSocket (`/v1/realtime`) and CORS for `/v1/*`. A page served by this "
        "server itself (`/live`) and clients that send no `Origin` (SDKs, curl) are always allowed; `*` allows "
        "every origin. Empty: only those.",
    )
    log_level: LogLevel = Field("info", description="`debug`, `info`, `warning` or `error`.")
    log_format: LogFormat = Field(
        "auto", description="`json`, `console`, or `auto` (console on a terminal, JSON otherwise)."
    )
