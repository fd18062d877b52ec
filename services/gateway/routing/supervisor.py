"""supervisord's XML-RPC interface over its unix socket: the process table, start and stop."""

from __future__ import annotations

import configparser
import re
import xmlrpc.client
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from supervisor.xmlrpc import SupervisorTransport

from services.common.config import ConfigError
from services.common.models.catalogue import slug
from services.common.tls import is_loopback

WORKER_GROUP = "gpu_worker"
_WORKER_NAME = re.compile(r"^gpu_worker_(\d+)$")
#: gpu_worker (the single model's group), gpu_worker_NN (a worker `scribe scale` added to it),
#: gpu_worker_SLUG (a model's group under WORKER_MODELS), gpu_worker_SLUG_NN (one added to that).
_GROUP = re.compile(r"^gpu_worker(?:_(?P<slug>[A-Za-z][A-Za-z0-9.-]*))?(?:_(?P<num>\d+))?$")


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


def check_supervisor_conf(path: Path) -> None:
    """supervisord's control interface starts and stops anything it runs: only this user may reach it.

    The unix socket must be chmod 0700 (or stricter); an inet_http_server must listen on loopback and
    ask for a username and password.
    """
    conf = configparser.RawConfigParser(inline_comment_prefixes=(";", "#"), strict=False)
    conf.read(path)
    if conf.has_section("unix_http_server"):
        mode = conf.get("unix_http_server", "chmod", fallback="0700")
        if int(mode, 8) & 0o077:
            raise ConfigError(f"{path}: [unix_http_server] chmod={mode} lets other users control supervisord: use 0700")
    if conf.has_section("inet_http_server"):
        port = conf.get("inet_http_server", "port", fallback="")
        host = port.rpartition(":")[0] if ":" in port else ""
        if not host or host == "*" or not is_loopback(port):
            raise ConfigError(f"{path}: [inet_http_server] port={port} is not a loopback address: bind it to 127.0.0.1")
        if not conf.get("inet_http_server", "username", fallback="") or not conf.get(
            "inet_http_server", "password", fallback=""
        ):
            raise ConfigError(f"{path}: [inet_http_server] needs a username and a password")


def model_group(slug: str | None) -> str:
    """The supervisord group of a model's workers: `gpu_worker_SLUG`, or `gpu_worker` for the single model."""
    return f"{WORKER_GROUP}_{slug}" if slug else WORKER_GROUP


def group_slug(name: str) -> str:
    """The part of a group's name that stands for model `name`."""
    return slug(name)


def group_model_slug(group: str) -> str | None:
    """The model slug a worker group belongs to; "" for the single model's groups, None for other groups."""
    match = _GROUP.match(group)
    if match is None:
        return None
    return match.group("slug") or ""


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
