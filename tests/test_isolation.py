"""Nobody bypasses the gateway: worker sockets and supervisord's control socket are this user's alone."""

from __future__ import annotations

import os
import socket
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from services.common.config import ConfigError
from services.gateway.routing.supervisor import check_supervisor_conf
from tests.conftest import BIN, Fleet
from tests.helpers import ROOT

NOBODY = 65534


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_worker_and_control_sockets_sit_in_private_folders(serving_fleet: Fleet) -> None:
    sockets = sorted(serving_fleet.run_dir.glob("worker-*.sock"))
    assert [s.name for s in sockets] == ["worker-00.sock", "worker-01.sock"]
    assert _mode(serving_fleet.run_dir) == 0o700
    control = serving_fleet.conf.parent / "run" / "supervisor.sock"
    assert stat.S_ISSOCK(control.stat().st_mode)
    assert _mode(control) & 0o077 == 0, oct(_mode(control))
    assert _mode(control.parent) == 0o700
    check_supervisor_conf(serving_fleet.conf)  # the shipped configuration passes its own check


_CONNECT_AS_NOBODY = """
import os, socket, sys
os.setgroups([]); os.setgid(65534); os.setuid(65534)
for path in sys.argv[1:]:
    s = socket.socket(socket.AF_UNIX)
    try:
        s.connect(path)
        print(path, "CONNECTED")
    except OSError as exc:
        print(path, type(exc).__name__)
"""


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to act as another user")
def test_another_user_cannot_connect_to_workers_or_supervisord(serving_fleet: Fleet) -> None:
    targets = [
        str(serving_fleet.run_dir / "worker-00.sock"),
        str(serving_fleet.run_dir / "worker-01.sock"),
        str(serving_fleet.conf.parent / "run" / "supervisor.sock"),
    ]
    out = subprocess.run(
        [sys.executable, "-c", _CONNECT_AS_NOBODY, *targets], capture_output=True, text=True, timeout=30
    )
    assert out.returncode == 0, out.stderr
    results = dict(line.rsplit(" ", 1) for line in out.stdout.splitlines())
    assert results == dict.fromkeys(targets, "PermissionError")
    # The same sockets do answer their owner: the refusal above is the folders' modes, not a dead socket.
    for path in targets:
        with socket.socket(socket.AF_UNIX) as s:
            s.connect(path)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ("[inet_http_server]\nport=0.0.0.0:9001\nusername=u\npassword=p\n", "not a loopback address"),
        ("[inet_http_server]\nport=*:9001\nusername=u\npassword=p\n", "not a loopback address"),
        ("[inet_http_server]\nport=9001\nusername=u\npassword=p\n", "not a loopback address"),
        ("[inet_http_server]\nport=127.0.0.1:9001\n", "username and a password"),
        (None, "chmod=0777"),
        ("[inet_http_server]\nport=127.0.0.1:9001\nusername=u\npassword=p\n", None),
    ],
    ids=["wildcard", "star", "port only", "no credentials", "open unix socket", "loopback with credentials"],
)
def test_supervisor_conf_check(tmp_path: Path, extra: str | None, message: str | None) -> None:
    text = (ROOT / "supervisord.conf").read_text()
    text = text.replace("chmod=0700", "chmod=0777") if extra is None else text + "\n" + extra
    conf = tmp_path / "supervisord.conf"
    conf.write_text(text)
    if message is None:
        check_supervisor_conf(conf)
        return
    with pytest.raises(ConfigError, match=message):
        check_supervisor_conf(conf)


def test_scribe_start_refuses_an_unsafe_supervisor_conf(serving_fleet: Fleet, tmp_path: Path) -> None:
    conf = tmp_path / "supervisord.conf"
    conf.write_text((ROOT / "supervisord.conf").read_text().replace("chmod=0700", "chmod=0766"))
    env = {**serving_fleet.env, "RUN_DIR": str(tmp_path / "run")}
    result = subprocess.run(
        [str(BIN / "scribe"), "--config", str(conf), "start"], env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2
    assert "chmod=0766" in result.stderr
    assert not (tmp_path / "run" / "supervisor.sock").exists()
