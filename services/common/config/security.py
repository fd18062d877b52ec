"""Transport security and bearer tokens, for clients and between gateway and workers."""

from __future__ import annotations

from typing import Any, Self

from pydantic import BaseModel, Field, model_validator

from services.common.config.types import Flag, OptionalFile, Tokens

#: json_schema_extra of a setting whose value `scribe config` must not print.
SECRET: dict[str, Any] = {"secret": True}


class SecurityFields(BaseModel):
    """Transport security and bearer tokens, for clients and between gateway and workers."""

    tls_cert_file: OptionalFile = Field(
        None,
        description="PEM certificate (chain) of the gateway, and of a worker run with `--listen`. With "
        "`TLS_KEY_FILE` it turns on TLS.",
    )
    tls_key_file: OptionalFile = Field(None, description="PEM private key of `TLS_CERT_FILE`.")
    tls_client_ca_file: OptionalFile = Field(
        None, description="PEM CA bundle. When set, clients must show a certificate it signed (mutual TLS)."
    )
    allow_insecure: Flag = Field(
        False, description="Allow plaintext on an address that is not loopback. Logs a warning."
    )
    auth_tokens: Tokens = Field(
        (),
        description="Comma-separated bearer tokens (16+ characters each). When any are set, every call but health "
        "needs one.",
        json_schema_extra=SECRET,
    )
    auth_tokens_file: OptionalFile = Field(
        None, description="File with one bearer token per line (`#` comments). Adds to `AUTH_TOKENS`."
    )
    worker_tls_ca_file: OptionalFile = Field(
        None,
        description="PEM CA of the certificates of workers on TCP (`STATIC_WORKERS`). When set, the gateway "
        "reaches them over TLS.",
    )
    worker_tls_server_name: str = Field(
        "",
        description="Name the gateway expects in the workers' certificates, when it dials them by address (a "
        "`dns:` entry finds pod IPs): e.g. the headless Service's name. Empty: the address's host.",
    )

    @model_validator(mode="after")
    def _check_tls(self) -> Self:
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError("TLS_CERT_FILE and TLS_KEY_FILE must be set together (certificate and its key)")
        if self.tls_client_ca_file is not None and self.tls_cert_file is None:
            raise ValueError("TLS_CLIENT_CA_FILE (mutual TLS) needs TLS_CERT_FILE and TLS_KEY_FILE as well")
        return self
