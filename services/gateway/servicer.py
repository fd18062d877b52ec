"""The gateway's servicers: TranscriptionService proxied to workers, and FleetService."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc
import structlog

from services.common.config import Settings
from services.common.convert import limits_pb
from services.common.errors import RequestError, abort
from services.common.rpclog import REQUEST_ID_HEADER, RequestLine, request_line
from services.gateway.registry import Registry, WorkerHandle
from services.gen import fleet_pb2, fleet_pb2_grpc, transcription_pb2_grpc
from services.gen import transcription_pb2 as pb

log = structlog.get_logger()


def _metadata(line: RequestLine) -> tuple[tuple[str, str], ...]:
    return ((REQUEST_ID_HEADER, line.request_id),)


def _passthrough(exc: grpc.aio.AioRpcError) -> tuple[grpc.StatusCode, str, grpc.aio.Metadata | None]:
    """A worker's error as the client should see it, rich details (ErrorInfo) included."""
    trailing = exc.trailing_metadata()
    return exc.code(), exc.details() or "", trailing


class TranscriptionProxy(transcription_pb2_grpc.TranscriptionServiceServicer):
    def __init__(self, registry: Registry, settings: Settings) -> None:
        self._registry = registry
        self._settings = settings

    def _pick(self, tried: set[str]) -> WorkerHandle:
        handle = self._registry.pick(exclude=tried)
        if handle is None:
            raise RequestError(
                grpc.StatusCode.UNAVAILABLE,
                "NO_WORKER_SERVING",
                f"no transcription worker is serving ({self._registry.summary()}); "
                "check `scribe status` or `supervisorctl status`",
            )
        return handle

    async def _fail(self, context: grpc.aio.ServicerContext, line: RequestLine, exc: grpc.aio.AioRpcError) -> None:
        code, details, trailing = _passthrough(exc)
        line.fail_code(code, "WORKER_ERROR")
        await context.abort(code, details, trailing_metadata=tuple(trailing or ()))

    async def Transcribe(
        self, request: pb.TranscribeRequest, context: grpc.aio.ServicerContext
    ) -> pb.TranscribeResponse:
        with request_line("Transcribe", context) as line:
            line.fields["audio_bytes"] = len(request.audio_content)
            tried: set[str] = set()
            while True:
                try:
                    handle = self._pick(tried)
                except RequestError as err:
                    line.fail(err)
                    await abort(context, err)
                tried.add(handle.name)
                line.fields["worker"] = handle.name
                try:
                    with handle.track():
                        response: pb.TranscribeResponse = await handle.transcription.Transcribe(
                            request, timeout=context.time_remaining(), metadata=_metadata(line)
                        )
                except grpc.aio.AioRpcError as exc:
                    if exc.code() == grpc.StatusCode.UNAVAILABLE:
                        # The worker went away or is draining; the call is idempotent, so try another.
                        handle.mark_unreachable(f"call failed: {exc.details()}")
                        log.warning("worker_unavailable_retrying", worker=handle.name, details=exc.details())
                        continue
                    await self._fail(context, line, exc)
                response.request_id = line.request_id
                line.fields["audio_s"] = round(response.audio_duration.ToNanoseconds() / 1e9, 3)
                return response

    async def StreamingTranscribe(
        self,
        request_iterator: AsyncIterator[pb.StreamingTranscribeRequest],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[pb.StreamingTranscribeResponse]:
        with request_line("StreamingTranscribe", context) as line:
            try:
                handle = self._pick(set())
            except RequestError as err:
                line.fail(err)
                await abort(context, err)
            line.fields["worker"] = handle.name
            with handle.track():
                # The stream stays on this worker for its whole life: its session state lives there.
                call = handle.transcription.StreamingTranscribe(
                    timeout=context.time_remaining(), metadata=_metadata(line)
                )
                pump = asyncio.create_task(_pump(request_iterator, call))
                try:
                    async for response in call:
                        yield response
                except grpc.aio.AioRpcError as exc:
                    await self._fail(context, line, exc)
                finally:
                    pump.cancel()
                    call.cancel()

    async def GetConfig(self, request: pb.GetConfigRequest, context: grpc.aio.ServicerContext) -> pb.GetConfigResponse:
        with request_line("GetConfig", context) as line:
            try:
                handle = self._pick(set())
                response: pb.GetConfigResponse = await handle.transcription.GetConfig(
                    request, timeout=5, metadata=_metadata(line)
                )
            except RequestError as err:
                line.fail(err)
                await abort(context, err)
            except grpc.aio.AioRpcError as exc:
                await self._fail(context, line, exc)
            response.worker_count = sum(1 for w in self._registry.workers.values() if w.serving)
            response.limits.CopyFrom(limits_pb(self._settings))
            return response

    async def TranscribeWithProgress(
        self, request: pb.TranscribeWithProgressRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.TranscribeWithProgressResponse]:
        with request_line("TranscribeWithProgress", context) as line:
            line.fields["audio_bytes"] = len(request.request.audio_content)
            tried: set[str] = set()
            while True:
                try:
                    handle = self._pick(tried)
                except RequestError as err:
                    line.fail(err)
                    await abort(context, err)
                tried.add(handle.name)
                line.fields["worker"] = handle.name
                sent = 0
                try:
                    with handle.track():
                        call = handle.transcription.TranscribeWithProgress(
                            request, timeout=context.time_remaining(), metadata=_metadata(line)
                        )
                        async for response in call:
                            if response.HasField("result"):
                                response.result.request_id = line.request_id
                                line.fields["audio_s"] = round(response.audio_duration.ToNanoseconds() / 1e9, 3)
                            sent += 1
                            yield response
                    return
                except grpc.aio.AioRpcError as exc:
                    if exc.code() == grpc.StatusCode.UNAVAILABLE and not sent:
                        # Nothing reached the client yet, so another worker can start over.
                        handle.mark_unreachable(f"call failed: {exc.details()}")
                        log.warning("worker_unavailable_retrying", worker=handle.name, details=exc.details())
                        continue
                    await self._fail(context, line, exc)


async def _pump(requests: AsyncIterator[pb.StreamingTranscribeRequest], call: grpc.aio.StreamStreamCall) -> None:
    """Copy the client's requests to the worker, then half-close."""
    try:
        async for request in requests:
            await call.write(request)
        await call.done_writing()
    except (grpc.aio.AioRpcError, asyncio.InvalidStateError):
        pass  # the worker side ended first; its status reaches the client through the read loop


class FleetServicer(fleet_pb2_grpc.FleetServiceServicer):
    def __init__(self, registry: Registry) -> None:
        self._registry = registry

    async def ListWorkers(
        self, request: fleet_pb2.ListWorkersRequest, context: grpc.aio.ServicerContext
    ) -> fleet_pb2.ListWorkersResponse:
        return fleet_pb2.ListWorkersResponse(workers=[w.to_pb() for w in self._registry.sorted()])
