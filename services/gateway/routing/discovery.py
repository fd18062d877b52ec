"""Worker hosts found through DNS: `dns:///NAME:PORT` entries of STATIC_WORKERS.

Every DNS_REFRESH_S each entry is resolved again (A and AAAA records); every address in the answer is a
worker host with DNS_WORKERS_PER_HOST workers on PORT, PORT+1, ... (a Kubernetes headless Service
answers with one address per ready pod). An answer that fails, or that holds no address at all, keeps
the last good one and is logged: a DNS outage or a Service with a typo never empties the fleet. The
monitor reads `endpoints()` on each poll; what joins or leaves routing is its decision.
"""

from __future__ import annotations

import asyncio
import ipaddress
from dataclasses import dataclass, field

import dns.asyncresolver
import dns.exception
import dns.resolver
import structlog

from services.common.config.types import DNS_TARGET

log = structlog.get_logger()


@dataclass(frozen=True)
class DnsTarget:
    """One `dns:[//SERVER[:PORT]]/NAME:PORT` entry."""

    text: str
    name: str
    port: int
    server: str = ""  # empty: the system resolver (/etc/resolv.conf, with its search domains)
    server_port: int = 53

    @classmethod
    def parse(cls, text: str) -> DnsTarget:
        match = DNS_TARGET.fullmatch(text)
        if match is None:
            raise ValueError(f"{text!r} is not dns:///NAME:PORT")
        server, server_port = match["server"] or "", 53
        if server and not server.startswith("[") and server.count(":") == 1:
            server, port_text = server.split(":")
            server_port = int(port_text)
        elif server.startswith("["):  # [v6]:port
            host, _, port_text = server[1:].partition("]")
            server, server_port = host, int(port_text.lstrip(":") or 53)
        return cls(text, match["name"], int(match["port"]), server, server_port)


@dataclass(frozen=True)
class Endpoint:
    """One worker a DNS answer implies: its gRPC target, the host address and the entry that found it."""

    address: str
    host: str
    source: str


def host_port(host: str, port: int) -> str:
    """`HOST:PORT` as gRPC wants it (IPv6 in brackets)."""
    return f"[{host}]:{port}" if ipaddress.ip_address(host).version == 6 else f"{host}:{port}"


def endpoints_of(target: DnsTarget, hosts: list[str], per_host: int) -> list[Endpoint]:
    return [
        Endpoint(host_port(host, target.port + n), host, target.text)
        for host in sorted(hosts, key=ipaddress.ip_address)
        for n in range(per_host)
    ]


@dataclass
class _Entry:
    target: DnsTarget
    hosts: list[str] = field(default_factory=list)
    error: str = ""


class DnsDiscovery:
    """Keeps the last good answer of each `dns:` entry, refreshed every `refresh_s`."""

    def __init__(self, targets: list[str], refresh_s: float, per_host: int) -> None:
        self._entries = [_Entry(DnsTarget.parse(t)) for t in targets]
        self._refresh_s = refresh_s
        self._per_host = per_host
        self.refreshed = asyncio.Event()  # set after each round; the monitor polls at once

    def errors(self) -> dict[str, str]:
        """The entries whose last resolution failed, with why (their last good answer still counts)."""
        return {e.target.text: e.error for e in self._entries if e.error}

    def endpoints(self) -> list[Endpoint]:
        return [ep for e in self._entries for ep in endpoints_of(e.target, e.hosts, self._per_host)]

    async def run(self) -> None:
        while True:
            try:
                await self.refresh()
            except Exception:  # a bug here must not stop discovery for good; the last answers stay
                log.exception("dns_refresh_failed")
            await asyncio.sleep(self._refresh_s)

    async def refresh(self) -> None:
        await asyncio.gather(*(self._resolve(e) for e in self._entries))
        self.refreshed.set()

    async def _resolve(self, entry: _Entry) -> None:
        target = entry.target
        try:
            hosts = await resolve(target, timeout=max(1.0, min(self._refresh_s, 5.0)))
            if not hosts:
                raise dns.resolver.NoAnswer(f"{target.name} has no A or AAAA record")
        except (dns.exception.DNSException, OSError) as exc:
            error = f"{type(exc).__name__}: {exc}"
            if error != entry.error:  # once per distinct failure, not every refresh
                log.warning("dns_failed", target=target.text, error=error, kept_hosts=entry.hosts)
            entry.error = error
            return
        if entry.error:
            log.info("dns_recovered", target=target.text)
        entry.error = ""
        if hosts != entry.hosts:
            log.info(
                "dns_changed",
                target=target.text,
                hosts=hosts,
                joined=sorted(set(hosts) - set(entry.hosts)),
                left=sorted(set(entry.hosts) - set(hosts)),
            )
            entry.hosts = hosts


async def resolve(target: DnsTarget, timeout: float) -> list[str]:
    """The addresses `target.name` has (A and AAAA), sorted; raises DNSException when neither query answers."""
    if target.server:
        resolver = dns.asyncresolver.Resolver(configure=False)
        resolver.nameservers = [target.server]
        resolver.port = target.server_port
    else:
        resolver = dns.asyncresolver.Resolver()
    resolver.lifetime = timeout
    answers = await asyncio.gather(
        *(resolver.resolve(target.name, kind, search=True) for kind in ("A", "AAAA")), return_exceptions=True
    )
    hosts: set[str] = set()
    errors = []
    for answer in answers:
        if isinstance(answer, dns.resolver.NoAnswer):
            continue  # the name exists, without records of this family
        if isinstance(answer, BaseException):
            errors.append(answer)
            continue
        hosts.update(record.to_text() for record in answer)
    if errors and not hosts:
        raise errors[0]
    return sorted(hosts, key=ipaddress.ip_address)
