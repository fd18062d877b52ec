"""A transcription session's effective settings: `session.update` merged in and checked against what the
fleet serves (GetConfig), the StreamingConfig they make, and the session object `session.created` and
`session.updated` show. Pure: no I/O."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from services.common.audio import SUPPORTED_SAMPLE_RATES
from services.common.convert import duration
from services.gen import transcription_pb2 as pb
from services.http_api.realtime.protocol import LOGPROBS, Problem, TranscriptionSession
from services.http_api.realtime.protocol import TurnDetection as TurnDetectionParams

#: Silero's working range: OpenAI takes 0 to 1, scribe keeps the effective value within this.
THRESHOLD_RANGE = (0.05, 0.95)
SILENCE_MS_RANGE = (100, 10_000)  # the worker's speech_end_timeout range
MAX_PADDING_MS = 2000
G711_RATE = 8000


@dataclass(frozen=True)
class FleetInfo:
    """What the fleet serves, from GetConfig."""

    model: str = ""
    models: tuple[str, ...] = ()
    languages: tuple[str, ...] = ()  # the default model's
    model_languages: tuple[tuple[str, tuple[str, ...]], ...] = ()  # each model's (GetConfig.models)
    sample_rates: tuple[int, ...] = SUPPORTED_SAMPLE_RATES
    max_prompt_chars: int = 1000

    @staticmethod
    def of(config: pb.GetConfigResponse) -> FleetInfo:
        # A fleet of several models (another issue's GetConfig) may list them; one model names itself.
        listed = tuple(getattr(config, "models", ()) or ())
        names = tuple(str(getattr(m, "name", m)) for m in listed) or ((config.model,) if config.model else ())
        return FleetInfo(
            model=config.model,
            models=names,
            languages=tuple(config.language_codes),
            model_languages=tuple((m.name, tuple(m.language_codes)) for m in config.models),
            sample_rates=tuple(config.sample_rates_hertz) or SUPPORTED_SAMPLE_RATES,
            max_prompt_chars=config.limits.max_initial_prompt_chars or 1000,
        )

    def languages_of(self, model: str | None) -> tuple[str, ...]:
        """The languages of the model a session names (whisper-1 or none: the default model's)."""
        for name, codes in self.model_languages:
            if name == model and codes:
                return codes
        return self.languages


@dataclass(frozen=True)
class TurnDetection:
    """Server VAD: OpenAI's defaults are the worker's (0.5, 300 ms, 500 ms)."""

    threshold: float = 0.5
    prefix_padding_ms: int = 300
    silence_duration_ms: int = 500


@dataclass(frozen=True)
class SessionSettings:
    encoding: str = "audio/pcm"  # or audio/pcmu, audio/pcma (G.711 at 8 kHz)
    rate: int = 24_000
    model: str | None = None
    language: str | None = None
    prompt: str | None = None
    keywords: tuple[str, ...] = ()
    turn_detection: TurnDetection | None = field(default_factory=TurnDetection)
    logprobs: bool = False

    @property
    def bytes_per_second(self) -> int:
        return self.rate * (2 if self.encoding == "audio/pcm" else 1)

    def stream_key(self) -> tuple[object, ...]:
        """What a running gRPC stream was opened with: a change of any of it needs a new stream."""
        return (self.encoding, self.rate, self.model, self.language, self.prompt, self.keywords, self.turn_detection)


def _language(code: str, fleet: FleetInfo, event_id: str | None, model: str | None = None) -> str:
    short = code.strip().split("-")[0].split("_")[0].lower()
    languages = fleet.languages_of(model)
    if languages and short not in languages:
        hint = "this model is English-only" if languages == ("en",) else "GET /v1/models names the model"
        raise Problem(
            f"language {code[:20]!r} is not one the fleet's model speaks ({hint}); leave it unset to detect it",
            "unsupported_language",
            "session.audio.input.transcription.language",
            event_id,
        )
    return short


def _turn_detection(given: TurnDetectionParams, event_id: str | None) -> TurnDetection:
    param = "session.audio.input.turn_detection"
    if given.type == "semantic_vad":
        raise Problem(
            "semantic_vad is not available here: use server_vad (speech ends after silence_duration_ms)",
            "unsupported_turn_detection",
            f"{param}.type",
            event_id,
        )
    base = TurnDetection()
    threshold = base.threshold if given.threshold is None else given.threshold
    if not 0 <= threshold <= 1:
        raise Problem("threshold must be between 0 and 1", "invalid_value", f"{param}.threshold", event_id)
    silence = base.silence_duration_ms if given.silence_duration_ms is None else given.silence_duration_ms
    if not SILENCE_MS_RANGE[0] <= silence <= SILENCE_MS_RANGE[1]:
        raise Problem(
            f"silence_duration_ms must be between {SILENCE_MS_RANGE[0]} and {SILENCE_MS_RANGE[1]}",
            "invalid_value",
            f"{param}.silence_duration_ms",
            event_id,
        )
    padding = base.prefix_padding_ms if given.prefix_padding_ms is None else given.prefix_padding_ms
    if not 0 <= padding <= MAX_PADDING_MS:
        raise Problem(
            f"prefix_padding_ms must be between 0 and {MAX_PADDING_MS}",
            "invalid_value",
            f"{param}.prefix_padding_ms",
            event_id,
        )
    return TurnDetection(
        threshold=min(max(threshold, THRESHOLD_RANGE[0]), THRESHOLD_RANGE[1]),
        # The worker never reaches back past the silence that ended the previous utterance.
        prefix_padding_ms=min(padding, silence),
        silence_duration_ms=silence,
    )


def apply(
    current: SessionSettings, session: TranscriptionSession, fleet: FleetInfo, event_id: str | None
) -> SessionSettings:
    """`current` with the fields present in a session.update; Problem if any is refused (nothing applied)."""
    out = current
    if "include" in session.model_fields_set:
        out = replace(out, logprobs=LOGPROBS in (session.include or []))
    audio_input = session.audio.input if session.audio is not None else None
    if audio_input is None:
        return out
    given = audio_input.model_fields_set
    if "format" in given:
        fmt = audio_input.format
        encoding = fmt.type if fmt is not None else "audio/pcm"
        rate = fmt.rate if fmt is not None and fmt.rate is not None else None
        if encoding == "audio/pcm":
            rate = rate or 24_000
            if rate not in fleet.sample_rates:
                rates = ", ".join(str(r) for r in fleet.sample_rates)
                raise Problem(
                    f"rate {rate} is not supported: use one of {rates} (OpenAI's is 24000)",
                    "invalid_value",
                    "session.audio.input.format.rate",
                    event_id,
                )
        elif rate not in (None, G711_RATE):
            raise Problem(
                f"{encoding} is G.711 at {G711_RATE} Hz", "invalid_value", "session.audio.input.format.rate", event_id
            )
        out = replace(out, encoding=encoding, rate=rate or G711_RATE)
    if "transcription" in given:
        t = audio_input.transcription
        if t is None:
            out = replace(out, model=None, language=None, prompt=None, keywords=())
        else:
            fields = t.model_fields_set
            if "model" in fields:
                out = replace(out, model=t.model or None)
            if "language" in fields or "languages" in fields:
                code = t.language or (t.languages[0] if t.languages and len(t.languages) == 1 else None)
                out = replace(out, language=_language(code, fleet, event_id, out.model) if code else None)
            if "prompt" in fields:
                out = replace(out, prompt=t.prompt or None)
            if "keywords" in fields:
                out = replace(out, keywords=tuple(k.strip() for k in t.keywords or () if k.strip()))
            if len(initial_prompt(out) or "") > fleet.max_prompt_chars:
                raise Problem(
                    f"prompt and keywords together are over {fleet.max_prompt_chars} characters",
                    "invalid_value",
                    "session.audio.input.transcription.prompt",
                    event_id,
                )
    if "turn_detection" in given:
        td = audio_input.turn_detection
        out = replace(out, turn_detection=None if td is None else _turn_detection(td, event_id))
    return out


def initial_prompt(settings: SessionSettings) -> str | None:
    """Whisper's prompt: the session's prompt, then its keywords (Whisper follows their spelling)."""
    parts = [settings.prompt or "", ", ".join(settings.keywords)]
    text = " ".join(p for p in parts if p).strip()
    return text or None


def stream_config(settings: SessionSettings) -> pb.StreamingConfig:
    """The gRPC stream for this session: LINEAR16 (G.711 is expanded first), interims, words, and speech
    events always (a manual-commit session uses them to know when the worker's text is complete)."""
    config = pb.StreamingConfig(
        encoding=pb.AUDIO_ENCODING_LINEAR16,
        sample_rate_hertz=settings.rate,
        interim_results=True,
        enable_voice_activity_events=True,
        enable_utterance_finalized_events=True,
        options=pb.RecognitionOptions(
            language_code=settings.language or "",
            initial_prompt=initial_prompt(settings) or "",
            enable_word_time_offsets=True,
        ),
    )
    td = settings.turn_detection
    if td is not None:
        config.vad_threshold = td.threshold
        config.speech_end_timeout.CopyFrom(duration(td.silence_duration_ms / 1000))
        config.speech_start_padding.CopyFrom(duration(td.prefix_padding_ms / 1000))
    if settings.model:
        # The gateway routes the stream to a worker of this model (whisper-1 and empty: the default model).
        config.options.model = settings.model
    return config


def describe(settings: SessionSettings, session_id: str, expires_at: int) -> dict[str, object]:
    """The session object of session.created / session.updated: the effective configuration."""
    fmt: dict[str, object] = {"type": settings.encoding}
    if settings.encoding == "audio/pcm":
        fmt["rate"] = settings.rate
    td = settings.turn_detection
    return {
        "type": "transcription",
        "object": "realtime.transcription_session",
        "id": session_id,
        "expires_at": expires_at,
        "audio": {
            "input": {
                "format": fmt,
                "noise_reduction": None,  # not applied: Whisper takes the audio as it comes
                "transcription": {
                    "model": settings.model or "whisper-1",
                    "language": settings.language,
                    "prompt": settings.prompt or "",
                    **({"keywords": list(settings.keywords)} if settings.keywords else {}),
                },
                "turn_detection": None
                if td is None
                else {
                    "type": "server_vad",
                    "threshold": td.threshold,
                    "prefix_padding_ms": td.prefix_padding_ms,
                    "silence_duration_ms": td.silence_duration_ms,
                },
            }
        },
        "include": [LOGPROBS] if settings.logprobs else [],
    }
