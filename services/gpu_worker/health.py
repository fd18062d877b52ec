"""The worker's WorkerService: its device, memory, model and load, as the gateway polls them.

Light to import: a worker whose model is unloaded (WORKER_IDLE_UNLOAD_S) answers health with none of the
model's libraries in memory.
"""

from __future__ import annotations

import time

import grpc
from google.protobuf import duration_pb2

from services.common.config import Settings
from services.gen import worker_pb2, worker_pb2_grpc
from services.gpu_worker.device import DeviceProbe, process_rss_bytes
from services.gpu_worker.lifecycle import ModelHolder
from services.gpu_worker.runtime import WorkerRuntime


def _duration(seconds: float) -> duration_pb2.Duration:
    out = duration_pb2.Duration()
    out.FromNanoseconds(round(seconds * 1e9))
    return out


class WorkerServicer(worker_pb2_grpc.WorkerServiceServicer):
    def __init__(self, runtime: WorkerRuntime, probe: DeviceProbe, settings: Settings, holder: ModelHolder) -> None:
        self._rt = runtime
        self.probe = probe
        self._settings = settings
        self._holder = holder

    def health(self) -> worker_pb2.WorkerHealth:
        rt = self._rt
        engine = rt.transcriber
        device = self.probe.read(rt.pid)
        on_gpu = engine is not None and engine.info.device_kind == "cuda"
        holder = self._holder
        health = worker_pb2.WorkerHealth(
            worker_id=rt.worker_id,
            process_num=rt.process_num,
            pid=rt.pid,
            device_kind=worker_pb2.DEVICE_KIND_CUDA if on_gpu else worker_pb2.DEVICE_KIND_CPU,
            device_index=self._settings.worker_device_id if on_gpu else 0,
            process_rss_bytes=process_rss_bytes(),
            model=engine.info.model if engine else "",
            compute_type=engine.info.compute_type if engine else "",
            engine=engine.info.name if engine else "",
            active_requests=rt.active,
            queued_requests=rt.queued,
            max_concurrent_requests=rt.concurrency,
            status=rt.status,
            status_reason=rt.status_reason,
            uptime=_duration(time.monotonic() - rt.started),
            requests_completed=rt.completed,
            active_streams=rt.streams,
            model_name=holder.name,
            model_state=holder.state,
            idle_time=_duration(holder.idle_seconds()),
        )
        if holder.load_seconds is not None:
            health.model_load_time.CopyFrom(_duration(holder.load_seconds))
        if engine is not None:
            from services.gpu_worker.results import batch_pb  # loaded with the model: no cost then

            health.batch.CopyFrom(batch_pb(engine.scheduler))
        if rt.speakers is not None:
            from services.gpu_worker.speakers.stats import speaker_stats_pb  # loaded with the model

            health.speaker_model = rt.speakers.model.info.name
            health.speaker_model_bytes = rt.speakers.model.info.memory_bytes
            health.speakers.CopyFrom(speaker_stats_pb(rt.speakers))
        if on_gpu:
            health.gpu_name, health.gpu_uuid = device.gpu_name, device.gpu_uuid
            for field, value in (
                ("vram_total_bytes", device.vram_total),
                ("vram_used_bytes", device.vram_used),
                ("vram_free_bytes", device.vram_free),
                ("vram_process_bytes", device.vram_process),
                ("gpu_utilization_percent", device.utilization_percent),
            ):
                if value is not None:
                    setattr(health, field, value)
        return health

    async def GetWorkerHealth(
        self, request: worker_pb2.GetWorkerHealthRequest, context: grpc.aio.ServicerContext
    ) -> worker_pb2.GetWorkerHealthResponse:
        return worker_pb2.GetWorkerHealthResponse(health=self.health())
