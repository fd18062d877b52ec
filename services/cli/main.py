"""`scribe`: start and stop the fleet, show its status, transcribe files."""

from __future__ import annotations

import argparse
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

import services
from services.common.audio import SAMPLE_RATE, AudioError, decode_container
from services.common.config import ConfigError, Settings
from services.gateway.supervisor import SupervisorClient
from services.gen import fleet_pb2, fleet_pb2_grpc, transcription_pb2_grpc, worker_pb2
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


def _settings(overrides: dict[str, str] | None = None) -> Settings:
    env = dict(os.environ)
    env.update(overrides or {})
    try:
        return Settings.from_env(env)
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
    if _supervisord_running(conf):
        print(f"scribe is already running ({control_url(conf)}); `scribe status` shows it", file=sys.stderr)
        return 1
    for folder in (settings.run_dir, settings.run_dir / "logs", conf.resolve().parent / "run"):
        folder.mkdir(parents=True, exist_ok=True)
        folder.chmod(0o700)  # worker sockets and the control socket: only this user may reach them
    supervisord = shutil.which("supervisord", path=str(Path(sys.executable).parent)) or "supervisord"
    mode = (
        f"{settings.worker_count} workers on device {settings.worker_device_id}"
        if settings.gpu_scale_enabled
        else f"1 default worker on device {settings.worker_device_id}"
    )
    print(
        f"scribe: gateway on {settings.gateway_address}, {mode}, model {settings.whisper_model}",
        file=sys.stderr,
    )
    env = supervisor_env(settings)
    if args.foreground:
        os.execve(supervisord, [supervisord, "-n", "-c", str(conf)], env)
    subprocess.run([supervisord, "-c", str(conf)], env=env, check=True)
    return wait_ready(settings.gateway_address, settings.worker_count, args.wait)


def wait_ready(address: str, workers: int, timeout: float) -> int:
    deadline = time.monotonic() + timeout
    with grpc.insecure_channel(address) as channel:
        fleet = fleet_pb2_grpc.FleetServiceStub(channel)
        while time.monotonic() < deadline:
            try:
                listed = fleet.ListWorkers(fleet_pb2.ListWorkersRequest(), timeout=1).workers
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
        with grpc.insecure_channel(address) as channel:
            listed = fleet_pb2_grpc.FleetServiceStub(channel).ListWorkers(fleet_pb2.ListWorkersRequest(), timeout=3)
    except grpc.RpcError as exc:
        print(f"gateway {address} did not answer ({exc.code().name}); supervisord says:", file=sys.stderr)
        try:
            for p in SupervisorClient(control_url(Path(args.config))).processes():
                print(f"{p.full_name:32} {p.state:10} {p.description}")
        except OSError as err:
            print(f"supervisord is not running either ({err})", file=sys.stderr)
        return 1
    print(format_table(status_rows(list(listed.workers))))
    return 0


def _stub(address: str) -> tuple[grpc.Channel, transcription_pb2_grpc.TranscriptionServiceStub]:
    channel = grpc.insecure_channel(
        address,
        options=[("grpc.max_send_message_length", 2**31 - 1), ("grpc.max_receive_message_length", 2**31 - 1)],
    )
    return channel, transcription_pb2_grpc.TranscriptionServiceStub(channel)


def _options(args: argparse.Namespace) -> pb.RecognitionOptions:
    return pb.RecognitionOptions(
        language_code=args.language or "",
        beam_size=args.beam_size,
        enable_word_time_offsets=args.words,
        vad_filter=args.vad,
        initial_prompt=args.prompt or "",
    )


def pcm_chunks(samples: np.ndarray, chunk_s: float) -> Iterator[bytes]:
    pcm = (np.clip(samples, -1.0, 1.0) * 32767).astype("<i2").tobytes()
    step = max(2, int(chunk_s * SAMPLE_RATE) * 2)
    for i in range(0, len(pcm), step):
        yield pcm[i : i + step]


def stream_requests(
    samples: np.ndarray, options: pb.RecognitionOptions, chunk_s: float, speed: float
) -> Iterator[pb.StreamingTranscribeRequest]:
    """Config first, then the audio paced at `speed` times real time (0: as fast as possible)."""
    yield pb.StreamingTranscribeRequest(
        streaming_config=pb.StreamingConfig(
            encoding=pb.AUDIO_ENCODING_LINEAR16,
            sample_rate_hertz=SAMPLE_RATE,
            options=options,
            interim_results=True,
            enable_voice_activity_events=True,
        )
    )
    started = time.monotonic()
    sent = 0.0
    for chunk in pcm_chunks(samples, chunk_s):
        if speed > 0:
            delay = started + sent / speed - time.monotonic()
            if delay > 0:
                time.sleep(delay)
        yield pb.StreamingTranscribeRequest(audio_content=chunk)
        sent += len(chunk) / 2 / SAMPLE_RATE


def cmd_transcribe(args: argparse.Namespace) -> int:
    address = args.address or _settings().gateway_address
    data = Path(args.file).read_bytes()
    channel, stub = _stub(address)
    try:
        if not args.stream:
            response = stub.Transcribe(
                pb.TranscribeRequest(audio_content=data, options=_options(args)), timeout=args.timeout
            )
            if args.segments:
                for s in response.segments:
                    start, end = s.start_offset.ToMilliseconds() / 1000, s.end_offset.ToMilliseconds() / 1000
                    print(f"[{start:8.2f} -> {end:8.2f}] {s.text}")
            else:
                print(response.transcript)
            print(
                f"{response.worker_id}: {response.audio_duration.ToMilliseconds() / 1000:.1f} s of audio in "
                f"{response.processing_time.ToMilliseconds() / 1000:.2f} s ({response.language_code})",
                file=sys.stderr,
            )
            return 0
        try:
            samples = decode_container(data, max_seconds=24 * 3600)
        except AudioError as exc:
            print(f"scribe: {args.file}: {exc}", file=sys.stderr)
            return 2
        return print_stream(stub.StreamingTranscribe(stream_requests(samples, _options(args), 0.1, args.speed)))
    except grpc.RpcError as exc:
        print(f"scribe: {exc.code().name}: {exc.details()}", file=sys.stderr)
        return 1
    finally:
        channel.close()


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

    start = sub.add_parser("start", help="start supervisord with the gateway and the workers")
    start.add_argument(
        "--gpu-scale",
        action="store_true",
        help="scaled mode: GPU_SCALE_WORKERS workers on GPU_SCALE_DEVICE_ID",
    )
    start.add_argument("--workers", type=int, help="override GPU_SCALE_WORKERS")
    start.add_argument("--foreground", action="store_true", help="run supervisord in the foreground (make run)")
    start.add_argument("--wait", type=float, default=120, help="seconds to wait for the workers to serve")
    start.set_defaults(func=cmd_start)

    stop = sub.add_parser("stop", help="stop the workers, the gateway and supervisord")
    stop.set_defaults(func=cmd_stop)

    status = sub.add_parser("status", help="table of workers: supervisor state, routing, device, memory, load")
    status.add_argument("--address", help="gateway address (default GATEWAY_ADDRESS)")
    status.set_defaults(func=cmd_status)

    tr = sub.add_parser("transcribe", help="transcribe an audio file through the gateway")
    tr.add_argument("file")
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
    sys.exit(args.func(args))


if __name__ == "__main__":
    main()
