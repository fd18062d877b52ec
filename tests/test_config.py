"""Settings: defaults, .env, environment precedence, and errors that name the variable."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.common.config import ConfigError, Settings


def test_defaults_are_one_default_worker_on_the_embedded_model(tmp_path: Path) -> None:
    s = Settings.from_env({}, env_file=tmp_path / "none.env")
    assert s.gpu_scale_enabled is False
    assert s.worker_count == 1
    assert s.whisper_model == "embedded"
    assert s.gateway_address == "127.0.0.1:50051"
    assert s.run_dir == Path("./run").resolve()


def test_scaled_mode_uses_the_scale_settings(tmp_path: Path) -> None:
    env = {"GPU_SCALE_ENABLED": "true", "GPU_SCALE_WORKERS": "4", "GPU_SCALE_DEVICE_ID": "1", "GPU_DEVICE_ID": "0"}
    s = Settings.from_env(env, env_file=tmp_path / "none.env")
    assert (s.worker_count, s.worker_device_id) == (4, 1)
    off = Settings.from_env({**env, "GPU_SCALE_ENABLED": "false"}, env_file=tmp_path / "none.env")
    assert (off.worker_count, off.worker_device_id) == (1, 0)


def test_dotenv_is_read_and_the_environment_wins(tmp_path: Path) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text("GPU_SCALE_ENABLED=true\nGPU_SCALE_WORKERS=3\nLOG_LEVEL=debug\n")
    s = Settings.from_env({"GPU_SCALE_WORKERS": "5"}, env_file=env_file)
    assert s.gpu_scale_enabled and s.gpu_scale_workers == 5 and s.log_level == "debug"


def test_env_example_is_a_valid_configuration() -> None:
    Settings.from_env({}, env_file=Path(__file__).resolve().parent.parent / ".env.example")


@pytest.mark.parametrize(
    ("variable", "value", "fragment"),
    [
        ("GPU_SCALE_WORKERS", "zero", "must be an integer"),
        ("GPU_SCALE_WORKERS", "0", "between 1 and 64"),
        ("GPU_SCALE_WORKERS", "65", "between 1 and 64"),
        ("GPU_SCALE_ENABLED", "maybe", "true or false"),
        ("GATEWAY_ADDRESS", "localhost", "HOST:PORT"),
        ("WHISPER_DEVICE", "tpu", "one of auto, cpu, cuda"),
        ("HEALTH_INTERVAL_S", "nan", ">= 0.05"),
        ("STATIC_WORKERS", "host-without-port", "HOST:PORT"),
        ("WHISPER_MODEL", "  ", "must not be empty"),
    ],
)
def test_invalid_values_name_the_variable(tmp_path: Path, variable: str, value: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as info:
        Settings.from_env({variable: value}, env_file=tmp_path / "none.env")
    assert str(info.value).startswith(variable)
    assert fragment in str(info.value)


def test_bad_env_stops_the_gateway_with_a_message(tmp_path: Path) -> None:
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, "-m", "services.gateway"],
        env={"GPU_SCALE_WORKERS": "lots", "SCRIBE_ENV_FILE": str(tmp_path / "none.env"), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert "GPU_SCALE_WORKERS" in result.stderr
