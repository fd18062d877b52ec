"""`scribe`: start and stop the fleet, show its status, transcribe files."""

from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TextIO

import grpc
import numpy as np
from dotenv import set_key
from rich.console import Console

import services
from services.cli import scale
from services.cli.config_cmd import config_rows
from services.cli.transcribe import find_audio, output_path, transcribe_batch, transcribe_one
from services.client import FORMATS, ScribeClient, StreamConfig, TranscribeOptions
from services.common.audio import SAMPLE_RATE, AudioError, decode_container
from services.common.auth import configured_tokens
from services.common.capacity import CapacityError
from services.common.config import ConfigError, Settings
from services.common.credentials import ClientSecurity, CredentialsError
from services.common.tls import transport_mode
from services.gateway.supervisor import SupervisorClient, check_supervisor_conf
from services.gen import fleet_pb2, worker_pb2
from services.gen import transcription_pb2 as pb

HOME = Path(services.__file__).resolve().parent.parent
DEFAULT_CONF = HOME / "supervisord.conf"


def control_url(conf: Path) -> str:
    """supervisord.conf keeps its control socket in run/ beside itself."""
    return f"unix://{conf.resolve().parent / 'run' / 'supervisor.sock'}"


def supervisor_env(settings: Settings) -> dict[str, str]:
    """The environment supervisord.conf expands, with the scaling mode resolved into numbers."""
    env = dict(os.environ)
    env.update(settings.as_env())
    env.update(
        SCRIBE_HOME=str(HOME),
        SCRIBE_PYTHON=sys.executable,
        RUN_DIR=str(settings.run_dir),
        GPU_SCALE_WORKERS=str(settings.worker_count),
        GPU_SCALE_DEVICE_ID=str(settings.worker_device_id),
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
    try:
        count = scale.resolve_count(settings, settings.gpu_scale_workers if settings.gpu_scale_enabled else 1)
    except CapacityError as exc:
        print(f"scribe: {exc}", file=sys.stderr)
        return 2
    settings = settings.replace(gpu_scale_workers=count)
    # Extra groups from an earlier `scribe scale` are folded into numprocs now.
    for extra in scale.scaled_dir(conf).glob("*.conf"):
        extra.unlink()
    for folder in (settings.run_dir, settings.run_dir / "logs", conf.resolve().parent / "run"):
        folder.mkdir(parents=True, exist_ok=True)
        folder.chmod(0o700)  # worker sockets and the control socket: only this user may reach them
    supervisord = shutil.which("supervisord", path=str(Path(sys.executable).parent)) or "supervisord"
    mode = (
        f"{settings.worker_count} workers on device {settings.worker_device_id}"
        if settings.gpu_scale_enabled
        else f"1 default worker on device {settings.worker_device_id}"
    )
    http = f", HTTP on {settings.http_address}" if settings.http_address else ""
    print(
        f"scribe: gateway on {settings.gateway_address}{http}, {mode}, model {settings.whisper_model}",
        file=sys.stderr,
    )
    env = supervisor_env(settings)
    if args.foreground:
        os.execve(supervisord, [supervisord, "-n", "-c", str(conf)], env)
    subprocess.run([supervisord, "-c", str(conf)], env=env, check=True)
    return wait_ready(settings.gateway_address, settings.worker_count, args.wait, _security(args, settings))


def _security(args: argparse.Namespace, settings: Settings | None = None) -> ClientSecurity:
    """--tls-* and --token, else SCRIBE_TLS_* and SCRIBE_TOKEN, else, for this host's own gateway only, its
    first AUTH_TOKENS entry (a server's token is never sent to another address)."""
    security = ClientSecurity.from_env(
        ca_file=args.tls_ca,
        cert_file=args.tls_cert,
        key_file=args.tls_key,
        server_name=args.tls_server_name,
        token=args.token,
    )
    settings = settings or _settings()
    if security.token is None and getattr(args, "address", None) in (None, settings.gateway_address):
        try:
            local = configured_tokens(settings)
        except ConfigError:
            local = ()
        if local:
            security = dataclasses.replace(security, token=local[0])
    return security


def client_for(address: str, security: ClientSecurity | None = None) -> ScribeClient:
    """The one place the CLI makes its gateway client, with TLS and the token from `security`."""
    security = security or ClientSecurity()
    return ScribeClient(
        address, credentials=security.credentials(), token=security.token, extra_options=security.channel_options()
    )


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
        print("scribe is not running: set GPU_SCALE_WORKERS in .env and `scribe start`", file=sys.stderr)
        return 1
    settings = _settings()
    running = sum(
        1 for p in SupervisorClient(control_url(conf)).workers() if p.state in ("RUNNING", "STARTING", "BACKOFF")
    )
    requested = 0 if args.workers == "auto" else int(args.workers)
    try:
        # Workers already running hold their memory: only the added ones must fit in what is free.
        target = scale.resolve_count(settings, requested, running=min(running, requested or running))
    except CapacityError as exc:
        print(f"scribe: {exc}", file=sys.stderr)
        return 2
    steps = scale.scale(conf, target)
    path = env_file()
    path.touch(exist_ok=True)
    set_key(str(path), "GPU_SCALE_WORKERS", str(target), quote_mode="never")
    if target > 1:
        set_key(str(path), "GPU_SCALE_ENABLED", "true", quote_mode="never")
    print(
        f"scribe: {target} workers (started {len(steps.start) + len(steps.add)}, drained and stopped "
        f"{len(steps.stop)}); GPU_SCALE_WORKERS={target} written to {path}",
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


def _mib(value: int) -> str:
    return f"{value / 2**20:.0f}"


def status_rows(workers: list[fleet_pb2.Worker]) -> list[list[str]]:
    """One row per worker for `scribe status`."""
    rows = [
        [
            "WORKER",
            "SUPERVISOR",
            "ROUTING",
            "DEVICE",
            "VRAM MiB used/total",
            "RSS MiB",
            "ACTIVE",
            "STREAMS",
            "DONE",
        ]
    ]
    for w in workers:
        h = w.health
        has = w.HasField("health")
        if has and h.device_kind == worker_pb2.DEVICE_KIND_CUDA:
            device = f"cuda:{h.device_index} {h.gpu_name}".strip()
        else:
            device = "cpu" if has else "-"
        vram = (
            f"{_mib(h.vram_process_bytes if h.HasField('vram_process_bytes') else h.vram_used_bytes)}/{_mib(h.vram_total_bytes)}"
            if has and h.HasField("vram_total_bytes")
            else "-"
        )
        routing = fleet_pb2.RoutingState.Name(w.routing_state).removeprefix("ROUTING_STATE_")
        rows.append(
            [
                w.name,
                fleet_pb2.SupervisorState.Name(w.supervisor_state).removeprefix("SUPERVISOR_STATE_"),
                routing,
                device,
                vram,
                _mib(h.process_rss_bytes) if has else "-",
                str(h.active_requests) if has else "-",
                str(h.active_streams) if has else "-",
                str(h.requests_completed) if has else "-",
            ]
        )
    return rows


def format_table(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip() for row in rows)


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
    print(format_table(status_rows(list(listed.workers))))
    print(stats_line(listed.stats))
    return 0


def stats_line(stats: fleet_pb2.FleetStats) -> str:
    return (
        f"queue {stats.queued_requests}/{stats.queue_size}  streams {stats.active_streams}  "
        f"requests {stats.requests_ok} ok, {stats.requests_failed} failed  "
        f"audio {stats.audio_seconds:.1f} s  realtime factor (last minute) {stats.realtime_factor:.2f}"
    )


def cmd_config(args: argparse.Namespace) -> int:
    """The effective settings, as the gateway and workers would read them here; secrets masked."""
    print(format_table(config_rows(_settings(), os.environ, env_file())))
    return 0


def _options(args: argparse.Namespace) -> TranscribeOptions:
    return TranscribeOptions(
        language=args.language,
        beam_size=args.beam_size,
        # JSON is the format with words; the others have no place for them.
        word_timestamps=args.words or args.format == "json",
        vad_filter=args.vad,
        initial_prompt=args.prompt,
    )


def pcm_chunks(samples: np.ndarray, chunk_s: float) -> Iterator[bytes]:
    pcm = (np.clip(samples, -1.0, 1.0) * 32767).astype("<i2").tobytes()
    step = max(2, int(chunk_s * SAMPLE_RATE) * 2)
    for i in range(0, len(pcm), step):
        yield pcm[i : i + step]


def paced(chunks: Iterator[bytes], speed: float) -> Iterator[bytes]:
    """LINEAR16 chunks at `speed` times real time (0: as fast as possible), like a live source."""
    started = time.monotonic()
    sent = 0.0
    for chunk in chunks:
        if speed > 0:
            delay = started + sent / speed - time.monotonic()
            if delay > 0:
                time.sleep(delay)
        yield chunk
        sent += len(chunk) / 2 / SAMPLE_RATE


def _stream_file(client: ScribeClient, args: argparse.Namespace) -> int:
    try:
        samples = decode_container(Path(args.paths[0]).read_bytes(), max_seconds=24 * 3600)
    except AudioError as exc:
        print(f"scribe: {args.paths[0]}: {exc}", file=sys.stderr)
        return 2
    config = StreamConfig(
        sample_rate_hertz=SAMPLE_RATE, options=_options(args), interim_results=True, voice_activity_events=True
    )
    return print_stream(client.stream(paced(pcm_chunks(samples, 0.1), args.speed), config))


def cmd_transcribe(args: argparse.Namespace) -> int:
    address = args.address or _settings().gateway_address
    sources = find_audio(args.paths)
    single = len(args.paths) == 1 and not Path(args.paths[0]).is_dir()
    err = Console(stderr=True)
    if not sources:
        print(f"scribe: no audio files in {' '.join(args.paths)}", file=sys.stderr)
        return 2
    if args.jobs < 1:
        print("scribe: --jobs must be 1 or more", file=sys.stderr)
        return 2
    if args.stream and not single:
        print("scribe: --stream takes one file", file=sys.stderr)
        return 2
    if not single and args.output == "-":
        print(
            "scribe: with several files, --output names a folder (each transcript goes beside its file by default)",
            file=sys.stderr,
        )
        return 2
    fmt = args.format or "txt"
    with client_for(address, _security(args)) as client:
        try:
            if args.stream:
                return _stream_file(client, args)
            if single:
                # Plain `scribe transcribe FILE` prints the text; asking for a format writes a file.
                output = args.output or ("-" if args.format is None else None)
                destination = None if output == "-" else Path(output) if output else output_path(sources[0], fmt, None)
                return transcribe_one(
                    client, sources[0], _options(args), fmt, destination, args.segments, args.timeout, err
                )
            return transcribe_batch(client, sources, _options(args), fmt, args.output, args.jobs, args.timeout, err)
        except grpc.RpcError as exc:
            print(f"scribe: {exc.code().name}: {exc.details()}", file=sys.stderr)
            return 1
        except OSError as exc:
            print(f"scribe: {exc}", file=sys.stderr)
            return 2


_UTTERANCE_ENDS = (pb.SPEECH_EVENT_TYPE_SPEECH_ACTIVITY_END, pb.SPEECH_EVENT_TYPE_END_OF_SINGLE_UTTERANCE)


def _wrap(line: str, width: int) -> tuple[list[str], str]:
    """Whole terminal lines that `line` fills, and the rest, split at spaces."""
    done = []
    while len(line) >= width:
        cut = line.rfind(" ", 0, width)
        cut = cut if cut > 0 else width - 1
        done.append(line[:cut])
        line = line[cut:].lstrip()
    return done, line


def print_stream(responses: Iterator[pb.StreamingTranscribeResponse], out: TextIO = sys.stdout) -> int:
    """Live captions. On a terminal the interim tail is redrawn in place (dim) after the committed text,
    which stays; each utterance ends its line. Elsewhere each final result is printed as it comes."""
    tty = out.isatty()
    width = max(20, shutil.get_terminal_size().columns) if tty else 0
    line = ""
    for response in responses:
        if response.speech_event_type in _UTTERANCE_ENDS:
            if tty and line:
                out.write(f"\r\033[K{line}\n")
                out.flush()
            line = ""
            continue
        for result in response.results:
            text = result.alternatives[0].transcript if result.alternatives else ""
            if not tty:
                if result.is_final:
                    print(text, file=out, flush=True)
                continue
            if result.is_final:
                done, line = _wrap(f"{line} {text}".strip(), width)
                for full in done:
                    out.write(f"\r\033[K{full}\n")
                out.write(f"\r\033[K{line}")
            else:
                room = width - len(line) - 2
                tail = text if len(text) <= room else "…" + text[len(text) - room + 1 :]
                out.write(f"\r\033[K{line} \033[2m{tail}\033[0m" if room > 1 else f"\r\033[K{line}")
            out.flush()
    if tty and line:
        out.write(f"\r\033[K{line}\n")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="scribe", description="gRPC speech transcription on many workers")
    parser.add_argument("--config", default=str(DEFAULT_CONF), help="supervisord.conf (default: the repository's)")
    sub = parser.add_subparsers(dest="command", required=True)
    # How to reach a gateway with TLS or tokens on (flags win over SCRIBE_TLS_* and SCRIBE_TOKEN).
    security = argparse.ArgumentParser(add_help=False)
    security.add_argument("--tls-ca", help="CA file that signed the gateway's certificate (turns on TLS)")
    security.add_argument("--tls-cert", help="client certificate for mutual TLS (with --tls-key)")
    security.add_argument("--tls-key", help="key of --tls-cert")
    security.add_argument("--tls-server-name", help="name to expect in the gateway's certificate")
    security.add_argument("--token", help="bearer token (default SCRIBE_TOKEN, else this host's AUTH_TOKENS)")

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
    sc.add_argument("workers", help="number of workers, or auto (as many as fit on the device)")
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

    tr = sub.add_parser(
        "transcribe",
        parents=[security],
        help="transcribe audio files or folders through the gateway",
        description="One FILE: prints the transcript, or with --format writes FILE.<format> beside it. "
        "Several files or folders: transcribes them --jobs at a time, each transcript beside its file.",
    )
    tr.add_argument("paths", nargs="+", metavar="PATH", help="audio files, or folders to search for audio files")
    tr.add_argument("--format", choices=FORMATS, help="txt, srt, vtt, json (with words) or tsv (default txt)")
    tr.add_argument(
        "--output",
        help="one file: where to write (- for stdout); several: the folder to write into (default: beside each file)",
    )
    tr.add_argument("--jobs", type=int, default=2, help="with several files: calls at once (default 2)")
    tr.add_argument("--address", help="gateway address (default GATEWAY_ADDRESS)")
    tr.add_argument("--stream", action="store_true", help="stream the file as live audio and print live captions")
    tr.add_argument("--speed", type=float, default=1.0, help="with --stream: times real time (0 = no pacing)")
    tr.add_argument("--language", help="language code (default: detect)")
    tr.add_argument("--beam-size", type=int, default=0)
    tr.add_argument("--words", action="store_true", help="ask for word time offsets")
    tr.add_argument("--vad", action="store_true", help="skip non-speech with the VAD filter")
    tr.add_argument("--prompt", help="initial prompt")
    tr.add_argument("--segments", action="store_true", help="print segments with times")
    tr.add_argument("--timeout", type=float, default=3600)
    tr.set_defaults(func=cmd_transcribe)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    try:
        sys.exit(args.func(args))
    except CredentialsError as exc:
        sys.exit(f"scribe: {exc}")


if __name__ == "__main__":
    main()
