"""A synthetic Whisper model for throughput on a GPU: the shape of a real one, random weights, and a fixed
number of decoded tokens per window (the torch engine reads `scribe_synthetic_tokens` from its folder), so
that runs compare like for like with a claim made on real speech. Its words are noise: WER is measured
on the embedded tiny.en only. Written to the machine's disk at run time; nothing of it travels."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

# WhisperConfig arguments. The vocabulary is the English one of the embedded tokenizer (51864): one token
# fewer than large-v2's, which changes nothing measurable in the cost of a decode.
SHAPES: dict[str, dict[str, int]] = {
    "large-v2": {"d_model": 1280, "encoder_layers": 32, "decoder_layers": 32, "heads": 20, "ffn": 5120},
    "tiny": {"d_model": 384, "encoder_layers": 4, "decoder_layers": 4, "heads": 6, "ffn": 1536},
}


def build(folder: Path, shape: str, tokens: int, dtype: str = "float16", device: str = "cpu") -> Path:
    """Random weights made on `device`: 1.5 billion of them take a minute on CPUs, a second on a GPU."""
    import torch
    import transformers

    from services.gpu_worker.engines.torch_models import SYNTHETIC_KEY, _embedded_folder

    s = SHAPES[shape]
    config = transformers.WhisperConfig(
        vocab_size=51864,
        num_mel_bins=80,
        d_model=s["d_model"],
        encoder_layers=s["encoder_layers"],
        decoder_layers=s["decoder_layers"],
        encoder_attention_heads=s["heads"],
        decoder_attention_heads=s["heads"],
        encoder_ffn_dim=s["ffn"],
        decoder_ffn_dim=s["ffn"],
    )
    torch.manual_seed(0)
    with torch.device(device):
        model = transformers.WhisperForConditionalGeneration(config).to(getattr(torch, dtype))
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    generation = json.loads((folder / "generation_config.json").read_text())
    generation[SYNTHETIC_KEY] = tokens
    (folder / "generation_config.json").write_text(json.dumps(generation, indent=2) + "\n")
    shutil.copy(_embedded_folder() / "tokenizer.json", folder / "tokenizer.json")
    return folder
