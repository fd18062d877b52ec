"""Turn request messages into validated engine options; every refusal names the field to fix."""

from __future__ import annotations

from dataclasses import dataclass

import grpc

from services.common.config import Settings
from services.common.errors import RequestError
from services.common.models.catalogue import DEFAULT_ALIASES
from services.gen import transcription_pb2 as pb
from services.gpu_worker.engines.base import DecodeOptions, EngineInfo
from services.gpu_worker.streaming.session import SessionConfig
from services.gpu_worker.streaming.vad import VadConfig

DEFAULT_BEAM_SIZE = 5
SPEECH_END_TIMEOUT_RANGE_S = (0.1, 10.0)
VAD_THRESHOLD_RANGE = (0.05, 0.95)
SPEECH_START_PADDING_MAX_S = 2.0


@dataclass(frozen=True)
class Limits:
    max_audio_seconds: float
    max_stream_seconds: float
    stream_idle_timeout_s: float
    max_beam_size: int
    max_initial_prompt_chars: int
    max_decode_ratio: float = 0.0


#: How much of a client's string an error message repeats: a 1 MB language code must not come back
#: as a 1 MB status message (gRPC would refuse to send it, and the client would see INTERNAL).
ECHO_CHARS = 40


def echo(value: str) -> str:
    """`value` as an error message may quote it: repr'd, and cut short."""
    return repr(value) if len(value) <= ECHO_CHARS else repr(value[:ECHO_CHARS]) + f"... ({len(value)} characters)"


def _invalid(reason: str, message: str) -> RequestError:
    return RequestError(grpc.StatusCode.INVALID_ARGUMENT, reason, message)


def _languages(code: str, engine: EngineInfo) -> tuple[str, ...]:
    """The language subtags of `language_code` ("de-AT,fr" -> de, fr), each one the model knows."""
    out: list[str] = []
    for part in code.split(","):
        language = part.strip().split("-")[0].split("_")[0].lower()
        if not language:
            continue
        if language not in engine.languages:
            hint = "this model is English-only" if not engine.multilingual else "see GetConfig.language_codes"
            raise _invalid(
                "UNSUPPORTED_LANGUAGE",
                f"language_code {echo(code)} is not supported ({hint}); leave it empty to detect the language",
            )
        if language not in out:
            out.append(language)
    return tuple(out)


def check_model(requested: str, served: str, aliases: tuple[str, ...] = ()) -> None:
    """A worker serves the model it holds: a request naming another (the gateway routes by model, so only
    a client calling a worker directly meets this) is refused."""
    name = requested.strip()
    if name and name not in DEFAULT_ALIASES and name != served and name not in aliases:
        raise _invalid(
            "UNKNOWN_MODEL",
            f"model {echo(requested)} is not served by this worker, which holds {served!r}; leave model empty for it",
        )


def decode_options(options: pb.RecognitionOptions, limits: Limits, engine: EngineInfo) -> DecodeOptions:
    candidates = _languages(options.language_code, engine) if options.language_code.strip() else ()
    if len(candidates) > 1 and not engine.multilingual:
        raise _invalid("UNSUPPORTED_LANGUAGE", "this model is English-only: it cannot choose between languages")
    language = candidates[0] if len(candidates) == 1 else None
    task = "translate" if options.task == pb.TASK_TRANSLATE else "transcribe"
    if task == "translate" and not engine.multilingual:
        raise _invalid("TRANSLATE_UNSUPPORTED", "task TRANSLATE needs a multilingual model; this one is English-only")
    beam_size = options.beam_size or DEFAULT_BEAM_SIZE
    if beam_size > limits.max_beam_size:
        raise _invalid("BEAM_SIZE_TOO_LARGE", f"beam_size {beam_size} is over the maximum {limits.max_beam_size}")
    if len(options.initial_prompt) > limits.max_initial_prompt_chars:
        raise _invalid(
            "INITIAL_PROMPT_TOO_LONG",
            f"initial_prompt has {len(options.initial_prompt)} characters, over the maximum "
            f"{limits.max_initial_prompt_chars}",
        )
    return DecodeOptions(
        language=language,
        candidates=candidates if len(candidates) > 1 else (),
        task=task,
        beam_size=beam_size,
        word_timestamps=options.enable_word_time_offsets,
        vad_filter=options.vad_filter,
        initial_prompt=options.initial_prompt or None,
    )


def check_transcribe_encoding(encoding: int) -> None:
    if encoding not in (pb.AUDIO_ENCODING_UNSPECIFIED, pb.AUDIO_ENCODING_LINEAR16, pb.AUDIO_ENCODING_CONTAINER):
        raise _invalid(
            "UNSUPPORTED_ENCODING",
            f"encoding {encoding} is not an AudioEncoding this server knows: use AUDIO_ENCODING_CONTAINER "
            "(or leave it unset) for a file, AUDIO_ENCODING_LINEAR16 for raw samples",
        )


def check_streaming_encoding(config: pb.StreamingConfig) -> None:
    if config.encoding not in (pb.AUDIO_ENCODING_UNSPECIFIED, pb.AUDIO_ENCODING_LINEAR16):
        raise _invalid(
            "UNSUPPORTED_ENCODING",
            "StreamingTranscribe takes LINEAR16 audio: set encoding to AUDIO_ENCODING_LINEAR16",
        )


def session_config_from(config: pb.StreamingConfig, settings: Settings) -> SessionConfig:
    """The streaming session's schedule: server settings, with the stream's own end-of-speech timeout."""
    speech_end = settings.stream_speech_end_timeout_s
    if config.HasField("speech_end_timeout") and config.speech_end_timeout.ToNanoseconds():
        speech_end = config.speech_end_timeout.ToNanoseconds() / 1e9
        low, high = SPEECH_END_TIMEOUT_RANGE_S
        if not low <= speech_end <= high:
            raise _invalid(
                "SPEECH_END_TIMEOUT_OUT_OF_RANGE",
                f"speech_end_timeout {speech_end:g} s is outside {low:g} s to {high:g} s; "
                "leave it unset for the server default",
            )
    threshold = config.vad_threshold or settings.stream_vad_threshold
    if not VAD_THRESHOLD_RANGE[0] <= threshold <= VAD_THRESHOLD_RANGE[1]:
        raise _invalid(
            "VAD_THRESHOLD_OUT_OF_RANGE",
            f"vad_threshold {threshold:g} is outside {VAD_THRESHOLD_RANGE[0]:g} to {VAD_THRESHOLD_RANGE[1]:g}; "
            "leave it 0 for the server default",
        )
    padding = VadConfig.pre_roll_s
    if config.HasField("speech_start_padding"):
        padding = config.speech_start_padding.ToNanoseconds() / 1e9
        if not 0 <= padding <= SPEECH_START_PADDING_MAX_S:
            raise _invalid(
                "SPEECH_START_PADDING_OUT_OF_RANGE",
                f"speech_start_padding {padding:g} s is outside 0 s to {SPEECH_START_PADDING_MAX_S:g} s",
            )
    vad = VadConfig(
        threshold=threshold,
        speech_end_s=speech_end,
        # Pre-roll never reaches back past the pause that ended the previous utterance.
        pre_roll_s=min(padding, speech_end),
    )
    return SessionConfig(
        interim_interval_s=settings.stream_interim_interval_s,
        interims=config.interim_results,
        vad=vad,
    )
