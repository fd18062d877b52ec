"""Which addresses a job may make the gateway call (webhooks, URL sources), and calling only those.

Jobs must not turn the gateway into a probe of its own network: a URL whose host resolves to a loopback,
private, link-local (cloud metadata), shared, multicast or reserved address is refused unless
JOB_ALLOW_NETWORKS names its network. The check is made on every address the name resolves to, and the
request then goes to the address that was checked (with the name in Host and TLS SNI), so a name that
resolves differently a moment later (DNS rebinding) cannot slip past it.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

import grpc
import httpx

from services.common.errors import RequestError

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class Target:
    """A URL checked for its form: scheme, host and port."""

    url: str
    scheme: str
    host: str
    port: int


def parse_url(url: str, what: str) -> Target:
    """An http(s) URL with a host, or INVALID_ARGUMENT."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        parts, port = None, None
    if parts is None or parts.scheme not in ("http", "https") or not parts.hostname or parts.username:
        raise RequestError(
            grpc.StatusCode.INVALID_ARGUMENT,
            "BAD_URL",
            f"{what} must be an http:// or https:// URL with a host (and no user:password@), got {url[:200]!r}",
        )
    return Target(url, parts.scheme, parts.hostname, port or (443 if parts.scheme == "https" else 80))


def allowed_networks(cidrs: Sequence[str]) -> list[Network]:
    return [ipaddress.ip_network(c, strict=False) for c in cidrs]


def is_denied(address: IPAddress, allowed: Sequence[Network]) -> bool:
    """Whether the gateway must not call this address: anything but a global unicast address, unless allowed."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    if any(address in net for net in allowed if net.version == address.version):
        return False
    return not address.is_global or address.is_multicast


async def resolve(target: Target, allowed: Sequence[Network], what: str) -> str:
    """The address to call for `target`: every address its host resolves to must be allowed, or
    PERMISSION_DENIED (UNAVAILABLE when the name does not resolve)."""
    try:
        literal: IPAddress | None = ipaddress.ip_address(target.host)
    except ValueError:
        literal = None
    if literal is not None:
        addresses: list[IPAddress] = [literal]
    else:
        loop = asyncio.get_running_loop()
        try:
            infos = await loop.getaddrinfo(target.host, target.port, type=socket.SOCK_STREAM)
        except OSError as exc:
            raise RequestError(
                grpc.StatusCode.UNAVAILABLE, "URL_HOST_UNRESOLVED", f"{what}: {target.host} does not resolve ({exc})"
            ) from None
        addresses = list(dict.fromkeys(ipaddress.ip_address(info[4][0]) for info in infos))
    denied = [a for a in addresses if is_denied(a, allowed)]
    if denied or not addresses:
        raise RequestError(
            grpc.StatusCode.PERMISSION_DENIED,
            "ADDRESS_DENIED",
            f"{what}: {target.host} is {denied[0] if denied else 'no address'}, a loopback, private or link-local "
            "address the gateway does not call (JOB_ALLOW_NETWORKS can allow a network)",
        )
    return str(addresses[0])


def pinned(target: Target, address: str) -> tuple[str, dict[str, str], dict[str, str]]:
    """(URL with the checked address as its host, headers, httpx extensions) for one request."""
    parts = urlsplit(target.url)
    host = f"[{address}]" if ":" in address else address
    netloc = f"{host}:{target.port}"
    url = urlunsplit((parts.scheme, netloc, parts.path or "/", parts.query, ""))
    default_port = (target.scheme == "https" and target.port == 443) or (target.scheme == "http" and target.port == 80)
    host_header = target.host if default_port else f"{target.host}:{target.port}"
    if ":" in target.host:
        host_header = f"[{target.host}]" if default_port else f"[{target.host}]:{target.port}"
    extensions = {"sni_hostname": target.host} if target.scheme == "https" else {}
    return url, {"Host": host_header}, extensions


async def send(
    client: httpx.AsyncClient,
    method: str,
    url: str,
    allowed: Sequence[Network],
    what: str,
    *,
    stream: bool = False,
    content: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> httpx.Response:
    """One request to an allowed address (redirects are not followed: the caller checks each hop)."""
    target = parse_url(url, what)
    address = await resolve(target, allowed, what)
    pinned_url, pinned_headers, extensions = pinned(target, address)
    pinned_headers.update(headers or {})
    request = client.build_request(method, pinned_url, headers=pinned_headers, extensions=extensions, content=content)
    return await client.send(request, stream=stream, follow_redirects=False)
