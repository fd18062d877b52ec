"""Worker process: one model, one unix socket, health and reflection, graceful drain on SIGTERM.

Only light modules are imported here: a worker started `--unloaded` (after WORKER_IDLE_UNLOAD_S, see
`lifecycle`) loads the engine and its libraries with its first call.
"""

from __future__ import annotations

import argparse
import asyncio
import faulthandler
import os
import signal
import sys
from pathlib import Path

import grpc
import structlog
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from services.common.auth import TokenAuthInterceptor, TokenSet, configured_tokens
from services.common.config import ConfigError, Settings
from services.common.logging import configure_logging
from services.common.probes import start_probe_server
from services.common.reflection import enable_reflection
from services.common.tls import bind
from services.gen import transcription_pb2, transcription_pb2_grpc, worker_pb2, worker_pb2_grpc
from services.gpu_worker.device import DeviceProbe, process_rss_bytes
from services.gpu_worker.guard import DeviceGuard
from services.gpu_worker.health import WorkerServicer
from services.gpu_worker.lifecycle import LoadingTranscription, ModelHolder, watch_idle
from services.gpu_worker.runtime import WorkerRuntime

log = structlog.get_logger()
SERVICES = (
    transcription_pb2.DESCRIPTOR.services_by_name["TranscriptionService"].full_name,
    worker_pb2.DESCRIPTOR.services_by_name["WorkerService"].full_name,
)


def server_options(settings: Settings) -> list[tuple[str, int]]:
    return [
        ("grpc.max_receive_message_length", settings.max_message_bytes),
        ("grpc.max_send_message_length", settings.max_message_bytes),
    ]


async def serve(settings: Settings, process_num: int, listen: str | None, unloaded: bool = False) -> bool:
    """Serve until SIGTERM (returns False) or until the model was idle WORKER_IDLE_UNLOAD_S (returns True:
    the caller re-executes the process unloaded)."""
    worker_id = f"gpu_worker_{process_num:02d}"
    kind = None
    if not unloaded:
        from services.gpu_worker.engines.choice import choose as choose_engine

        kind = choose_engine(settings)  # a missing optional extra is a configuration error, said at once
    guard = DeviceGuard(min_free_bytes=settings.min_free_vram_mb * 2**20)
    runtime = WorkerRuntime(worker_id, process_num, settings.worker_concurrency, guard)
    holder = ModelHolder(settings, runtime, kind)
    interceptors = []
    if listen:
        # On TCP anyone who reaches the port could skip the gateway's checks: the worker checks the token
        # itself. On its unix socket the folder's mode 0700 keeps everyone but this user out.
        tokens = configured_tokens(settings)
        if not tokens:
            raise ConfigError(
                "a worker on TCP (--listen) needs AUTH_TOKENS or AUTH_TOKENS_FILE, with the token the gateway sends"
            )
        interceptors.append(TokenAuthInterceptor(TokenSet(tokens)))
    server = grpc.aio.server(options=server_options(settings), interceptors=interceptors)
    health_servicer = health.aio.HealthServicer()
    transcription_pb2_grpc.add_TranscriptionServiceServicer_to_server(LoadingTranscription(holder), server)
    probe = DeviceProbe(str(settings.worker_device_id), enabled=False)
    worker_servicer = WorkerServicer(runtime, probe, settings, holder)
    worker_pb2_grpc.add_WorkerServiceServicer_to_server(worker_servicer, server)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    enable_reflection(server, (*SERVICES, health.SERVICE_NAME))

    if listen:
        address = listen
        bind(server, address, settings, "--listen")
    else:
        socket_path = settings.worker_socket(process_num)
        socket_path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        check_private_dir(socket_path.parent)
        socket_path.unlink(missing_ok=True)  # left behind by a worker that was killed
        address = f"unix://{socket_path}"
        server.add_insecure_port(address)
    await server.start()
    await _set_health(health_servicer, health_pb2.HealthCheckResponse.NOT_SERVING)
    probe_server = await start_probe_server(health_servicer, settings.worker_probe_address(process_num))
    log.info("worker_listening", address=address, model=holder.name, unloaded=unloaded)

    stop = asyncio.Event()
    unload = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    if not unloaded:
        try:
            await holder.ready()
        except Exception:
            log.error("model_load_failed", model=settings.whisper_model, engine=kind, error=str(holder.failed))
            await server.stop(0)
            sys.exit(3)  # supervisord retries, then marks the worker FATAL with this log as the reason
    runtime.set_status(worker_pb2.WORKER_STATUS_SERVING)
    await _set_health(health_servicer, health_pb2.HealthCheckResponse.SERVING)
    engine = runtime.transcriber
    log.info(
        "worker_serving",
        model=holder.name,
        model_state=worker_pb2.ModelState.Name(holder.state),
        engine=engine.info.name if engine else "",
        device=engine.info.device if engine else "",
        compute_type=engine.info.compute_type if engine else "",
        batch_size=engine.scheduler.max_batch if engine else settings.worker_batch_size,
        concurrency=settings.worker_concurrency,
    )

    tasks = [asyncio.create_task(watch_device(runtime, worker_servicer, guard, holder))]
    if settings.worker_idle_unload_s > 0:
        tasks.append(asyncio.create_task(watch_idle(holder, unload)))
    stopping = asyncio.create_task(stop.wait())
    unloading = asyncio.create_task(unload.wait())
    broken = asyncio.create_task(holder.broken.wait())
    await asyncio.wait({stopping, unloading, broken}, return_when=asyncio.FIRST_COMPLETED)
    for task in (*tasks, stopping, unloading, broken):
        task.cancel()
    if holder.broken.is_set() and not stop.is_set():
        # Loading the model again for a call failed (the calls got UNAVAILABLE and went elsewhere).
        log.error("model_load_failed", model=settings.whisper_model, error=str(holder.failed))
        await server.stop(1)
        sys.exit(3)
    if not stop.is_set():
        # Idle: nothing in flight (the gateway saw NOT_SERVING for two polls). Close the socket; the
        # caller re-executes the process without the model.
        await server.stop(grace=1)
        if probe_server is not None:
            await probe_server.stop(0)
        if not listen:
            settings.worker_socket(process_num).unlink(missing_ok=True)
        log.info("worker_unloaded", model=holder.name, rss_bytes=process_rss_bytes())
        return True
    # Drain: refuse new work first (health Watch sees NOT_SERVING at once), hand streams back to the
    # gateway, then let in-flight unary calls end.
    runtime.set_status(worker_pb2.WORKER_STATUS_DRAINING, "shutting down")
    runtime.draining.set()
    await _set_health(health_servicer, health_pb2.HealthCheckResponse.NOT_SERVING)
    log.info("worker_draining", active=runtime.active, streams=runtime.streams)
    await server.stop(grace=25)
    if probe_server is not None:
        await probe_server.stop(0)
    runtime.shutdown()
    if not listen:
        settings.worker_socket(process_num).unlink(missing_ok=True)
    log.info("worker_stopped")
    return False


async def watch_device(
    runtime: WorkerRuntime, servicer: WorkerServicer, guard: DeviceGuard, holder: ModelHolder
) -> None:
    """Every second: NOT_SERVING while the device is short of memory or recently faulted."""
    while True:
        await asyncio.sleep(1.0)
        if holder.probe is not None:
            servicer.probe = holder.probe
        if servicer.probe.available or guard.last_error:
            reason = guard.verdict(servicer.probe.read(runtime.pid))
            if reason != runtime.guard_reason:
                log.warning("device_guard", reason=reason or "recovered")
            runtime.apply_guard(reason)


def check_private_dir(folder: Path) -> None:
    """Whoever can reach a worker's socket skips the gateway's token and limits: only this user may."""
    mode = folder.stat().st_mode & 0o777
    if mode & 0o077:
        raise ConfigError(
            f"RUN_DIR {str(folder)!r} has mode {mode:04o}, so other users could reach the worker sockets in it: "
            f"run `chmod 700 {folder}` (scribe start creates it that way) or point RUN_DIR at a private folder"
        )


async def _set_health(servicer: health.aio.HealthServicer, status: int) -> None:
    for name in ("", *SERVICES):
        await servicer.set(name, status)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m services.gpu_worker", description=__doc__)
    parser.add_argument("--process-num", type=int, default=int(os.environ.get("SCRIBE_PROCESS_NUM", "0")))
    parser.add_argument("--listen", help="serve on HOST:PORT instead of the unix socket (remote workers)")
    parser.add_argument(
        "--unloaded", action="store_true", help="start without the model; the first call loads it (idle unload)"
    )
    args = parser.parse_args(argv)
    # A crash in native code (CTranslate2, CUDA, PyAV) leaves the Python stacks of every thread in the log.
    faulthandler.enable(all_threads=True)
    try:
        settings = Settings.from_env()
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        sys.exit(2)
    configure_logging(
        settings.log_level,
        settings.log_format,
        service="gpu_worker",
        worker=f"gpu_worker_{args.process_num:02d}",
    )
    Path(settings.run_dir).mkdir(mode=0o700, parents=True, exist_ok=True)
    nice = settings.model_nice(settings.whisper_model)
    if nice and not args.unloaded:  # an unloaded worker re-executed itself: it is niced already
        os.nice(nice)  # WORKER_MODEL_NICE: a bulk model leaves the cores to the live one first
    try:
        # A worker host (WORKER_LISTEN) serves each of its workers on TCP, on ports one apart.
        listen = args.listen or settings.worker_tcp(args.process_num) or None
        unload = asyncio.run(serve(settings, args.process_num, listen, args.unloaded))
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        sys.exit(2)
    if unload:
        # The same pid, so supervisord sees the worker still RUNNING; the new image has no model in memory.
        command = [sys.executable, "-m", "services.gpu_worker", "--process-num", str(args.process_num), "--unloaded"]
        if args.listen:
            command += ["--listen", args.listen]
        sys.stdout.flush()
        sys.stderr.flush()
        os.execv(sys.executable, command)


if __name__ == "__main__":
    main()
