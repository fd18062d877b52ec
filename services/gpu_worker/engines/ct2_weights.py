"""Whisper weights out of a CTranslate2 `model.bin`, named as Hugging Face transformers names them.

The file layout is CTranslate2's `ModelSpec._serialize` (python/ctranslate2/specs/model_spec.py):
version, spec name, revision, then each variable as name, shape, dtype and raw bytes, then aliases. The
names are those CTranslate2's `WhisperLoader` (converters/transformers.py) gives a transformers model's
weights; `hf_state_dict` reverses that mapping: fused q/k/v projections are split again (transformers'
k_proj has no bias, CTranslate2 stores zeros for it), and the output projection shares the embeddings.
Pure numpy: torch is needed only to load the result.
"""

from __future__ import annotations

import json
import re
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

# CTranslate2's DataType enum order (include/ctranslate2/types.h); bfloat16 is read as raw 16-bit words.
_DTYPES: tuple[Any, ...] = (np.float32, np.int8, np.int16, np.int32, np.float16, np.uint16)
_BFLOAT16 = 5
SUPPORTED_BINARY_VERSIONS = (5, 6)


class ConversionError(ValueError):
    """The model.bin is not a CTranslate2 Whisper model this converter understands."""


@dataclass(frozen=True)
class Ct2Model:
    spec: str
    variables: dict[str, np.ndarray]
    config: dict[str, Any]  # the folder's config.json (alignment heads, suppressed tokens)


def _bf16_to_f32(words: np.ndarray) -> np.ndarray:
    return (words.astype(np.uint32) << 16).view(np.float32)


def read_model_bin(path: Path) -> tuple[str, dict[str, np.ndarray]]:
    """(spec name, variables with aliases resolved); float weights come back as float32 or float16."""
    data = path.read_bytes()
    pos = 0

    def take(fmt: str) -> Any:
        nonlocal pos
        (value,) = struct.unpack_from(fmt, data, pos)
        pos += struct.calcsize(fmt)
        return value

    def string() -> str:
        nonlocal pos
        size = take("H")
        text = data[pos : pos + size - 1].decode("utf-8")
        pos += size
        return text

    version = take("I")
    if version not in SUPPORTED_BINARY_VERSIONS:
        raise ConversionError(
            f"{path}: CTranslate2 binary version {version}, expected one of {SUPPORTED_BINARY_VERSIONS}"
        )
    spec = string()
    take("I")  # spec revision
    variables: dict[str, np.ndarray] = {}
    for _ in range(take("I")):
        name = string()
        shape = [take("I") for _ in range(take("B"))]
        dtype = take("B")
        size = take("I")
        raw = np.frombuffer(data, dtype=_DTYPES[dtype], count=size // np.dtype(_DTYPES[dtype]).itemsize, offset=pos)
        pos += size
        value = raw.reshape(shape)
        variables[name] = _bf16_to_f32(value) if dtype == _BFLOAT16 else value
    for _ in range(take("I")):
        alias, target = string(), string()
        variables[alias] = variables[target]
    return spec, variables


def load_ct2(folder: Path) -> Ct2Model:
    spec, variables = read_model_bin(folder / "model.bin")
    if spec != "WhisperSpec":
        raise ConversionError(f"{folder}: a CTranslate2 {spec} model, not Whisper")
    if any(v.dtype == np.int8 for k, v in variables.items() if k.endswith("/weight")):
        raise ConversionError(
            f"{folder}: int8-quantized weights cannot be converted back; convert the model with "
            "--quantization float16 or float32"
        )
    config_file = folder / "config.json"
    config = json.loads(config_file.read_text()) if config_file.is_file() else {}
    return Ct2Model(spec, variables, config)


def _layers(variables: dict[str, np.ndarray], side: str) -> int:
    found = {int(m.group(1)) for k in variables if (m := re.match(rf"{side}/layer_(\d+)/", k))}
    return max(found) + 1 if found else 0


def whisper_config(model: Ct2Model) -> dict[str, Any]:
    """The keyword arguments of transformers' WhisperConfig for these weights."""
    v = model.variables
    vocab, d_model = v["decoder/embeddings/weight"].shape
    ffn = v["encoder/layer_0/ffn/linear_0/weight"].shape[0]
    return {
        "vocab_size": int(vocab),
        "num_mel_bins": int(v["encoder/conv1/weight"].shape[1]),
        "d_model": int(d_model),
        "encoder_layers": _layers(v, "encoder"),
        "decoder_layers": _layers(v, "decoder"),
        "encoder_attention_heads": int(v["encoder/num_heads"]),
        "decoder_attention_heads": int(v["decoder/num_heads"]),
        "encoder_ffn_dim": int(ffn),
        "decoder_ffn_dim": int(v["decoder/layer_0/ffn/linear_0/weight"].shape[0]),
        "max_source_positions": int(v["encoder/position_encodings/encodings"].shape[0]),
        "max_target_positions": int(v["decoder/position_encodings/encodings"].shape[0]),
        "suppress_tokens": list(model.config.get("suppress_ids", [])),
        "begin_suppress_tokens": list(model.config.get("suppress_ids_begin", [220, 50256])),
    }


def _attention(out: dict[str, np.ndarray], v: dict[str, np.ndarray], src: str, dst: str, fused: bool) -> None:
    if fused:  # self-attention: linear_0 is q, k and v stacked
        q, k, val = np.split(v[f"{src}/linear_0/weight"], 3)
        qb, _, vb = np.split(v[f"{src}/linear_0/bias"], 3)
        out_name = "linear_1"
    else:  # cross-attention: linear_0 is q, linear_1 is k and v stacked
        q, qb = v[f"{src}/linear_0/weight"], v[f"{src}/linear_0/bias"]
        k, val = np.split(v[f"{src}/linear_1/weight"], 2)
        _, vb = np.split(v[f"{src}/linear_1/bias"], 2)
        out_name = "linear_2"
    out[f"{dst}.q_proj.weight"], out[f"{dst}.q_proj.bias"] = q, qb
    out[f"{dst}.k_proj.weight"] = k
    out[f"{dst}.v_proj.weight"], out[f"{dst}.v_proj.bias"] = val, vb
    out[f"{dst}.out_proj.weight"] = v[f"{src}/{out_name}/weight"]
    out[f"{dst}.out_proj.bias"] = v[f"{src}/{out_name}/bias"]


def _norm(out: dict[str, np.ndarray], v: dict[str, np.ndarray], src: str, dst: str) -> None:
    out[f"{dst}.weight"], out[f"{dst}.bias"] = v[f"{src}/gamma"], v[f"{src}/beta"]


def _linear(out: dict[str, np.ndarray], v: dict[str, np.ndarray], src: str, dst: str) -> None:
    out[f"{dst}.weight"], out[f"{dst}.bias"] = v[f"{src}/weight"], v[f"{src}/bias"]


def hf_state_dict(model: Ct2Model) -> dict[str, np.ndarray]:
    """WhisperForConditionalGeneration's state dict (proj_out is tied to the token embeddings)."""
    v = model.variables
    out: dict[str, np.ndarray] = {}
    for conv in ("conv1", "conv2"):
        _linear(out, v, f"encoder/{conv}", f"model.encoder.{conv}")
    for side in ("encoder", "decoder"):
        out[f"model.{side}.embed_positions.weight"] = v[f"{side}/position_encodings/encodings"]
        _norm(out, v, f"{side}/layer_norm", f"model.{side}.layer_norm")
        for i in range(_layers(v, side)):
            src, dst = f"{side}/layer_{i}", f"model.{side}.layers.{i}"
            _attention(out, v, f"{src}/self_attention", f"{dst}.self_attn", fused=True)
            _norm(out, v, f"{src}/self_attention/layer_norm", f"{dst}.self_attn_layer_norm")
            if side == "decoder":
                _attention(out, v, f"{src}/attention", f"{dst}.encoder_attn", fused=False)
                _norm(out, v, f"{src}/attention/layer_norm", f"{dst}.encoder_attn_layer_norm")
            _linear(out, v, f"{src}/ffn/linear_0", f"{dst}.fc1")
            _linear(out, v, f"{src}/ffn/linear_1", f"{dst}.fc2")
            _norm(out, v, f"{src}/ffn/layer_norm", f"{dst}.final_layer_norm")
    out["model.decoder.embed_tokens.weight"] = v["decoder/embeddings/weight"]
    return out
