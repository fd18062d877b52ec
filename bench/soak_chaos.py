"""The soak's chaos loop: what an operator's bad day does to a running fleet, one action every few seconds.

In turn: kill -9 a random worker, SIGTERM another, `scribe scale` up by one, kill -9 again, `scribe scale`
back down, kill -9 again, `supervisorctl restart` the whole worker group (`ACTIONS`); or only some of these
(`make soak` kills a random worker every 12 s, the chaos of issue 24). Signals go straight to the
worker's pid (as the kernel or an operator would send them); scale and restart go through the real CLIs.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import structlog

from services.gateway.routing.supervisor import SupervisorClient

log = structlog.get_logger()
BIN = Path(sys.executable).parent
ACTIONS = ("kill9", "sigterm", "scale_up", "kill9", "scale_down", "kill9", "restart_group")


class Target(Protocol):
    """A running fleet: the tests' `Fleet` fixture and `bench.fleet.fleet()` both are one."""

    @property
    def address(self) -> str: ...
    @property
    def conf(self) -> Path: ...
    @property
    def run_dir(self) -> Path: ...
    @property
    def env(self) -> dict[str, str]: ...


def control(target: Target) -> SupervisorClient:
    return SupervisorClient(f"unix://{target.conf.resolve().parent / 'run' / 'supervisor.sock'}")


def command(target: Target, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """A command of the venv (scribe, supervisorctl) against the fleet; a failure is logged, not raised."""
    done = subprocess.run(
        [str(BIN / args[0]), *args[1:]], env=target.env, capture_output=True, text=True, timeout=timeout, check=False
    )
    if done.returncode != 0:
        log.warning("chaos_command_failed", args=args, rc=done.returncode, stderr=done.stderr[-500:])
    return done


def running_workers(target: Target) -> dict[str, int]:
    """Worker name -> pid, for the workers supervisord has RUNNING."""
    return {p.name: p.pid for p in control(target).workers() if p.state == "RUNNING" and p.pid > 0}


def process_pid(target: Target, name: str) -> int:
    """The pid supervisord has for `name` (e.g. "gateway"); 0 when it does not run."""
    return next((p.pid for p in control(target).processes() if p.name == name and p.state == "RUNNING"), 0)


def supervisord_pid(target: Target) -> int:
    return int((target.run_dir / "supervisord.pid").read_text().strip())


@dataclass
class Chaos:
    """Runs ACTIONS round and round every `interval_s` until stopped; `base` is the worker count to return to."""

    target: Target
    base: int
    interval_s: float = 3.0
    seed: int = 0
    actions: tuple[str, ...] = ACTIONS  # the cycle of actions; ("kill9",) kills a random worker each time
    counts: Counter[str] = field(default_factory=Counter)
    errors: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="chaos", daemon=True)
        self._random = random.Random(self.seed)
        self._scaled_up = False

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Stop after the action under way and put the fleet back to `base` workers."""
        self._stop.set()
        self._thread.join()
        if self._scaled_up:
            self._act("scale_down")

    def _loop(self) -> None:
        turn = 0
        while not self._stop.wait(self.interval_s):
            action = self.actions[turn % len(self.actions)]
            turn += 1
            try:
                self._act(action)
            except Exception as exc:  # a chaos step that failed is reported, and the chaos goes on
                self.errors.append(f"{action}: {exc!r}")
                log.warning("chaos_step_failed", action=action, error=repr(exc))

    def _act(self, action: str) -> None:
        if action in ("kill9", "sigterm"):
            workers = running_workers(self.target)
            if not workers:
                return  # all are restarting: nothing to kill this turn
            name = self._random.choice(sorted(workers))
            os.kill(workers[name], signal.SIGKILL if action == "kill9" else signal.SIGTERM)
            log.info("chaos", action=action, worker=name, pid=workers[name])
        elif action == "scale_up":
            command(self.target, "scribe", "--config", str(self.target.conf), "scale", str(self.base + 1))
            self._scaled_up = True
        elif action == "scale_down":
            command(self.target, "scribe", "--config", str(self.target.conf), "scale", str(self.base))
            self._scaled_up = False
        elif action == "restart_group":
            command(self.target, "supervisorctl", "-c", str(self.target.conf), "restart", "gpu_worker:*")
        self.counts[action] += 1
