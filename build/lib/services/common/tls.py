"""Server-side transport security: TLS or mutual TLS from the settings, and the rule that plaintext is
only for loopback unless ALLOW_INSECURE says otherwise."""

from __future__ import annotations

import ipaddress

import grpc
import structlog

from services.common.config import ConfigError, Settings

log = structlog.get_logger()


def is_loopback(address: str) -> bool:
    """True for 127.0.0.0/8, ::1 and localhost; False for wildcards, other hosts and names."""
    host = address.rpartition(":")[0].strip("[]") if ":" in address else address
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def server_credentials(settings: Settings) -> grpc.ServerCredentials | None:
    """TLS (with client certificates required when TLS_CLIENT_CA_FILE is set), or None for plaintext."""
    if settings.tls_cert_file is None or settings.tls_key_file is None:
        return None
    try:
        chain = settings.tls_cert_file.read_bytes()
        key = settings.tls_key_file.read_bytes()
        client_ca = settings.tls_client_ca_file.read_bytes() if settings.tls_client_ca_file else None
    except OSError as exc:
        raise ConfigError(f"cannot read a TLS file ({exc.filename}): {exc.strerror}") from None
    return grpc.ssl_server_credentials(
        [(key, chain)], root_certificates=client_ca, require_client_auth=client_ca is not None
    )


def transport_mode(address: str, settings: Settings, variable: str) -> str:
    """ "mtls", "tls" or "plaintext" for a listener on `address` (named by `variable` in messages).

    Plaintext on an address that is not loopback needs ALLOW_INSECURE=true, else ConfigError.
    """
    if settings.tls_enabled:
        return "mtls" if settings.tls_client_ca_file else "tls"
    if not is_loopback(address) and not settings.allow_insecure:
        raise ConfigError(
            f"{variable}={address} is not a loopback address and TLS is off: set TLS_CERT_FILE and "
            "TLS_KEY_FILE, or set ALLOW_INSECURE=true to serve plaintext on the network anyway"
        )
    return "plaintext"


def bind(server: grpc.aio.Server, address: str, settings: Settings, variable: str) -> str:
    """Add the listening port for `address` as `transport_mode` decides; returns that mode."""
    mode = transport_mode(address, settings, variable)
    credentials = server_credentials(settings)
    if credentials is not None:
        server.add_secure_port(address, credentials)
        return mode
    if not is_loopback(address):
        log.warning(
            "insecure_listener",
            address=address,
            hint="plaintext on a network address (ALLOW_INSECURE=true): anyone on the path can read the audio",
        )
    server.add_insecure_port(address)
    return "plaintext"
