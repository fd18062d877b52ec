"""`scribe`: start and stop the fleet, show its status, transcribe files."""

from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import grpc
import numpy as np
from dotenv import set_key
from scribe_client.cli.main import (
    Pcm,
    add_job_parsers,
    add_security_arguments,
    add_transcribe_parser,
    client_for,
    run_transcribe,
    security_from_args,
)
from scribe_client.cli.status import format_table, print_status
from scribe_client.credentials import ClientSecurity, CredentialsError

import services
from services.cli import groups, scale
from services.cli.config_cmd import config_rows
from services.common.audio import SAMPLE_RATE, AudioError, decode_container
from services.common.auth import configured_tokens
from services.common.capacity import CapacityError
from services.common.config import ConfigError, Settings
from services.common.models.assembly import ModelFilesError
from services.common.models.catalogue import served_name
from services.common.tls import transport_mode
from services.gateway.routing.supervisor import SupervisorClient, check_supervisor_conf
from services.gen import fleet_pb2

HOME = Path(services.__file__).resolve().parent.parent
DEFAULT_CONF = HOME / "supervisord.conf"


def control_url(conf: Path) -> str:
    """supervisord.conf keeps its control socket in run/ beside itself."""
    return f"unix://{conf.resolve().parent / 'run' / 'supervisor.sock'}"


def supervisor_env(settings: Settings) -> dict[str, str]:
    """The environment supervisord.conf expands, with the scaling mode resolved into numbers. With several
    models (WORKER_MODELS) [program:gpu_worker] runs no process: each model has its group (groups.py)."""
    env = dict(os.environ)
    env.update(settings.as_env())
    env.update(
        SCRIBE_HOME=str(HOME),
        SCRIBE_PYTHON=sys.executable,
        RUN_DIR=str(settings.run_dir),
        GPU_SCALE_WORKERS=str(min(64, settings.worker_count)),
        GPU_SCALE_DEVICE_ID=str(settings.worker_device_id),
        SCRIBE_WORKER_PROCS="0" if settings.multi_model else str(settings.worker_count),
    )
    return env


def env_file() -> Path:
    """SCRIBE_ENV_FILE, else .env in the current folder, else the repository's .env."""
    if os.environ.get("SCRIBE_ENV_FILE"):
        return Path(os.environ["SCRIBE_ENV_FILE"])
    return Path(".env") if Path(".env").is_file() else HOME / ".env"


def _settings(overrides: dict[str, str] | None = None) -> Settings:
    env = dict(os.environ)
    env.update(overrides or {})
    try:
        return Settings.from_env(env, env_file=env_file())
    except ConfigError as exc:
        sys.exit(f"configuration error: {exc}")


def _supervisord_running(conf: Path) -> bool:
    try:
        SupervisorClient(control_url(conf)).state()
        return True
    except (OSError, Exception):
        return False


def cmd_start(args: argparse.Namespace) -> int:
    overrides = {}
    if args.gpu_scale:
        overrides["GPU_SCALE_ENABLED"] = "true"
    if args.workers:
        overrides["GPU_SCALE_WORKERS"] = str(args.workers)
    settings = _settings(overrides)
    conf = Path(args.config)
    try:
        # Refused here rather than by a gateway that supervisord would restart until it gives up.
        transport_mode(settings.gateway_address, settings, "GATEWAY_ADDRESS")
        if settings.http_address:
            transport_mode(settings.http_address, settings, "HTTP_ADDRESS")
        configured_tokens(settings)
        check_supervisor_conf(conf)
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    if _supervisord_running(conf):
        print(f"scribe is already running ({control_url(conf)}); `scribe status` shows it", file=sys.stderr)
        return 1
    counts: list[tuple[str, int]] = []
    try:
        if settings.multi_model:
            counts = scale.resolve_model_counts(settings)
            for name, _ in counts:
                scale.catalogue_folder(settings, name)  # join `base` once here, not in each worker at once
        else:
            count = scale.resolve_count(settings, settings.gpu_scale_workers if settings.gpu_scale_enabled else 1)
            scale.catalogue_folder(settings, settings.whisper_model)
    except (CapacityError, ConfigError, ModelFilesError) as exc:
        print(f"scribe: {exc}", file=sys.stderr)
        return 2
    if counts:
        if sum(c for _, c in counts) == 0:
            print("scribe: WORKER_MODELS gives every model 0 workers", file=sys.stderr)
            return 2
        settings = settings.replace(worker_models=tuple(f"{name}:{c}" for name, c in counts))
    else:
        if settings.gpu_scale_enabled and settings.gpu_scale_workers == 0:
            print(f"scribe: {scale.auto_reason(settings, count)}", file=sys.stderr)
        settings = settings.replace(gpu_scale_workers=count)
    # Extra groups from an earlier `scribe scale` are folded into numprocs now.
    for extra in groups.scaled_dir(conf).glob("*.conf"):
        extra.unlink()
    if counts:
        groups.write_model_groups(conf, counts)
    for folder in (settings.run_dir, settings.run_dir / "logs", conf.resolve().parent / "run"):
        folder.mkdir(parents=True, exist_ok=True)
        folder.chmod(0o700)  # worker sockets and the control socket: only this user may reach them
    supervisord = shutil.which("supervisord", path=str(Path(sys.executable).parent)) or "supervisord"
    if counts:
        listed = ", ".join(f"{served_name(name)} x{c}" for name, c in counts)
        mode = f"models {listed} (default {settings.default_model}) on device {settings.worker_device_id}"
    elif settings.gpu_scale_enabled:
        mode = f"{settings.worker_count} workers on device {settings.worker_device_id}, model {settings.whisper_model}"
    else:
        mode = f"1 default worker on device {settings.worker_device_id}, model {settings.whisper_model}"
    http = f", HTTP on {settings.http_address}" if settings.http_address else ""
    print(f"scribe: gateway on {settings.gateway_address}{http}, {mode}", file=sys.stderr)
    env = supervisor_env(settings)
    if args.foreground:
        os.execve(supervisord, [supervisord, "-n", "-c", str(conf)], env)
    subprocess.run([supervisord, "-c", str(conf)], env=env, check=True)
    return wait_ready(settings.gateway_address, settings.worker_count, args.wait, _security(args, settings))


def _security(args: argparse.Namespace, settings: Settings | None = None) -> ClientSecurity:
    """--tls-* and --token, else SCRIBE_TLS_* and SCRIBE_TOKEN, else, for this host's own gateway only, its
    first AUTH_TOKENS entry (a server's token is never sent to another address)."""
    security = security_from_args(args)
    settings = settings or _settings()
    if security.token is None and getattr(args, "address", None) in (None, settings.gateway_address):
        try:
            local = configured_tokens(settings)
        except ConfigError:
            local = ()
        if local:
            security = dataclasses.replace(security, token=local[0])
    return security


def wait_ready(address: str, workers: int, timeout: float, security: ClientSecurity | None = None) -> int:
    deadline = time.monotonic() + timeout
    with client_for(address, security) as client:
        while time.monotonic() < deadline:
            try:
                listed = client.list_workers(timeout=1).workers
                serving = sum(1 for w in listed if w.routing_state == fleet_pb2.ROUTING_STATE_SERVING)
                if serving >= workers:
                    print(f"scribe: {serving} workers serving on {address}", file=sys.stderr)
                    return 0
            except grpc.RpcError:
                pass
            time.sleep(0.3)
    print(
        f"scribe: not all {workers} workers were serving after {timeout:g} s; see `scribe status`",
        file=sys.stderr,
    )
    return 1


def cmd_scale(args: argparse.Namespace) -> int:
    conf = Path(args.config)
    if not _supervisord_running(conf):
        print(
            "scribe is not running: set GPU_SCALE_WORKERS or WORKER_MODELS in .env and `scribe start`", file=sys.stderr
        )
        return 1
    settings = _settings()
    try:
        targets = scale.parse_targets(args.workers, settings)
    except ConfigError as exc:
        print(f"scribe: {exc}", file=sys.stderr)
        return 2
    single = not settings.multi_model and all(served_name(m) == settings.default_model for m, _ in targets)
    path = env_file()
    path.touch(exist_ok=True)
    for model, requested in targets:
        name = served_name(model)
        running = scale.running_counts(conf, settings)
        mine = running.get(name, 0)
        others = sum(running.values()) - mine
        try:
            scale.catalogue_folder(settings, model)
            # Workers already running hold their memory: only the added ones must fit in what is free.
            target = (
                scale.resolve_count(
                    settings.replace(whisper_model=model),
                    max(0, requested),
                    running=min(mine, requested if requested > 0 else mine),
                    others=others,
                )
                if requested != 0
                else 0
            )
        except (CapacityError, ConfigError, ModelFilesError) as exc:
            print(f"scribe: {exc}", file=sys.stderr)
            return 2
        if single:
            steps = scale.scale(conf, target)
            set_key(str(path), "GPU_SCALE_WORKERS", str(max(1, target)), quote_mode="never")
            if target > 1:
                set_key(str(path), "GPU_SCALE_ENABLED", "true", quote_mode="never")
            written = f"GPU_SCALE_WORKERS={max(1, target)}"
        else:
            steps = scale.scale_model(conf, settings, model, target)
            counts = dict(settings.model_counts()) if settings.multi_model else {settings.whisper_model: mine}
            counts = {served_name(m): c for m, c in counts.items()}
            counts[name] = target
            value = ",".join(f"{m}:{'auto' if c is None else c}" for m, c in counts.items())
            set_key(str(path), "WORKER_MODELS", value, quote_mode="never")
            settings = settings.replace(worker_models=tuple(value.split(",")))
            written = f"WORKER_MODELS={value}"
        print(
            f"scribe: {target} workers{'' if single else f' of {name}'} (started {len(steps.start) + len(steps.add)}, "
            f"drained and stopped {len(steps.stop)}); {written} written to {path}",
            file=sys.stderr,
        )
    return 0


def cmd_stop(args: argparse.Namespace) -> int:
    conf = Path(args.config)
    if not _supervisord_running(conf):
        print("scribe is not running", file=sys.stderr)
        return 0
    client = SupervisorClient(control_url(conf))
    client.shutdown()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and _supervisord_running(conf):
        time.sleep(0.2)
    print("scribe: stopped", file=sys.stderr)
    return 0


def cmd_config(args: argparse.Namespace) -> int:
    """The effective settings, as the gateway and workers would read them here; secrets masked."""
    print(format_table(config_rows(_settings(), os.environ, env_file())))
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    address = args.address or _settings().gateway_address
    try:
        with client_for(address, _security(args)) as client:
            listed = client.list_workers(timeout=3)
    except grpc.RpcError as exc:
        print(f"gateway {address} did not answer ({exc.code().name}); supervisord says:", file=sys.stderr)
        try:
            for p in SupervisorClient(control_url(Path(args.config))).processes():
                print(f"{p.full_name:32} {p.state:10} {p.description}")
        except OSError as err:
            print(f"supervisord is not running either ({err})", file=sys.stderr)
        return 1
    print_status(listed)
    return 0


def decoded_pcm(path: Path) -> Pcm:
    """Any file FFmpeg decodes, as 16 kHz mono LINEAR16 (scribe-client alone streams WAV files only)."""
    try:
        samples = decode_container(path.read_bytes(), max_seconds=24 * 3600)
    except AudioError as exc:
        raise ValueError(str(exc)) from None
    return Pcm((np.clip(samples, -1.0, 1.0) * 32767).astype("<i2").tobytes(), SAMPLE_RATE)


def cmd_transcribe(args: argparse.Namespace) -> int:
    address = args.address or _settings().gateway_address
    return run_transcribe(args, address, _security(args), read_audio=decoded_pcm)


def cmd_jobs(args: argparse.Namespace) -> int:
    from scribe_client.cli.jobs import run_jobs

    address = args.address or _settings().gateway_address
    with client_for(address, _security(args)) as client:
        return run_jobs(client, args)


def cmd_batch(args: argparse.Namespace) -> int:
    from scribe_client.cli.batch import run_batch

    address = args.address or _settings().gateway_address
    with client_for(address, _security(args)) as client:
        return run_batch(client, args)


def cmd_model_convert(args: argparse.Namespace) -> int:
    """A CTranslate2 Whisper model as a transformers folder, for the torch engine or any transformers code."""
    from services.gpu_worker.engines.choice import TORCH_EXTRA, torch_installed

    if not torch_installed():
        print(f"scribe model convert needs PyTorch and transformers: {TORCH_EXTRA}", file=sys.stderr)
        return 2
    from services.gpu_worker.engines.torch_models import convert

    try:
        out = convert(args.source, Path(args.out))
    except ValueError as exc:
        print(f"scribe model convert: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {out} (WHISPER_ENGINE=torch WHISPER_MODEL={out})")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="scribe", description="gRPC speech transcription on many workers")
    parser.add_argument("--config", default=str(DEFAULT_CONF), help="supervisord.conf (default: the repository's)")
    sub = parser.add_subparsers(dest="command", required=True)
    security = argparse.ArgumentParser(add_help=False)
    add_security_arguments(security, "bearer token (default SCRIBE_TOKEN, else this host's AUTH_TOKENS)")

    start = sub.add_parser("start", parents=[security], help="start supervisord with the gateway and the workers")
    start.add_argument(
        "--gpu-scale",
        action="store_true",
        help="scaled mode: GPU_SCALE_WORKERS workers on GPU_SCALE_DEVICE_ID",
    )
    start.add_argument("--workers", type=int, help="override GPU_SCALE_WORKERS")
    start.add_argument("--foreground", action="store_true", help="run supervisord in the foreground (make run)")
    start.add_argument("--wait", type=float, default=120, help="seconds to wait for the workers to serve")
    start.set_defaults(func=cmd_start)

    sc = sub.add_parser("scale", help="change the number of running workers live (drains those it stops)")
    sc.add_argument(
        "workers",
        nargs="+",
        help="number of workers of the default model, or MODEL=N (e.g. base=2, base=0); N may be auto (as many as "
        "fit on the device)",
    )
    sc.set_defaults(func=cmd_scale)

    stop = sub.add_parser("stop", help="stop the workers, the gateway and supervisord")
    stop.set_defaults(func=cmd_stop)

    status = sub.add_parser(
        "status", parents=[security], help="table of workers: supervisor state, routing, device, memory, load"
    )
    status.add_argument("--address", help="gateway address (default GATEWAY_ADDRESS)")
    status.set_defaults(func=cmd_status)

    cfg = sub.add_parser("config", help="the effective settings (environment over .env), secrets masked")
    cfg.set_defaults(func=cmd_config)

    model = sub.add_parser("model", help="model files").add_subparsers(dest="model_command", required=True)
    convert = model.add_parser("convert", help="write a CTranslate2 Whisper model as a transformers folder")
    convert.add_argument("out", help="folder to write (created)")
    convert.add_argument(
        "--source", default="embedded", help="`embedded` (default) or a faster-whisper folder with a float model.bin"
    )
    convert.set_defaults(func=cmd_model_convert)

    tr = add_transcribe_parser(sub, security, "stream the file as live audio and print live captions")
    tr.set_defaults(func=cmd_transcribe)
    add_job_parsers(sub, security, cmd_jobs, cmd_batch)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    try:
        sys.exit(args.func(args))
    except CredentialsError as exc:
        sys.exit(f"scribe: {exc}")


if __name__ == "__main__":
    main()
