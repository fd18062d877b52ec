"""A streaming session's resume state: everything that decides its future finals, by name, versioned.

The worker attaches it to every response (`StreamResumePoint.state`); the gateway keeps the latest and,
when the worker fails, hands it to another worker with the audio from `buffer_start` on. From the same
state and the same audio the new worker makes the same decodes at the same audio positions, so it gives
the same finals the first worker would have (see docs/streams.md).

The encoding is JSON of `SessionState`, a version number first. A later feature adds a field with a
default (older states load without it) or puts its own data under `extensions` (a name it owns → any
JSON value), which this module keeps as it is. A state of another version is refused.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from services.gpu_worker.engines.base import Word

VERSION = 3


@dataclass
class SessionState:
    """A session between two steps. Positions are stream samples (16 kHz) from the stream's start."""

    buffer_start: int  # the audio the next worker must be given starts here
    voice: dict[str, Any]  # voice activity: Silero's state, the detector's, scored and judged windows
    closing: tuple[int, int] | None
    floor: int
    context_end: int | None
    decoded_to: int  # where the last decode that decides finals stopped
    shown_to: int  # where the last interim shown to the client stopped
    prompt: str  # the text before the buffered audio, as the next decode's prompt will hold it
    committed: list[Word]  # the committed words still in the buffer, and a few before them
    hypothesis: list[Word]  # the last deciding decode's words after the committed ones
    committed_count: int
    utterances: int
    language: str
    extensions: dict[str, Any] = field(default_factory=dict)

    def encode(self) -> bytes:
        data = {"v": VERSION, **asdict(self)}
        return json.dumps(data, separators=(",", ":")).encode()

    @staticmethod
    def decode(blob: bytes) -> SessionState:
        """The state in `blob`; ValueError when it is not a state of this version."""
        data = json.loads(blob)
        if not isinstance(data, dict) or data.get("v") != VERSION:
            raise ValueError(f"unknown session state version (this worker reads version {VERSION})")
        known = {f.name for f in fields(SessionState)}
        values = {k: v for k, v in data.items() if k in known}
        values["closing"] = tuple(values["closing"]) if values["closing"] else None
        values["committed"] = [Word(**w) for w in values["committed"]]
        values["hypothesis"] = [Word(**w) for w in values["hypothesis"]]
        return SessionState(**values)
