"""Loading the engine `choice.choose` picked: the torch engine is imported only when it is the one asked for,
so a worker without the torch extra never imports torch."""

from __future__ import annotations

from services.common.config import Settings
from services.gpu_worker.engines.base import Engine


def load_engine(settings: Settings, kind: str) -> Engine:
    """The worker's engine of `kind` (from `choose`), loaded (blocking: seconds to minutes)."""
    if kind == "torch":
        from services.gpu_worker.engines.torch_engine import TorchWhisperEngine

        return TorchWhisperEngine(settings)
    from services.gpu_worker.engines.faster_whisper_engine import FasterWhisperEngine

    return FasterWhisperEngine(settings)
