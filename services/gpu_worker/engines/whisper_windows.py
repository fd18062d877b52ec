"""Batched decoding of Whisper windows, shared by every Whisper runtime (CTranslate2, PyTorch).

What is the same whichever runtime runs the network lives here: log-mel features, prompts and which
windows may share a batch, judging a decode (silence, repetition, low probability), cutting the tokens
into segments, and word times, which faster-whisper's own code groups into words from the cross-attention
alignment the runtime computes. A runtime implements the four network calls: encode, detect the
language, generate, and (through its `host.model.align`) align text to audio.
"""

from __future__ import annotations

import math
import zlib
from abc import ABC, abstractmethod
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np
import structlog
from faster_whisper import WhisperModel
from faster_whisper.audio import pad_or_trim
from faster_whisper.tokenizer import Tokenizer
from faster_whisper.transcribe import get_suppressed_tokens

from services.gpu_worker.engines.base import EngineInfo, Segment, WindowJob, WindowResult, Word
from services.gpu_worker.engines.encoder_length import EncoderLengths
from services.gpu_worker.engines.timestamps import split_by_timestamps

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
#: prompts differ batch together: <|startoftranscript|> must sit at one position per batch.
PROMPT_BUCKETS = (0, 8, 16, 32, 64)


def guarded_find_alignment(self: Any, tokenizer: Any, text_tokens: Any, *args: Any, **kwargs: Any) -> list[Any]:
    """faster-whisper's find_alignment, except that a failed alignment cannot fail a whole request.

    On a sliver of audio (about 10 ms) Whisper still writes a token, the alignment comes back empty for
    it, and faster-whisper's find_alignment raises IndexError (SYSTRAN/faster-whisper #1342, fix proposed
    in #1460). The window then keeps its text and segment times, without words.
    """
    try:
        return WhisperModel.find_alignment(self, tokenizer, text_tokens, *args, **kwargs)
    except IndexError as exc:
        log.warning("word_alignment_failed", error=str(exc), segments=len(text_tokens))
        return [[] for _ in text_tokens]


@dataclass(frozen=True)
class Decoded:
    """One window's generated tokens (without the prompt, without end-of-text)."""

    tokens: list[int]
    sum_logprob: float
    no_speech_prob: float


def compression_ratio(text: str) -> float:
    data = text.encode("utf-8")
    return len(data) / len(zlib.compress(data)) if data else 0.0


def plain(job: WindowJob) -> bool:
    """Decode without timestamp tokens: a live stream's window is one segment whose word times come from
    alignment, and the timestamp tokens would only make its decode (the latency a caption waits) longer."""
    return job.options.single_window


def bucketed(tokens: list[int]) -> list[int]:
    """The most recent tokens, as many as the largest bucket that fits."""
    size = max(b for b in PROMPT_BUCKETS if b <= len(tokens))
    return tokens[len(tokens) - size :] if size else []


class WhisperWindowEngine(ABC):
    """`host` is faster-whisper's WhisperModel or an object with the same attributes (feature_extractor,
    hf_tokenizer, max_length, time_precision, frames_per_second, get_prompt, add_word_timestamps);
    `decode_batch` runs on the batch scheduler's one thread."""

    info: EngineInfo

    def __init__(self, host: Any, multilingual: bool, lengths: EncoderLengths) -> None:
        self._host = host
        self._multilingual = multilingual
        self.lengths = lengths  # the encoder-length rule (ENCODER_MIN_SECONDS); benchmarks change it
        self._tokenizer = lru_cache(maxsize=64)(self._make_tokenizer)
        self._suppress = lru_cache(maxsize=64)(self._make_suppress)

    # --- what a runtime implements ---------------------------------------------------------------

    @abstractmethod
    def _encode(self, features: np.ndarray) -> Any:
        """The encoder's output for a batch of log-mel windows."""

    @abstractmethod
    def _detect(self, encoded: Any) -> list[list[tuple[str, float]]]:
        """Language tokens ("<|en|>") and their probabilities, most probable first, per window."""

    @abstractmethod
    def _generate(self, encoded: Any, prompts: list[list[int]], first: WindowJob, suppress: list[int]) -> list[Decoded]:
        """Decode each window after its prompt with `first`'s beam size and temperature: at temperature 0
        beam search, above it `BEST_OF` samples and the most probable one."""

    # --- shared ----------------------------------------------------------------------------------

    def _make_tokenizer(self, task: str, language: str | None) -> Tokenizer:
        return Tokenizer(self._host.hf_tokenizer, self._multilingual, task=task, language=language or "en")

    def _make_suppress(self, task: str, language: str | None) -> tuple[int, ...]:
        return tuple(get_suppressed_tokens(self._tokenizer(task, language), (-1,)) or ())

    def _previous(self, job: WindowJob) -> list[int]:
        prompt = (job.options.initial_prompt or "").strip()
        if not prompt:
            return []
        tokens = self._tokenizer(job.options.task, job.options.language).encode(" " + prompt)
        tokens = tokens[-(self._host.max_length // 2 - 1) :]
        return bucketed(tokens) if job.flexible_prompt else tokens

    def _features(self, audio: np.ndarray, frames: int) -> np.ndarray:
        """Log-mel of one window as `frames` frames, its audio padded with silence first, as Whisper was
        trained: padding the spectrogram instead reads as noise to the model, which then stops early.
        (Frames are local and the padding is silence, so these are the first frames of the 30 s window's.)"""
        extractor = self._host.feature_extractor
        padding = max(0, frames * extractor.hop_length - audio.size)
        return pad_or_trim(extractor(audio, padding=padding)[..., :frames], frames)

    def encoder_seconds(self, job: WindowJob) -> float:
        return self.lengths.at_least(job.audio.size / self._host.feature_extractor.sampling_rate, job.encode_s)

    def _frames(self, jobs: Sequence[WindowJob]) -> int:
        """The batch's encoder input in log-mel frames: its longest window's, an even number (the encoder
        halves it), at most 30 s."""
        extractor = self._host.feature_extractor
        seconds = max(self.encoder_seconds(job) for job in jobs)
        frames = math.ceil(round(seconds * extractor.sampling_rate) / extractor.hop_length)
        return min(frames + frames % 2, extractor.nb_max_frames)

    def batch_key(self, job: WindowJob) -> Hashable:
        """Windows batch when <|startoftranscript|> sits at one position (same number of prompt tokens),
        they decode the same way (beam, temperature, timestamp mode) and their encoder input is as long:
        a window's words then never depend on its batch mates, and on a CPU, where each window of a
        batch costs what it costs alone, a short window never pays for a long one's input. Language and
        task may differ."""
        return (len(self._previous(job)), job.options.beam_size, job.temperature, plain(job), self.encoder_seconds(job))

    def _late_timestamps(self, tok: Tokenizer, frames: int) -> list[int]:
        """Timestamp tokens past the end of the encoder's input: a time the model was not given."""
        last = tok.timestamp_begin + round(frames / self._host.frames_per_second / self._host.time_precision)
        full = tok.timestamp_begin + round(self._host.feature_extractor.chunk_length / self._host.time_precision)
        return list(range(last + 1, full + 1))

    def decode_batch(self, jobs: Sequence[WindowJob]) -> list[WindowResult]:
        frames_in = self._frames(jobs)
        features = np.stack([self._features(job.audio, frames_in) for job in jobs])
        encoded = self._encode(features)
        languages = self._languages(jobs, encoded)
        tokenizers = [self._tokenizer(job.options.task, lang) for job, (lang, _) in zip(jobs, languages, strict=True)]
        prompts = [
            self._host.get_prompt(tok, previous_tokens=self._previous(job), without_timestamps=plain(job))
            for job, tok in zip(jobs, tokenizers, strict=True)
        ]
        suppress = [
            *self._suppress(jobs[0].options.task, languages[0][0]),
            *self._late_timestamps(tokenizers[0], frames_in),
        ]
        outputs = self._generate(encoded, prompts, jobs[0], suppress)
        windows: list[list[dict[str, Any]]] = []
        judged: list[tuple[float, bool, float]] = []
        frames = []
        precision = self._host.time_precision
        for job, tok, out in zip(jobs, tokenizers, outputs, strict=True):
            tokens = out.tokens
            avg_logprob = out.sum_logprob / (len(tokens) + 1)
            text = tok.decode(tokens).strip()
            silent = out.no_speech_prob > NO_SPEECH_THRESHOLD and avg_logprob < LOG_PROB_THRESHOLD
            fallback = not silent and (
                compression_ratio(text) > COMPRESSION_RATIO_THRESHOLD or avg_logprob < LOG_PROB_THRESHOLD
            )
            duration = job.audio.size / self._host.feature_extractor.sampling_rate
            frames.append(min(math.ceil(duration) * self._host.frames_per_second, frames_in))
            parts = [
                {"seek": 0, "start": part.start, "end": part.end, "tokens": list(part.tokens)}
                for part in split_by_timestamps(tokens, tok.timestamp_begin, tok.eot, precision, duration)
            ]
            windows.append([] if silent else parts)
            ended_on_time = bool(tokens) and tokens[-1] >= tok.timestamp_begin and not silent
            covered = (tokens[-1] - tok.timestamp_begin) * precision if ended_on_time else duration
            judged.append((avg_logprob, fallback, covered))
        self._add_words(jobs, tokenizers, windows, encoded, frames)
        return [
            WindowResult(
                segments=_segments(parts, tok, out, avg, lang),
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
        """Each window's language: as asked, or detected from its own audio on a multilingual model (only
        among the call's candidates when it named several)."""
        if not self._multilingual or all(job.options.language for job in jobs):
            return [(job.options.language or "en", 1.0) for job in jobs]
        detected = self._detect(encoded)
        return [
            (job.options.language, 1.0) if job.options.language else pick_language(ranked, job.options.candidates)
            for job, ranked in zip(jobs, detected, strict=True)
        ]

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
        self._host.add_word_timestamps(
            padded, tokenizers[0], encoded, frames, PREPEND_PUNCTUATIONS, APPEND_PUNCTUATIONS, 0.0
        )
        for job, parts in zip(jobs, windows, strict=True):
            if not job.options.word_timestamps:
                for part in parts:
                    part.pop("words", None)


def pick_language(ranked: list[tuple[str, float]], candidates: tuple[str, ...]) -> tuple[str, float]:
    """The most probable language ("<|de|>" tokens ranked) among `candidates` (all when empty), with its
    probability renormalised over the candidates."""
    codes = [(token[2:-2], prob) for token, prob in ranked]
    if candidates:
        codes = [(code, prob) for code, prob in codes if code in candidates] or codes
    total = sum(prob for _, prob in codes) if candidates else 1.0
    code, prob = codes[0]
    return code, float(prob / total) if total > 0 else 0.0


def _segments(
    parts: list[dict[str, Any]], tok: Tokenizer, out: Decoded, avg_logprob: float, language: str
) -> tuple[Segment, ...]:
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
                no_speech_prob=out.no_speech_prob,
                language=language,
            )
        )
    return tuple(segments)
