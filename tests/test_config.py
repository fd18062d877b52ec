"""Settings: defaults, .env, environment precedence, and errors that name the variable."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.common.config import ConfigError, Settings

pytestmark = pytest.mark.fast


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
        ("GPU_SCALE_WORKERS", "zero", "between 1 and 64, or auto"),
        ("GPU_SCALE_WORKERS", "0", "between 1 and 64"),
        ("GPU_SCALE_WORKERS", "65", "between 1 and 64"),
        ("GPU_SCALE_ENABLED", "maybe", "valid boolean"),
        ("GATEWAY_ADDRESS", "localhost", "HOST:PORT"),
        ("WHISPER_DEVICE", "tpu", "'auto', 'cpu' or 'cuda'"),
        ("HEALTH_INTERVAL_S", "nan", "finite number"),
        ("HEALTH_INTERVAL_S", "0.01", "greater than or equal to 0.05"),
        ("WORKER_CONCURRENCY", "two", "valid integer"),
        ("HTTP_ADDRESS", "8000", "HOST:PORT"),
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


def test_every_setting_has_a_description_and_the_docs_table_is_generated_from_them() -> None:
    from services.cli.config_cmd import PAGE, markdown_table, page_with_table

    assert all(field.description for field in Settings.model_fields.values())
    page = (Path(__file__).resolve().parent.parent / PAGE).read_text()
    assert page_with_table(page) == page, f"{PAGE}'s configuration table is stale: run `make config-table`"
    assert "| `HTTP_ADDRESS` | `127.0.0.1:8000` |" in markdown_table()


def test_scribe_config_prints_effective_settings_with_sources_and_masked_tokens(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    token = "config-test-token-0123456789"
    env_file = tmp_path / "my.env"
    env_file.write_text("LOG_LEVEL=debug\nGATEWAY_QUEUE_SIZE=7\n")
    env = {k: v for k, v in os.environ.items() if k.upper() not in {n.upper() for n in Settings.model_fields}}
    env.update(SCRIBE_ENV_FILE=str(env_file), GATEWAY_QUEUE_SIZE="9", AUTH_TOKENS=f"{token},{token[::-1]}")
    out = subprocess.run(
        [str(Path(sys.executable).parent / "scribe"), "config"], env=env, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    rows = {line.split()[0]: line.split()[1:] for line in out.stdout.splitlines()[1:] if line.split()}
    assert rows["LOG_LEVEL"] == ["debug", str(env_file)]
    assert rows["GATEWAY_QUEUE_SIZE"] == ["9", "environment"]
    assert rows["WHISPER_MODEL"] == ["embedded", "default"]
    assert rows["AUTH_TOKENS"][0] == "********" and "(2 set)" in out.stdout
    assert token not in out.stdout and token[::-1] not in out.stdout
    assert len(rows) == len(Settings.model_fields)
