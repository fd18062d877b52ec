"""Python client of the scribe gateway.

    from scribe_client import ScribeClient, TranscribeOptions

    with ScribeClient("127.0.0.1:50051") as client:
        print(client.transcribe("meeting.mp3").transcript)

`ScribeClient` blocks; `AsyncScribeClient` is the same API for asyncio. Both take TLS
`credentials`, a bearer `token` and deadlines, and retry through gRPC's service config (see
`scribe_client.retry`). `scribe_client.formats` renders a response as txt, srt, vtt, json or tsv.
"""

from scribe_client.aio import AsyncScribeClient
from scribe_client.formats import FORMATS, render
from scribe_client.messages import Audio, StreamConfig, TranscribeOptions
from scribe_client.retry import retry_delay, service_config
from scribe_client.sync import DEFAULT_ADDRESS, ScribeClient

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
