"""A real DNS server for the discovery tests: Debian's dnsmasq on a loopback port, answering from a hosts file.

`make test` installs dnsmasq-base (the `deps` target). The server listens on 127.0.0.1 only, forwards
nothing (--no-resolv) and reads no /etc/hosts, so it answers the test's names and nothing else; a
SIGHUP makes it re-read the hosts file, which is how a test adds or removes a host.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import subprocess
from pathlib import Path

from tests.helpers import free_port, stop_process, wait_for


class Dnsmasq:
    def __init__(self, folder: Path) -> None:
        binary = shutil.which("dnsmasq") or ("/usr/sbin/dnsmasq" if Path("/usr/sbin/dnsmasq").exists() else None)
        assert binary, "dnsmasq is not installed: run `make deps` (apt-get install dnsmasq-base)"
        folder.mkdir(parents=True, exist_ok=True)
        self.hosts_file = folder / "hosts"
        self.hosts_file.write_text("")
        self.log = folder / "dnsmasq.log"
        self.port = free_port()
        self.server = f"127.0.0.1:{self.port}"
        with self.log.open("wb") as out:
            self.popen = subprocess.Popen(
                [
                    binary,
                    "--keep-in-foreground",
                    f"--port={self.port}",
                    "--listen-address=127.0.0.1",
                    "--bind-interfaces",
                    "--no-resolv",
                    "--no-hosts",
                    f"--addn-hosts={self.hosts_file}",
                    "--pid-file=",
                    f"--user={pwd.getpwuid(os.getuid()).pw_name}",
                    "--log-facility=-",
                    "--log-queries",
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        assert wait_for(lambda: "started" in self.logs() or self.popen.poll() is not None, 10), self.logs()
        assert self.popen.poll() is None, f"dnsmasq exited: {self.logs()}"

    def logs(self) -> str:
        return self.log.read_text(errors="replace")

    def set_hosts(self, name: str, addresses: list[str]) -> None:
        """Make `name` resolve to `addresses` (none: the name is unknown), from the next query on."""
        self.hosts_file.write_text("".join(f"{a} {name}\n" for a in addresses))
        self.popen.send_signal(signal.SIGHUP)

    def stop(self) -> None:
        stop_process(self.popen, 10)
