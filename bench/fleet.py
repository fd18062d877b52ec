"""A throwaway fleet for benchmarks: supervisord, gateway and workers in a temporary folder."""

from __future__ import annotations

import io
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import wave
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from services.common.audio import SAMPLE_RATE

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True)
class Fleet:
    address: str  # the gateway
    run_dir: Path  # sockets and logs (logs/gpu_worker_NN.log)
    conf: Path  # its supervisord.conf, for supervisorctl and `scribe scale`
    env: dict[str, str]  # the environment `scribe start` ran with


@contextmanager
def fleet(
    workers: int = 2,
    threads: int = 0,
    checkout: Path = ROOT,
    output: Any = None,
    settings: dict[str, str] | None = None,
    **env: str,
) -> Iterator[Fleet]:
    """Start `workers` workers with `threads` CPU threads each (0: scribe's default share of the cores),
    like the tests' fixture: `scribe start` in a temporary folder. `env` overrides settings.

    `checkout` runs another scribe checkout (with its own .venv), to compare a change against the code
    before it in one run. `output` takes what `scribe start` and `stop` print (default: stderr);
    `settings` are more overrides, given as one mapping."""
    home = Path(tempfile.mkdtemp(prefix="scribe-bench-"))
    conf = home / "supervisord.conf"
    shutil.copy(checkout / "supervisord.conf", conf)
    address = f"127.0.0.1:{free_port()}"
    full_env = {k: v for k, v in os.environ.items() if not k.startswith(("GPU_", "WHISPER_", "SUPERVISOR_"))}
    full_env.update(
        SCRIBE_ENV_FILE=str(home / "none.env"),
        GPU_SCALE_ENABLED="true",
        GPU_SCALE_WORKERS=str(workers),
        GATEWAY_ADDRESS=address,
        METRICS_ADDRESS="",
        HTTP_ADDRESS="",
        RUN_DIR=str(home / "run"),
        LOG_FORMAT="json",
        GATEWAY_QUEUE_SIZE="10000",
    )
    if threads:
        full_env["WHISPER_CPU_THREADS"] = str(threads)
    full_env.update(settings or {})
    full_env.update(env)
    binaries = BIN if checkout == ROOT else checkout / ".venv" / "bin"
    scribe = [str(binaries / "scribe"), "--config", str(conf)]
    # scribe's own messages go to stderr, so a benchmark's stdout holds only its table.
    output = output or sys.stderr
    subprocess.run(
        [*scribe, "start", "--wait", "180"], env=full_env, check=True, cwd=checkout, stdout=output, stderr=output
    )
    try:
        yield Fleet(address, home / "run", conf, full_env)
    finally:
        subprocess.run([*scribe, "stop"], env=full_env, check=False, cwd=checkout, stdout=output, stderr=output)
        shutil.rmtree(home, ignore_errors=True)


def wav_bytes(samples: np.ndarray) -> bytes:
    out = io.BytesIO()
    with wave.open(out, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(SAMPLE_RATE)
        w.writeframes((np.clip(samples, -1, 1) * 32767).astype("<i2").tobytes())
    return out.getvalue()
