"""Limits on calls, uploads and streams, and how long work waits."""

from __future__ import annotations

from pydantic import BaseModel, Field


class LimitFields(BaseModel):
    """Limits on calls, uploads and streams, and how long work waits."""

    gateway_queue_size: int = Field(
        64,
        ge=0,
        le=100_000,
        description="Calls that may wait for a free worker slot. Past that: RESOURCE_EXHAUSTED with RetryInfo.",
    )
    shard_min_seconds: float = Field(
        120,
        ge=0,
        description="A `Transcribe` or `TranscribeWithProgress` at least this long is split at silences over all "
        "serving workers. `0` turns sharding off.",
    )
    stream_failover_wait_s: float = Field(
        30,
        ge=0,
        description="How long a stream or a queued call waits for a worker when none is serving (all "
        "restarting), before it fails with UNAVAILABLE `NO_WORKER_SERVING`.",
    )
    max_message_mb: int = Field(64, ge=1, le=2047, description="Largest gRPC message, in MiB.")
    max_upload_mb: int = Field(
        2048,
        ge=1,
        le=1_048_576,
        description="Largest file `TranscribeUpload` takes, in MiB; a bigger one gets OUT_OF_RANGE as soon as it "
        "passes the limit. Uploads are spooled to `RUN_DIR`, which needs this much free disk per upload in flight.",
    )
    piece_seconds: float = Field(
        120,
        ge=30,
        le=3600,
        description="A recording split over the workers (`TranscribeUpload`, a long `TranscribeWithProgress`) is "
        "cut at silences into pieces of about this length, decoded as they are needed.",
    )
    max_audio_seconds: float = Field(
        7200, ge=1, description="Longest audio in one `Transcribe`. Longer audio gets OUT_OF_RANGE."
    )
    max_stream_seconds: float = Field(
        14400,
        ge=1,
        description="Longest stream. A longer one gets OUT_OF_RANGE after its last results are sent.",
    )
    stream_idle_timeout_s: float = Field(
        30, ge=0.1, description="A stream with no audio for this long gets DEADLINE_EXCEEDED."
    )
    stream_interim_interval_s: float = Field(1.0, ge=0.1, description="Speech between two interim decodes of a stream.")
    stream_speech_end_timeout_s: float = Field(
        0.5,
        ge=0.1,
        le=10,
        description="Silence after speech that ends an utterance and makes its words final (0.1 to 10). A "
        "stream's `speech_end_timeout` overrides it.",
    )
    stream_vad_threshold: float = Field(
        0.5,
        ge=0.05,
        le=0.95,
        description="Silero speech probability from which a 32 ms window counts as speech. Raise it for noisy audio.",
    )
    max_beam_size: int = Field(10, ge=1, le=64, description="Largest `beam_size` a client may ask for.")
    max_initial_prompt_chars: int = Field(1000, ge=0, description="Longest `initial_prompt`.")
    max_concurrent_streams: int = Field(
        128, ge=1, description="Streams the gateway carries at once. More get RESOURCE_EXHAUSTED."
    )
    max_streams_per_client: int = Field(
        16,
        ge=1,
        description="Streams one client (token, else certificate, else host) may hold at once; the HTTP server "
        "holds realtime WebSocket sessions (`/v1/realtime`) to the same number per token, else per host.",
    )
    realtime_max_frame_kb: int = Field(
        1024,
        ge=16,
        le=16384,
        description="Largest WebSocket message `/v1/realtime` takes, in KiB (1024 holds about 16 s of 24 kHz "
        "PCM in base64). A larger one gets an `error` event and is dropped; one over 4 times this closes the "
        "socket (1009).",
    )
    max_decode_ratio: float = Field(
        1000,
        ge=0,
        description="Decoded audio may be at most this many times the file's size, past its first minute. `0` "
        "turns it off.",
    )
