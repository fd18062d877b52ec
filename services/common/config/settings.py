"""`Settings`: the fields of every concern in one frozen object, and reading it from the environment and
`.env` (a mapping instead of os.environ for tests and the CLI), with errors that name the variable."""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from pydantic_settings import BaseSettings, EnvSettingsSource, PydanticBaseSettingsSource, SettingsConfigDict
from pydantic_settings.sources.utils import parse_env_vars

from services.common.config.jobs import JobFields
from services.common.config.limits import LimitFields
from services.common.config.network import NetworkFields
from services.common.config.security import SecurityFields
from services.common.config.speakers import SpeakerFields
from services.common.config.types import token_problem
from services.common.config.workers import WorkerFields
from services.common.models.catalogue import served_name


class ConfigError(ValueError):
    """A configuration variable has a value scribe cannot use."""


def check_token(name: str, token: str) -> str:
    problem = token_problem(token)
    if problem:
        raise ConfigError(f"{name}: {problem}")
    return token


#: The environment `from_env` reads instead of os.environ, while it builds one Settings.
_ENVIRON: ContextVar[Mapping[str, str] | None] = ContextVar("scribe_environ", default=None)


class _MappingEnvSource(EnvSettingsSource):
    """pydantic-settings' environment source, reading a given mapping instead of os.environ (tests and the
    CLI pass their own). `_load_env_vars` is the hook pydantic-settings' own dotenv source overrides too."""

    def _load_env_vars(self) -> Mapping[str, str | None]:
        environ = _ENVIRON.get()
        assert environ is not None
        return parse_env_vars(environ, self.case_sensitive, self.env_ignore_empty, self.env_parse_none_str)


# pydantic collects the fields of the last base first: this order puts workers first in `scribe config` and the table.
class Settings(JobFields, SpeakerFields, SecurityFields, LimitFields, NetworkFields, WorkerFields, BaseSettings):
    """scribe's configuration: one field per variable, with its default and meaning (the fields live in
    one module per concern: workers, network, limits, security, speakers, jobs)."""

    model_config = SettingsConfigDict(
        frozen=True, extra="ignore", case_sensitive=False, validate_default=True, allow_inf_nan=False
    )

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
        """Workers supervisord runs: WORKER_MODELS' counts added up (auto counted as 1), else GPU_SCALE_WORKERS
        when scaling is on, else the one default worker."""
        if self.worker_models:
            return max(1, sum(1 if count is None else count for _, count in self.model_counts()))
        return max(1, self.gpu_scale_workers) if self.gpu_scale_enabled else 1

    @property
    def multi_model(self) -> bool:
        """WORKER_MODELS is set: each model's workers are a supervisord group of their own."""
        return bool(self.worker_models)

    def model_counts(self) -> list[tuple[str, int | None]]:
        """(WHISPER_MODEL value, workers or None for auto) of each model, the default first."""
        if not self.worker_models:
            return [(self.whisper_model, self.gpu_scale_workers or None if self.gpu_scale_enabled else 1)]
        out: list[tuple[str, int | None]] = []
        for entry in self.worker_models:
            name, _, count = entry.rpartition(":")
            out.append((name, None if count == "auto" else int(count)))
        return out

    def served_models(self) -> list[str]:
        """The names the fleet serves its models under, the default first (`embedded` is served as tiny.en)."""
        return [served_name(name) for name, _ in self.model_counts()]

    def model_nice(self, model: str) -> int:
        """WORKER_MODEL_NICE for the model served as `model` (0 when it names none)."""
        for entry in self.worker_model_nice:
            name, _, value = entry.rpartition(":")
            if served_name(name) == served_name(model) and value.isdigit():
                return min(19, int(value))
        return 0

    @property
    def default_model(self) -> str:
        return self.served_models()[0]

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
    def jobs_spool(self) -> Path:
        """Folder of the jobs' audio: JOB_SPOOL_DIR, else RUN_DIR/jobs/audio."""
        return self.job_spool_dir or self.run_dir / "jobs" / "audio"

    @property
    def jobs_database(self) -> str:
        """SQLAlchemy URL of the job store: JOBS_DATABASE_URL, else SQLite in RUN_DIR/jobs."""
        url = self.jobs_database_url
        if not url:
            return f"sqlite:///{self.run_dir / 'jobs' / 'jobs.db'}"
        # psycopg 3 is the driver scribe installs; a plain postgresql:// URL would ask for psycopg2.
        for prefix in ("postgresql://", "postgres://"):
            if url.startswith(prefix):
                return "postgresql+psycopg://" + url[len(prefix) :]
        return url

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
