"""Whisper on PyTorch (Hugging Face transformers' WhisperForConditionalGeneration) behind the `Engine`
interface: for GPUs CTranslate2 has no kernels for (CUDA 13, Blackwell), where PyTorch from PyPI runs.

Per batch of windows: one encoder pass, one `generate` call (beam search at temperature 0, `BEST_OF`
samples above it) with Whisper's timestamp, blank and non-speech rules as transformers' logits
processors, one teacher-forced decoder pass that scores the result (log-probability, no-speech
probability), and, when words are asked for, one alignment pass over the cross-attention heads Whisper
names for it, warped to audio frames as openai-whisper and CTranslate2 do. Everything else (prompts,
judging a decode, segments, grouping tokens into words) is `WhisperWindowEngine`'s, shared with the
CTranslate2 engine.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import numpy as np
import structlog
import torch
import transformers
from faster_whisper import WhisperModel
from faster_whisper.feature_extractor import FeatureExtractor
from faster_whisper.tokenizer import _LANGUAGE_CODES
from transformers import GenerationConfig, GenerationMixin, LogitsProcessorList
from transformers.generation.logits_process import (
    SuppressTokensAtBeginLogitsProcessor,
    SuppressTokensLogitsProcessor,
    WhisperTimeStampLogitsProcessor,
)
from transformers.modeling_outputs import BaseModelOutput
from transformers.models.whisper.generation_whisper import _dynamic_time_warping, _median_filter

from services.common.config import Settings
from services.gpu_worker.engines import torch_models
from services.gpu_worker.engines.base import EngineInfo, WindowJob, WindowResult
from services.gpu_worker.engines.choice import torch_compute_type
from services.gpu_worker.engines.encoder_length import EncoderLengths
from services.gpu_worker.engines.whisper_windows import (
    BEST_OF,
    MAX_INITIAL_TIMESTAMP_S,
    Decoded,
    WhisperWindowEngine,
    guarded_find_alignment,
)
from services.gpu_worker.guard import is_device_error

log = structlog.get_logger()

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def resolve_torch_device(requested: str) -> str:
    """auto means CUDA when torch sees a GPU (CUDA_VISIBLE_DEVICES already bound it)."""
    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if requested == "cuda" and not torch.cuda.is_available():
        raise ValueError("WHISPER_DEVICE=cuda but torch sees no CUDA device (a CPU-only torch build?)")
    return requested


@dataclass(frozen=True)
class Alignment:
    """What faster-whisper's find_alignment reads of CTranslate2's align() result."""

    alignments: list[tuple[int, int]]
    text_token_probs: list[float]


class _Host:
    """The parts of faster-whisper's WhisperModel that `WhisperWindowEngine` uses, without CTranslate2:
    its prompt builder and word grouping run unchanged, with `model.align` answered by `TorchWhisperEngine`."""

    get_prompt = WhisperModel.get_prompt
    add_word_timestamps = WhisperModel.add_word_timestamps
    find_alignment = guarded_find_alignment

    def __init__(self, hf_tokenizer: Any, n_mels: int, aligner: Any) -> None:
        self.hf_tokenizer = hf_tokenizer
        self.feature_extractor = FeatureExtractor(feature_size=n_mels)
        self.input_stride = 2
        self.num_samples_per_token = self.feature_extractor.hop_length * self.input_stride
        self.frames_per_second = self.feature_extractor.sampling_rate // self.feature_extractor.hop_length
        self.tokens_per_second = self.feature_extractor.sampling_rate // self.num_samples_per_token
        self.time_precision = 0.02
        self.max_length = 448
        self.model = aligner


class TorchWhisperEngine(WhisperWindowEngine):
    def __init__(self, settings: Settings) -> None:
        device = resolve_torch_device(settings.whisper_device)
        dtype_name = torch_compute_type(settings.whisper_compute_type, device)
        if device == "cpu":
            torch.set_num_threads(settings.cpu_threads_per_worker())
        loaded = torch_models.load(
            settings.whisper_model, _DTYPES[dtype_name], cache_dir=settings.model_cache_dir, run_dir=settings.run_dir
        )
        # The worker's CUDA_VISIBLE_DEVICES holds only its configured GPU, so inside it is index 0.
        self._device = torch.device("cuda:0" if device == "cuda" else "cpu")
        self._model = loaded.model.to(self._device).eval()
        # Our processors carry Whisper's rules; generate must not add its own from the checkpoint's config.
        self._model.generation_config.suppress_tokens = None
        self._model.generation_config.begin_suppress_tokens = None
        # Prompts of a batch have equal length, so there is no padding for an attention mask to hide.
        transformers.logging.set_verbosity_error()
        self._dtype = _DTYPES[dtype_name]
        self._heads = loaded.alignment_heads
        self._synthetic_tokens = loaded.synthetic_tokens
        config = self._model.config
        multilingual = config.vocab_size >= 51865
        host = _Host(loaded.tokenizer, config.num_mel_bins, self)
        languages = tuple(c for c in _LANGUAGE_CODES if loaded.tokenizer.token_to_id(f"<|{c}|>") is not None)
        self._language_ids = [loaded.tokenizer.token_to_id(f"<|{c}|>") for c in languages]
        self.info = EngineInfo(
            name=f"torch {torch.__version__.split('+')[0]} (transformers {transformers.__version__})",
            model=loaded.name,
            device=f"cuda:{settings.worker_device_id}" if device == "cuda" else "cpu",
            device_kind=device,
            compute_type=dtype_name,
            multilingual=multilingual,
            languages=languages if multilingual else ("en",),
        )
        super().__init__(host, multilingual, EncoderLengths(settings.encoder_min_seconds))
        tokenizer = self._tokenizer("transcribe", None)
        self._eot, self._sot, self._no_speech = tokenizer.eot, tokenizer.sot, tokenizer.no_speech
        self._no_timestamps = tokenizer.no_timestamps

    def decode_batch(self, jobs: Any) -> list[WindowResult]:
        try:
            with torch.inference_mode():
                return super().decode_batch(jobs)
        except RuntimeError as exc:
            if is_device_error(exc) and self._device.type == "cuda":
                torch.cuda.empty_cache()  # what the failed batch held goes back before the guard's next look
            raise

    # --- the network ---------------------------------------------------------------------------

    def _encode(self, features: np.ndarray) -> torch.Tensor:
        inputs = torch.from_numpy(features).to(self._device, self._dtype)
        encoder = self._model.model.encoder
        if inputs.shape[-1] == self._host.feature_extractor.nb_max_frames:
            return encoder(input_features=inputs).last_hidden_state
        return encode_at_length(encoder, inputs)

    def _decoder_logits(self, encoded: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        hidden = self._model.model.decoder(input_ids=tokens, encoder_hidden_states=encoded, use_cache=False)
        return self._model.proj_out(hidden.last_hidden_state).float()

    def _detect(self, encoded: torch.Tensor) -> list[list[tuple[str, float]]]:
        start = torch.full((encoded.shape[0], 1), self._sot, device=self._device)
        logits = self._decoder_logits(encoded, start)[:, 0, self._language_ids]
        probs = logits.softmax(-1).float().cpu()
        order = probs.argsort(-1, descending=True).tolist()
        return [
            [(f"<|{self.info.languages[i]}|>", float(probs[row, i])) for i in ranks] for row, ranks in enumerate(order)
        ]

    def _processors(self, prompt_len: int, timestamps: bool, suppress: list[int]) -> LogitsProcessorList:
        device = str(self._device)
        processors: list[Any] = [
            SuppressTokensLogitsProcessor(suppress, device=device),
            SuppressTokensAtBeginLogitsProcessor([220, self._eot], prompt_len, device=device),
        ]
        if timestamps:
            rules = SimpleNamespace(
                no_timestamps_token_id=self._no_timestamps,
                eos_token_id=self._eot,
                bos_token_id=self._eot,
                max_initial_timestamp_index=round(MAX_INITIAL_TIMESTAMP_S / self._host.time_precision),
            )
            processors.append(WhisperTimeStampLogitsProcessor(rules, begin_index=prompt_len))  # type: ignore[arg-type]
        return LogitsProcessorList(processors)

    def _generate(
        self, encoded: torch.Tensor, prompts: list[list[int]], first: WindowJob, suppress: list[int]
    ) -> list[Decoded]:
        prompt_len = len(prompts[0])
        sampling = first.temperature > 0
        samples = BEST_OF if sampling else 1
        fixed = self._synthetic_tokens
        length = {"min_new_tokens": fixed, "max_new_tokens": fixed} if fixed else {"max_length": self._host.max_length}
        config = GenerationConfig(
            **length,
            num_beams=1 if sampling else max(1, first.options.beam_size),
            do_sample=sampling,
            temperature=first.temperature if sampling else 1.0,
            top_k=0 if sampling else None,  # openai-whisper samples from the whole distribution
            num_return_sequences=samples,
            early_stopping=True,
            length_penalty=1.0,
            eos_token_id=self._eot,
            pad_token_id=self._eot,
            decoder_start_token_id=self._sot,
        )
        timestamps = self._no_timestamps not in prompts[0]
        # GenerationMixin's generate, not WhisperGenerationMixin's: the windows are already cut and the
        # prompts built, and one call decodes the whole batch.
        out = GenerationMixin.generate(
            self._model,
            encoder_outputs=BaseModelOutput(last_hidden_state=encoded),  # type: ignore[arg-type]
            decoder_input_ids=torch.tensor(prompts, device=self._device),
            generation_config=config,
            logits_processor=self._processors(prompt_len, timestamps, suppress),
        )
        sequences = out.sequences if hasattr(out, "sequences") else out
        generated = [_until_eot(row[prompt_len:].tolist(), self._eot) for row in sequences]
        repeated = [p for p in prompts for _ in range(samples)]
        expanded = encoded.repeat_interleave(samples, dim=0) if samples > 1 else encoded
        scored = self._score(expanded, repeated, generated)
        if fixed:  # random weights: every decode would look wrong and be retried at each temperature
            scored = [Decoded(d.tokens, 0.0, 0.0) for d in scored]
        # Of a window's samples, the most probable per token (openai-whisper's rule for best_of).
        return [
            max(scored[i * samples : (i + 1) * samples], key=lambda d: d.sum_logprob / (len(d.tokens) + 1))
            for i in range(len(prompts))
        ]

    def _score(self, encoded: torch.Tensor, prompts: list[list[int]], generated: list[list[int]]) -> list[Decoded]:
        """Each decode's log-probability (its tokens and end-of-text) and the no-speech probability at
        <|startoftranscript|>, from one teacher-forced pass."""
        rows = [p + g + [self._eot] for p, g in zip(prompts, generated, strict=True)]
        width = max(len(r) for r in rows)
        tokens = torch.tensor([r + [self._eot] * (width - len(r)) for r in rows], device=self._device)
        logprobs = self._decoder_logits(encoded, tokens).log_softmax(-1)
        out = []
        for i, (prompt, gen) in enumerate(zip(prompts, generated, strict=True)):
            at = torch.arange(len(prompt) - 1, len(prompt) + len(gen), device=self._device)
            total = float(logprobs[i, at, tokens[i, at + 1]].sum())
            no_speech = float(logprobs[i, prompt.index(self._sot), self._no_speech].exp())
            out.append(Decoded(gen, total, no_speech))
        return out

    # --- word alignment (called by faster-whisper's find_alignment as `model.align`) ------------

    def align(
        self,
        encoded: torch.Tensor,
        sot_sequence: list[int],
        text_tokens: list[list[int]],
        num_frames: list[int],
        median_filter_width: int = 7,
    ) -> list[Alignment]:
        rows = [[*sot_sequence, self._no_timestamps, *t, self._eot] for t in text_tokens]
        width = max(len(r) for r in rows)
        tokens = torch.tensor([r + [self._eot] * (width - len(r)) for r in rows], device=self._device)
        layers = sorted({layer for layer, _ in self._heads})
        captured: dict[int, torch.Tensor] = {}
        hooks = [
            self._model.model.decoder.layers[layer].encoder_attn.register_forward_pre_hook(
                _capture(captured, layer), with_kwargs=True
            )
            for layer in layers
        ]
        try:
            probs = self._decoder_logits(encoded, tokens).softmax(-1)
        finally:
            for hook in hooks:
                hook.remove()
        scores = {layer: self._cross_scores(captured[layer], encoded, layer) for layer in layers}
        weights = torch.stack([scores[layer][:, head] for layer, head in self._heads], 1)
        results = []
        start = len(sot_sequence)
        for i, (text, frames) in enumerate(zip(text_tokens, num_frames, strict=True)):
            if not text:
                results.append(Alignment([], []))
                continue
            w = weights[i, :, : len(rows[i]), : frames // 2].softmax(-1)
            std, mean = torch.std_mean(w, dim=-2, keepdim=True, unbiased=False)
            w = _median_filter((w - mean) / std, median_filter_width)
            matrix = w.mean(0)[start:-1]
            text_idx, time_idx = _dynamic_time_warping(-matrix.double().cpu().numpy())
            token_probs = probs[i, torch.arange(start, start + len(text)), torch.tensor(text)].tolist()
            results.append(Alignment(list(zip(text_idx.tolist(), time_idx.tolist(), strict=True)), token_probs))
        return results

    def _cross_scores(self, hidden: torch.Tensor, encoded: torch.Tensor, layer: int) -> torch.Tensor:
        """Layer's cross-attention logits (batch, heads, tokens, frames), before the softmax: SDPA does not
        hand out attention weights, so they are recomputed from its projections."""
        attn = self._model.model.decoder.layers[layer].encoder_attn
        heads = self._model.config.decoder_attention_heads
        batch, length, dim = hidden.shape
        q = attn.q_proj(hidden).view(batch, length, heads, -1).transpose(1, 2)
        k = attn.k_proj(encoded).view(batch, encoded.shape[1], heads, -1).transpose(1, 2)
        return (q.float() @ k.float().transpose(-1, -2)) * (dim // heads) ** -0.5


def encode_at_length(encoder: Any, features: torch.Tensor) -> torch.Tensor:
    """transformers' WhisperEncoder.forward for an input shorter than 30 s: the library refuses any length
    but 3000 frames and adds all 1500 positional embeddings; here the input's own first positions are
    added (what CTranslate2 does), with the library's own layers, unchanged and unpatched."""
    hidden = torch.nn.functional.gelu(encoder.conv1(features))
    hidden = torch.nn.functional.gelu(encoder.conv2(hidden)).permute(0, 2, 1)
    hidden = hidden + encoder.embed_positions.weight[: hidden.shape[1]]
    for layer in encoder.layers:
        out = layer(hidden, None)
        hidden = out[0] if isinstance(out, tuple) else out  # a tuple in some transformers releases
    return encoder.layer_norm(hidden)


def _capture(into: dict[int, torch.Tensor], layer: int) -> Any:
    def hook(module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        into[layer] = args[0] if args else kwargs["hidden_states"]

    return hook


def _until_eot(tokens: list[int], eot: int) -> list[int]:
    return tokens[: tokens.index(eot)] if eot in tokens else tokens
