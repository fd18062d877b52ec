"""Which Whisper runtime a worker loads (`WHISPER_ENGINE`); `loading` loads it.

`auto` keeps CTranslate2 wherever it can run: on its GPU, and on a machine with no GPU. It picks torch
only when the worker's GPU is visible to torch but not to CTranslate2, which is what a CUDA 13 stack or a
Blackwell GPU looks like today (CTranslate2 ships CUDA 12 builds only). NVML is asked first so that a
machine without a GPU never pays for importing torch.
"""

from __future__ import annotations

import importlib.util

import ctranslate2
import structlog

from services.common.config import ConfigError, Settings

log = structlog.get_logger()

TORCH_EXTRA = "pip install 'scribe[torch]'"


TORCH_DTYPES = ("float32", "float16", "bfloat16")


def torch_compute_type(requested: str, device: str) -> str:
    """The torch engine's dtype name: float16 on CUDA and float32 on CPU unless set."""
    if requested == "auto":
        return "float16" if device == "cuda" else "float32"
    if requested not in TORCH_DTYPES:
        raise ConfigError(
            f"WHISPER_COMPUTE_TYPE={requested!r} is a CTranslate2 type; the torch engine takes auto, "
            f"{', '.join(TORCH_DTYPES)}"
        )
    if device == "cpu" and requested != "float32":
        raise ConfigError(f"WHISPER_COMPUTE_TYPE={requested!r} on CPU: the torch engine runs float32 there")
    return requested


def torch_installed() -> bool:
    return all(importlib.util.find_spec(name) is not None for name in ("torch", "transformers"))


def _nvml_sees_gpu() -> bool:
    try:
        import pynvml

        pynvml.nvmlInit()
        return bool(pynvml.nvmlDeviceGetCount() > 0)
    except Exception:  # no driver, no library: no GPU
        return False


def choose(settings: Settings) -> str:
    """ "ctranslate2" or "torch"; ConfigError when torch is asked for and not installed."""
    wanted = settings.whisper_engine
    if wanted == "torch":
        if not torch_installed():
            raise ConfigError(f"WHISPER_ENGINE=torch needs PyTorch and transformers: {TORCH_EXTRA}")
        return "torch"
    if wanted == "ctranslate2" or settings.whisper_device == "cpu":
        return "ctranslate2"
    if ctranslate2.get_cuda_device_count() > 0 or not _nvml_sees_gpu():
        return "ctranslate2"
    if not torch_installed():
        log.warning("gpu_not_usable_by_ctranslate2", hint=f"{TORCH_EXTRA} to run on it with the torch engine")
        return "ctranslate2"
    import torch

    return "torch" if torch.cuda.is_available() else "ctranslate2"
