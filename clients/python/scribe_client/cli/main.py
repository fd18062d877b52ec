"""`scribe-client`: transcribe audio through a scribe gateway, and show its workers.

    scribe-client transcribe talk.mp3 [--format srt] [--address HOST:PORT]   # a file, files or folders
    scribe-client transcribe talk.wav --stream                               # live captions
    scribe-client status                                                     # the workers at a glance

The server's `scribe` command has the same `transcribe` and `status` (built from the functions here) and
adds start, stop and scale. Progress bars need `pip install 'scribe-grpc-client[cli]'` (rich).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
import wave
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

import grpc

from scribe_client.cli.status import (  # the status table; callers import it from here
    print_status,
)
from scribe_client.credentials import ClientSecurity, CredentialsError
from scribe_client.formats import FORMATS, speaker_name
from scribe_client.gen import transcription_pb2 as pb
from scribe_client.messages import StreamConfig, TranscribeOptions
from scribe_client.sync import DEFAULT_ADDRESS, ScribeClient

#: The gateway's address when --address is not given (the variable the server's .env sets too).
ENV_ADDRESS = "GATEWAY_ADDRESS"
CHUNK_SECONDS = 0.1


@dataclass(frozen=True)
class Pcm:
    """LINEAR16 audio to stream: little-endian 16-bit samples, channels interleaved."""

    data: bytes
    sample_rate: int
    channels: int = 1


class AudioFileError(ValueError):
    """A file that cannot be streamed."""


def read_wav(path: Path) -> Pcm:
    """A 16-bit PCM WAV file as it is (the server resamples and downmixes); other files need the server's
    `scribe transcribe --stream`, which decodes any format, or a conversion to WAV first."""
    try:
        with wave.open(str(path), "rb") as wav:
            if wav.getsampwidth() != 2:
                raise AudioFileError(f"{path}: only 16-bit PCM WAV can be streamed as LINEAR16")
            return Pcm(wav.readframes(wav.getnframes()), wav.getframerate(), wav.getnchannels())
    except (wave.Error, EOFError) as exc:
        raise AudioFileError(f"{path}: not a PCM WAV file ({exc}); convert it to 16-bit WAV to stream it") from None


def pcm_chunks(audio: Pcm, chunk_s: float = CHUNK_SECONDS) -> Iterator[bytes]:
    step = max(1, int(chunk_s * audio.sample_rate)) * 2 * audio.channels
    for i in range(0, len(audio.data), step):
        yield audio.data[i : i + step]


def paced(chunks: Iterator[bytes], bytes_per_second: float, speed: float) -> Iterator[bytes]:
    """LINEAR16 chunks at `speed` times real time (0: as fast as possible), like a live source."""
    started = time.monotonic()
    sent = 0.0
    for chunk in chunks:
        if speed > 0:
            delay = started + sent / speed - time.monotonic()
            if delay > 0:
                time.sleep(delay)
        yield chunk
        sent += len(chunk) / bytes_per_second


def client_for(address: str, security: ClientSecurity | None = None) -> ScribeClient:
    """The gateway client of the CLI, with TLS and the token from `security`."""
    security = security or ClientSecurity()
    return ScribeClient(
        address, credentials=security.credentials(), token=security.token, extra_options=security.channel_options()
    )


def security_from_args(args: argparse.Namespace) -> ClientSecurity:
    """--tls-* and --token, else SCRIBE_TLS_* and SCRIBE_TOKEN."""
    return ClientSecurity.from_env(
        ca_file=args.tls_ca,
        cert_file=args.tls_cert,
        key_file=args.tls_key,
        server_name=args.tls_server_name,
        token=args.token,
    )


def known_speakers(pairs: list[str] | None) -> dict[str, str]:
    """--known-speaker NAME=FILE, repeated, as a name -> file mapping."""
    out: dict[str, str] = {}
    for pair in pairs or []:
        name, sep, path = pair.partition("=")
        if not sep or not name.strip() or not path:
            raise ValueError(f"--known-speaker takes NAME=FILE, got {pair!r}")
        out[name.strip()] = path
    return out


def transcribe_options(args: argparse.Namespace) -> TranscribeOptions:
    return TranscribeOptions(
        language=args.language,
        task="translate" if args.translate else "transcribe",
        model=args.model,
        beam_size=args.beam_size,
        # JSON is the format with words; the others have no place for them.
        word_timestamps=args.words or args.format == "json",
        vad_filter=args.vad,
        initial_prompt=args.prompt,
        speakers=args.speakers,
        min_speakers=args.min_speakers,
        max_speakers=args.max_speakers,
        known_speakers=known_speakers(args.known_speaker),
    )


def stream_file(client: ScribeClient, args: argparse.Namespace, audio: Pcm) -> int:
    config = StreamConfig(
        sample_rate_hertz=audio.sample_rate,
        channels=audio.channels,
        options=transcribe_options(args),
        interim_results=True,
        voice_activity_events=True,
    )
    chunks = paced(pcm_chunks(audio), audio.sample_rate * audio.channels * 2, args.speed)
    return print_stream(client.stream(chunks, config))


def run_transcribe(
    args: argparse.Namespace, address: str, security: ClientSecurity, read_audio: Callable[[Path], Pcm] = read_wav
) -> int:
    """`transcribe`; `read_audio` turns the file of --stream into LINEAR16."""
    try:
        from rich.console import Console

        from scribe_client.cli.transcribe import find_audio, output_path, transcribe_batch, transcribe_one
    except ImportError as exc:
        print(f"scribe: transcribe needs rich: pip install 'scribe-grpc-client[cli]' ({exc})", file=sys.stderr)
        return 2
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
    try:
        options = transcribe_options(args)
    except ValueError as exc:
        print(f"scribe: {exc}", file=sys.stderr)
        return 2
    with client_for(address, security) as client:
        try:
            if args.stream:
                try:
                    audio = read_audio(Path(args.paths[0]))
                except ValueError as exc:  # AudioFileError, or what the server's decoder raises
                    print(f"scribe: {args.paths[0]}: {exc}", file=sys.stderr)
                    return 2
                return stream_file(client, args, audio)
            if single:
                # Plain `transcribe FILE` prints the text; asking for a format writes a file.
                output = args.output or ("-" if args.format is None else None)
                destination = None if output == "-" else Path(output) if output else output_path(sources[0], fmt, None)
                return transcribe_one(client, sources[0], options, fmt, destination, args.segments, args.timeout, err)
            return transcribe_batch(client, sources, options, fmt, args.output, args.jobs, args.timeout, err)
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
            if result.speaker_label:
                text = f"[{speaker_name(result.speaker_label)}] {text}"
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


def add_security_arguments(
    parser: argparse.ArgumentParser, token_help: str = "bearer token (default SCRIBE_TOKEN)"
) -> None:
    """How to reach a gateway with TLS or tokens on (flags win over SCRIBE_TLS_* and SCRIBE_TOKEN)."""
    parser.add_argument("--tls-ca", help="CA file that signed the gateway's certificate (turns on TLS)")
    parser.add_argument("--tls-cert", help="client certificate for mutual TLS (with --tls-key)")
    parser.add_argument("--tls-key", help="key of --tls-cert")
    parser.add_argument("--tls-server-name", help="name to expect in the gateway's certificate")
    parser.add_argument("--token", help=token_help)


def add_transcribe_parser(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], security: argparse.ArgumentParser, stream_help: str
) -> argparse.ArgumentParser:
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
    tr.add_argument("--address", help=f"gateway address (default {ENV_ADDRESS})")
    tr.add_argument("--stream", action="store_true", help=stream_help)
    tr.add_argument("--speed", type=float, default=1.0, help="with --stream: times real time (0 = no pacing)")
    tr.add_argument(
        "--language", help="language code, or several separated by commas to detect among (default: detect)"
    )
    tr.add_argument("--model", help="model to decode with, e.g. tiny.en or base (default: the fleet's default)")
    tr.add_argument("--translate", action="store_true", help="translate into English (multilingual models)")
    tr.add_argument("--beam-size", type=int, default=0)
    tr.add_argument("--words", action="store_true", help="ask for word time offsets")
    tr.add_argument("--vad", action="store_true", help="skip non-speech with the VAD filter")
    tr.add_argument("--prompt", help="initial prompt")
    tr.add_argument("--segments", action="store_true", help="print segments with times")
    tr.add_argument(
        "--speakers",
        action="store_true",
        help="label who speaks: 'Speaker 1: ' before each segment (SRT, text), <v Speaker 1> in VTT, "
        '"speaker" in JSON; with --stream, on each final',
    )
    tr.add_argument("--min-speakers", type=int, default=0, help="with --speakers: at least this many (default: decide)")
    tr.add_argument("--max-speakers", type=int, default=0, help="with --speakers: at most this many (default: decide)")
    tr.add_argument(
        "--known-speaker",
        action="append",
        metavar="NAME=FILE",
        help="label the voice in FILE (2 to 30 s of that person alone) as NAME; repeat for up to 4",
    )
    tr.add_argument("--timeout", type=float, default=3600)
    return tr


def _address(args: argparse.Namespace) -> str:
    return str(args.address or os.environ.get(ENV_ADDRESS) or DEFAULT_ADDRESS)


def cmd_transcribe(args: argparse.Namespace) -> int:
    return run_transcribe(args, _address(args), security_from_args(args))


def cmd_status(args: argparse.Namespace) -> int:
    address = _address(args)
    try:
        with client_for(address, security_from_args(args)) as client:
            listed = client.list_workers(timeout=3)
    except grpc.RpcError as exc:
        print(f"scribe: gateway {address} did not answer: {exc.code().name}: {exc.details()}", file=sys.stderr)
        return 1
    print_status(listed)
    return 0


def cmd_jobs(args: argparse.Namespace) -> int:
    from scribe_client.cli.jobs import run_jobs

    with client_for(_address(args), security_from_args(args)) as client:
        return run_jobs(client, args)


def cmd_batch(args: argparse.Namespace) -> int:
    from scribe_client.cli.batch import run_batch

    with client_for(_address(args), security_from_args(args)) as client:
        return run_batch(client, args)


def add_job_parsers(
    sub: argparse._SubParsersAction[argparse.ArgumentParser],
    security: argparse.ArgumentParser,
    jobs_command: Callable[[argparse.Namespace], int],
    batch_command: Callable[[argparse.Namespace], int],
) -> None:
    """`jobs` and `batch` (scribe_client.cli.jobs and .batch; `batch` needs rich, the [cli] extra)."""
    from scribe_client.cli.jobs import add_jobs_parser

    add_jobs_parser(sub, security).set_defaults(func=jobs_command)
    try:
        from scribe_client.cli.batch import add_batch_parser
    except ImportError:  # scribe-client without the [cli] extra: no progress bars, so no batch
        return
    add_batch_parser(sub, security).set_defaults(func=batch_command)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="scribe-client", description="Transcribe audio with a scribe gateway")
    sub = parser.add_subparsers(dest="command", required=True)
    security = argparse.ArgumentParser(add_help=False)
    add_security_arguments(security)
    tr = add_transcribe_parser(sub, security, "stream a 16-bit WAV file as live audio and print live captions")
    tr.set_defaults(func=cmd_transcribe)
    status = sub.add_parser("status", parents=[security], help="table of the gateway's workers")
    status.add_argument("--address", help=f"gateway address (default {ENV_ADDRESS}, else {DEFAULT_ADDRESS})")
    status.set_defaults(func=cmd_status)
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
