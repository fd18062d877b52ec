"""supervisord's XML-RPC interface over its unix socket: the process table, start and stop."""

from __future__ import annotations

import re
import xmlrpc.client
from dataclasses import dataclass
from typing import Any

from supervisor.xmlrpc import SupervisorTransport

WORKER_GROUP = "gpu_worker"
_WORKER_NAME = re.compile(r"^gpu_worker_(\d+)$")


@dataclass(frozen=True)
class ProcessInfo:
    """One row of `supervisorctl status`."""

    group: str
    name: str
    state: str  # RUNNING, STOPPED, STARTING, BACKOFF, STOPPING, EXITED, FATAL, UNKNOWN
    pid: int
    description: str

    @property
    def full_name(self) -> str:
        return f"{self.group}:{self.name}"


def worker_process_num(name: str) -> int | None:
    """2 for "gpu_worker_02"; None for a name that is not a worker's."""
    match = _WORKER_NAME.match(name)
    return int(match.group(1)) if match else None


class SupervisorClient:
    """Blocking client; the gateway calls it from a thread. `server_url` is "unix:///path/to.sock"."""

    def __init__(self, server_url: str) -> None:
        self.server_url = server_url

    def _proxy(self) -> xmlrpc.client.ServerProxy:
        transport = SupervisorTransport(None, None, self.server_url)
        # The host is ignored: SupervisorTransport dials the unix socket in server_url.
        return xmlrpc.client.ServerProxy("http://127.0.0.1", transport=transport)

    def processes(self) -> list[ProcessInfo]:
        rows: list[dict[str, Any]] = self._proxy().supervisor.getAllProcessInfo()  # type: ignore[assignment]
        return [ProcessInfo(r["group"], r["name"], r["statename"], int(r["pid"]), r["description"]) for r in rows]

    def workers(self) -> list[ProcessInfo]:
        """Every worker: the gpu_worker group, and the one-process groups `scribe scale` adds."""
        return [
            p for p in self.processes() if p.group.startswith(WORKER_GROUP) and worker_process_num(p.name) is not None
        ]

    def start(self, name: str, wait: bool = True) -> bool:
        return bool(self._proxy().supervisor.startProcess(name, wait))

    def stop(self, name: str, wait: bool = True) -> bool:
        return bool(self._proxy().supervisor.stopProcess(name, wait))

    def state(self) -> str:
        state: dict[str, Any] = self._proxy().supervisor.getState()  # type: ignore[assignment]
        return str(state["statename"])

    def reload_config(self) -> None:
        """Re-read supervisord.conf and its includes (changes apply only on add/remove)."""
        self._proxy().supervisor.reloadConfig()

    def add_group(self, name: str) -> None:
        self._proxy().supervisor.addProcessGroup(name)

    def remove_group(self, name: str) -> None:
        self._proxy().supervisor.removeProcessGroup(name)

    def shutdown(self) -> None:
        self._proxy().supervisor.shutdown()
