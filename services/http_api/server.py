"""HTTP server process (supervisord's `http` program): uvicorn on HTTP_ADDRESS, or a clean exit when it is
empty, so supervisord.conf needs no second variant for "HTTP off"."""

from __future__ import annotations

import signal
import ssl
import sys

import structlog
import uvicorn
from scribe_client.credentials import ClientSecurity

from services.common.auth import configured_tokens
from services.common.config import ConfigError, Settings
from services.common.logging import configure_logging
from services.common.tls import transport_mode
from services.http_api.app import create_app
from services.http_api.realtime.socket import ws_max_size

log = structlog.get_logger()


def main() -> None:
    try:
        settings = Settings.from_env()
        configure_logging(settings.log_level, settings.log_format, service="http")
        if not settings.http_address:
            log.info("http_off", hint="HTTP_ADDRESS is empty")
            return
        mode = transport_mode(settings.http_address, settings, "HTTP_ADDRESS")
        local = configured_tokens(settings)
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        sys.exit(2)
    # The page polls ListWorkers with SCRIBE_TOKEN, else this host's first token (it shows no secrets);
    # transcription calls carry their caller's token instead.
    security = ClientSecurity.from_env()
    status_token = security.token or (local[0] if local else None)
    app = create_app(settings, security, status_token)
    host, _, port = settings.http_address.rpartition(":")
    log.info("http_listening", address=settings.http_address, transport=mode, gateway=settings.gateway_address)
    # uvicorn shuts down gracefully on TERM, then raises the signal again under the handler it found: make
    # that one a clean exit, so supervisord sees a stop with status 0 rather than a death by SIGTERM.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    uvicorn.run(
        app,
        host=host.strip("[]"),
        port=int(port),
        log_config=None,
        access_log=False,
        ssl_certfile=str(settings.tls_cert_file) if settings.tls_cert_file else None,
        ssl_keyfile=str(settings.tls_key_file) if settings.tls_key_file else None,
        # Mutual TLS as on the gateway: TLS_CLIENT_CA_FILE makes a client certificate mandatory.
        ssl_ca_certs=str(settings.tls_client_ca_file) if settings.tls_client_ca_file else None,
        ssl_cert_reqs=ssl.CERT_REQUIRED if settings.tls_client_ca_file else ssl.CERT_NONE,
        timeout_graceful_shutdown=20,
        ws_max_size=ws_max_size(settings),  # REALTIME_MAX_FRAME_KB: frames up to 4 times it get an error event
    )
