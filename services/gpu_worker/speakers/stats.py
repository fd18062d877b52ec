"""The speaker scheduler's figures as the health report's SpeakerStats (pure)."""

from __future__ import annotations

from services.gen import worker_pb2
from services.gpu_worker.speakers.scheduler import SpeakerScheduler


def speaker_stats_pb(scheduler: SpeakerScheduler) -> worker_pb2.SpeakerStats:
    stats = scheduler.stats
    return worker_pb2.SpeakerStats(
        windows_embedded=stats.windows_embedded,
        audio_seconds_embedded=stats.audio_seconds,
        busy_seconds_total=stats.busy_s,
        windows_queued=stats.windows_queued,
        batches=stats.batches,
    )
