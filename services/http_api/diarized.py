"""Speaker labels on the HTTP face, in OpenAI's shapes (pure functions).

`response_format=diarized_json` answers {"task", "duration", "text", "segments", "usage"} with segments
{"type": "transcript.text.segment", "id", "start", "end", "text", "speaker"}, as OpenAI's
gpt-4o-transcribe-diarize does; unknown voices are "A", "B", ... in order of first appearance (OpenAI's
letters; the gRPC API numbers them "1", "2", ...), known speakers their names. `known_speaker_names[]`
and `known_speaker_references[]` (data URLs of 2 to 30 s clips, at most 4) name voices; they turn speaker
labels on for any response format.
"""

from __future__ import annotations

import base64
import binascii
import string
from collections.abc import Sequence

from scribe_client.formats import milliseconds

from services.common.config.speakers import MAX_KNOWN_SPEAKERS
from services.gen import transcription_pb2 as pb
from services.http_api.errors import HttpError

NAMES = "known_speaker_names[]"
REFERENCES = "known_speaker_references[]"


def openai_label(label: str) -> str:
    """OpenAI's label for a speaker: "A" for our "1", ... ; a known speaker's name as it is."""
    if label.isdigit() and 1 <= int(label) <= len(string.ascii_uppercase):
        return string.ascii_uppercase[int(label) - 1]
    return label


def _seconds(d: object) -> float:
    return milliseconds(d) / 1000  # type: ignore[arg-type]


def diarized_json_body(response: pb.TranscribeResponse) -> dict[str, object]:
    duration = _seconds(response.audio_duration)
    return {
        "task": "transcribe",
        "duration": duration,
        "text": response.transcript,
        "segments": [
            {
                "type": "transcript.text.segment",
                "id": f"seg_{s.id:03d}",
                "start": _seconds(s.start_offset),
                "end": _seconds(s.end_offset),
                "text": s.text.strip(),
                "speaker": openai_label(s.speaker_label),
            }
            for s in response.segments
            if s.text.strip()
        ],
        "usage": {"type": "duration", "seconds": duration},
    }


def data_url_bytes(url: str, index: int) -> bytes:
    """The bytes of a `data:<media type>;base64,<data>` URL; 400 naming the entry when it is not one."""
    head, sep, data = url.partition(",")
    if not sep or not head.startswith("data:") or not head.endswith(";base64"):
        raise HttpError(
            400,
            f"{REFERENCES} entry {index} must be a data URL: data:audio/wav;base64,...",
            "invalid_value",
            REFERENCES,
        )
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise HttpError(400, f"{REFERENCES} entry {index} is not valid base64", "invalid_value", REFERENCES) from None


def known_speakers(names: Sequence[str], references: Sequence[str]) -> dict[str, bytes]:
    """Name -> clip bytes from the two form lists, which must pair up."""
    if len(names) != len(references):
        raise HttpError(
            400,
            f"{NAMES} has {len(names)} entries and {REFERENCES} {len(references)}: give one clip per name",
            "invalid_value",
            REFERENCES,
        )
    if len(names) > MAX_KNOWN_SPEAKERS:
        raise HttpError(400, f"at most {MAX_KNOWN_SPEAKERS} known speakers, got {len(names)}", "invalid_value", NAMES)
    return {name: data_url_bytes(url, i) for i, (name, url) in enumerate(zip(names, references, strict=True))}
