"""Deprecated: the client library is now the scribe-client distribution (clients/python), imported as
`scribe_client`. This module re-exports it for one release; import `scribe_client` instead.

`services.client.formats`, `.retry`, `.sync`, `.aio`, `.messages` and `.replay` still import, as the
same modules of scribe_client.
"""

import importlib
import sys
import warnings

from scribe_client import (
    DEFAULT_ADDRESS,
    FORMATS,
    AsyncScribeClient,
    Audio,
    ScribeClient,
    StreamConfig,
    TranscribeOptions,
    render,
    retry_delay,
    service_config,
)

warnings.warn(
    "services.client is deprecated and will be removed in the next release: import scribe_client "
    "(pip install ./clients/python)",
    DeprecationWarning,
    stacklevel=2,
)

for _name in ("aio", "formats", "messages", "replay", "retry", "sync"):
    sys.modules[f"{__name__}.{_name}"] = importlib.import_module(f"scribe_client.{_name}")

__all__ = [
    "DEFAULT_ADDRESS",
    "FORMATS",
    "AsyncScribeClient",
    "Audio",
    "ScribeClient",
    "StreamConfig",
    "TranscribeOptions",
    "render",
    "retry_delay",
    "service_config",
]
