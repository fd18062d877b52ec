"""The client events of a Realtime transcription session, as the `openai` SDK (3.x) sends them, parsed
into pydantic models; every problem becomes a `Problem`, which the socket sends as an `error` event in
OpenAI's shape: {"type": "error", "event_id", "error": {"type", "code", "message", "param", "event_id"}}.

Fields follow the SDK's `RealtimeTranscriptionSessionCreateRequest` (GA Realtime API). A field the SDK
knows but scribe cannot honour is accepted and left out of `session.updated` (which shows the effective
configuration), except where ignoring it would surprise: those are refused with a message that says so.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, TypeAdapter, ValidationError

LOGPROBS = "item.input_audio_transcription.logprobs"


@dataclass
class Problem(Exception):
    """A client event scribe refuses, or a session that must end: sent as an `error` event."""

    message: str
    code: str
    param: str | None = None
    event_id: str | None = None
    type: str = "invalid_request_error"

    def error(self) -> dict[str, object]:
        return {
            "type": self.type,
            "code": self.code,
            "message": self.message,
            "param": self.param,
            "event_id": self.event_id,
        }


class _Strict(BaseModel):
    # OpenAI refuses parameters it does not know ("Unknown parameter"): so does scribe.
    model_config = ConfigDict(extra="forbid")


class AudioFormat(_Strict):
    type: Literal["audio/pcm", "audio/pcmu", "audio/pcma"] = "audio/pcm"
    #: OpenAI takes 24000 only; scribe also takes the gateway's other rates (16000 saves a browser a resampler).
    rate: int | None = None


class NoiseReduction(_Strict):
    type: Literal["near_field", "far_field"] | None = None
    strength: float | None = None


class Transcription(_Strict):
    model: str | None = None
    language: str | None = None
    prompt: str | None = None
    keywords: list[str] | None = None
    languages: list[str] | None = None
    delay: Literal["minimal", "low", "medium", "high", "xhigh"] | None = None


class TurnDetection(_Strict):
    type: Literal["server_vad", "semantic_vad"]
    threshold: float | None = None
    prefix_padding_ms: int | None = None
    silence_duration_ms: int | None = None
    create_response: bool | None = None
    interrupt_response: bool | None = None
    idle_timeout_ms: int | None = None
    eagerness: Literal["low", "medium", "high", "auto"] | None = None


class AudioInput(_Strict):
    format: AudioFormat | None = None
    noise_reduction: NoiseReduction | None = None
    transcription: Transcription | None = None
    turn_detection: TurnDetection | None = None


class Audio(_Strict):
    input: AudioInput | None = None


class TranscriptionSession(_Strict):
    type: Literal["transcription"]
    audio: Audio | None = None
    include: list[Literal["item.input_audio_transcription.logprobs"]] | None = None


class SessionUpdate(_Strict):
    type: Literal["session.update"]
    session: TranscriptionSession
    event_id: str | None = None


class Append(_Strict):
    type: Literal["input_audio_buffer.append"]
    audio: str
    event_id: str | None = None


class Commit(_Strict):
    type: Literal["input_audio_buffer.commit"]
    event_id: str | None = None


class Clear(_Strict):
    type: Literal["input_audio_buffer.clear"]
    event_id: str | None = None


ClientEvent = SessionUpdate | Append | Commit | Clear
_MODELS: dict[str, TypeAdapter[Any]] = {
    "session.update": TypeAdapter(SessionUpdate),
    "input_audio_buffer.append": TypeAdapter(Append),
    "input_audio_buffer.commit": TypeAdapter(Commit),
    "input_audio_buffer.clear": TypeAdapter(Clear),
}
#: Client events of a conversation session: known, but a transcription session has no use for them.
_CONVERSATION = ("conversation.", "response.", "output_audio_buffer.")


def _problem(exc: ValidationError, event_id: str | None) -> Problem:
    """The first pydantic error in OpenAI's words, `param` the dotted path of the field."""
    first = exc.errors()[0]
    param = ".".join(str(part) for part in first["loc"]) or None
    kind = first["type"]
    if kind == "extra_forbidden":
        return Problem(f"Unknown parameter: '{param}'.", "unknown_parameter", param, event_id)
    if kind == "missing":
        return Problem(f"Missing required parameter: '{param}'.", "missing_required_parameter", param, event_id)
    if param == "session.type":
        return Problem(
            "this socket is a transcription session (intent=transcription): session.type must be 'transcription'",
            "invalid_value",
            param,
            event_id,
        )
    code = "invalid_type" if kind.endswith("_type") or kind == "model_type" else "invalid_value"
    return Problem(f"Invalid value for '{param}': {first['msg']}.", code, param, event_id)


def parse(text: str) -> ClientEvent:
    """One text frame as a client event, or Problem."""
    try:
        data = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise Problem(
            f"the message is not valid JSON ({exc}): send one JSON object per WebSocket message", "invalid_json"
        ) from None
    if not isinstance(data, dict):
        raise Problem("a client event must be a JSON object with a 'type'", "invalid_event")
    event_id = data.get("event_id") if isinstance(data.get("event_id"), str) else None
    kind = data.get("type")
    if not isinstance(kind, str):
        raise Problem("The 'type' field is missing.", "invalid_event", "type", event_id)
    model = _MODELS.get(kind)
    if model is None:
        if kind == "transcription_session.update":
            raise Problem(
                "transcription_session.update is the beta API's; send session.update with "
                "session.type='transcription' (the GA Realtime API that openai 3.x speaks)",
                "invalid_value",
                "type",
                event_id,
            )
        if kind.startswith(_CONVERSATION):
            raise Problem(
                f"{kind} belongs to conversation sessions; this is a transcription session (intent=transcription)",
                "invalid_value",
                "type",
                event_id,
            )
        supported = ", ".join(f"'{k}'" for k in _MODELS)
        raise Problem(
            f"Invalid value: '{kind[:60]}'. Supported values are: {supported}.", "invalid_value", "type", event_id
        )
    try:
        event: ClientEvent = model.validate_python(data)
    except ValidationError as exc:
        raise _problem(exc, event_id) from None
    return event


def audio_bytes(event: Append) -> bytes:
    """The base64 audio of an append event."""
    try:
        return base64.b64decode(event.audio, validate=True)
    except (binascii.Error, ValueError):
        raise Problem(
            "audio is not valid base64: send the audio bytes base64-encoded", "invalid_value", "audio", event.event_id
        ) from None
