"""Simulated hosts for tests/test_hosts.py: network namespaces on one bridge, each running a real worker host.

The bridge and each namespace's veth are named after this test process's pid, and the subnet is a 10.x.y/24
no route of this machine uses yet, so a run in another worktree never meets ours. Traffic stays on the
bridge and in the namespaces; nothing is routed off the machine. `Lab.close()` kills every process in
every namespace and deletes them and the bridge; it runs even when a test fails, and namespaces left by
a run that was killed outright (its pid gone) are removed at the next start.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from tests.helpers import ROOT

PREFIX = "scribe-hosts-"


def ip(*args: str, check: bool = True) -> str:
    done = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if check and done.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {done.stderr.strip()}")
    return done.stdout


def require_root_and_tools() -> None:
    assert os.geteuid() == 0, "the multi-host test makes network namespaces: run it as root (CI does)"
    assert shutil.which("ip"), "iproute2 is missing: run `make deps`"
    assert shutil.which("supervisord", path=str(Path(sys.executable).parent)), "run `make proto` first (the venv)"


def remove_leftovers() -> None:
    """Namespaces and bridges of earlier runs whose process is gone (killed before it could clean up)."""
    for line in ip("netns", "list").splitlines():
        name = line.split()[0]
        match = re.fullmatch(rf"{PREFIX}(\d+)-\w+", name)
        if match and not _alive(int(match[1])):
            _kill_namespace(name)
            ip("netns", "del", name, check=False)
    for line in ip("-o", "link", "show", "type", "bridge").splitlines():
        match = re.search(r": (scb(\d+))[:@]", line)
        if match and not _alive(int(match[2])):
            ip("link", "del", match[1], check=False)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _kill_namespace(name: str) -> list[int]:
    pids = [int(p) for p in ip("netns", "pids", name, check=False).split()]
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return pids


def free_subnet() -> str:
    """The first 10.2xx.y.0/24 (from this pid on) that no route or address here covers: "10.2xx.y"."""
    used = ip("-4", "route", "show", "table", "all") + ip("-4", "-o", "addr", "show")
    pid = os.getpid()
    for n in range(2000):
        k = (pid + n) % 12800
        prefix = f"10.{200 + k // 256}.{k % 256}"
        if f"{prefix}." not in used:
            return prefix
    raise RuntimeError("no free 10.200-249.x.0/24 subnet for the test hosts")


@dataclass
class Host:
    """One simulated machine: a namespace with an address on the bridge, running a worker host."""

    name: str
    namespace: str
    address: str
    folder: Path
    popen: subprocess.Popen[bytes] | None = None

    def logs(self) -> str:
        """supervisord's and its workers' output (deploy/worker-host.conf sends all of it to stdout)."""
        out = self.folder / "supervisord.out"
        return f"--- host {self.name}\n{out.read_text(errors='replace')[-4000:]}" if out.exists() else ""


class Lab:
    """A bridge in this namespace (the gateway's side, address .1) and hosts in their own namespaces."""

    def __init__(self) -> None:
        remove_leftovers()
        self.tag = str(os.getpid())
        self.bridge = f"scb{self.tag}"
        self.prefix = free_subnet()
        self.hosts: list[Host] = []
        ip("link", "add", self.bridge, "type", "bridge")
        ip("addr", "add", f"{self.prefix}.1/24", "dev", self.bridge)
        ip("link", "set", self.bridge, "up")

    def add_host(self, name: str, folder: Path) -> Host:
        index = len(self.hosts) + 1
        namespace = f"{PREFIX}{self.tag}-{name}"
        outside, inside = f"scb{self.tag}{name}", f"scb{self.tag}{name}i"
        ip("netns", "add", namespace)
        host = Host(name, namespace, f"{self.prefix}.{10 + index}", folder)
        self.hosts.append(host)
        ip("link", "add", outside, "type", "veth", "peer", "name", inside)
        ip("link", "set", inside, "netns", namespace)
        ip("link", "set", outside, "master", self.bridge)
        ip("link", "set", outside, "up")
        ip("-n", namespace, "addr", "add", f"{host.address}/24", "dev", inside)
        ip("-n", namespace, "link", "set", inside, "up")
        ip("-n", namespace, "link", "set", "lo", "up")
        return host

    def start_worker_host(self, host: Host, env: dict[str, str]) -> None:
        """supervisord with deploy/worker-host.conf inside the host's namespace."""
        run = host.folder / "run"
        run.mkdir(mode=0o700, parents=True, exist_ok=True)
        full = {k: v for k, v in os.environ.items() if not k.startswith(("GPU_", "WHISPER_", "SUPERVISOR_"))}
        full.update(
            env,
            SCRIBE_PYTHON=sys.executable,
            SCRIBE_HOME=str(ROOT),
            RUN_DIR=str(run),
            SCRIBE_ENV_FILE=str(host.folder / "no.env"),
        )
        supervisord = str(Path(sys.executable).parent / "supervisord")
        conf = str(ROOT / "deploy" / "worker-host.conf")
        with (host.folder / "supervisord.out").open("wb") as out:
            host.popen = subprocess.Popen(
                ["ip", "netns", "exec", host.namespace, supervisord, "-c", conf],
                env=full,
                cwd=ROOT,
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    def kill_host(self, host: Host) -> list[int]:
        """kill -9 every process in the host's namespace at once, as a machine that loses power."""
        return _kill_namespace(host.namespace)

    def close(self) -> None:
        for host in self.hosts:
            if host.popen is not None and host.popen.poll() is None:
                host.popen.terminate()  # supervisord stops its workers (TERM); a kill follows below anyway
        for host in self.hosts:
            if host.popen is not None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    host.popen.wait(timeout=40)
            self.kill_host(host)
            if host.popen is not None and host.popen.poll() is None:
                host.popen.kill()
                host.popen.wait()
            ip("netns", "del", host.namespace, check=False)
        ip("link", "del", self.bridge, check=False)
