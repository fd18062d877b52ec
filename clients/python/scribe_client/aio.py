"""`AsyncScribeClient`: the asyncio Python client of the gateway (grpc.aio), same API as `ScribeClient`."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterable, AsyncIterator, Iterable, Sequence
from typing import Any

import grpc

from scribe_client.aio_jobs import AsyncJobs
from scribe_client.call_status import StatusKeeper
from scribe_client.gen import fleet_pb2, fleet_pb2_grpc, transcription_pb2_grpc
from scribe_client.gen import transcription_pb2 as pb
from scribe_client.messages import (
    Audio,
    StreamConfig,
    TranscribeOptions,
    audio_chunks,
    fits_one_message,
    transcribe_request,
    upload_chunk_bytes,
    upload_config,
)
from scribe_client.replay import AsyncReplay
from scribe_client.retry import Deadline, call_metadata, channel_options, next_delay
from scribe_client.sync import DEFAULT_ADDRESS, DEFAULT_MAX_MESSAGE_BYTES

#: Longest wait, at the start of each stream attempt, for the server to accept or refuse it before audio goes out.
#: scribe's gateway answers with its headers as soon as it admits a stream, so this is one round trip there;
#: the cap only matters for a server that sends no headers before its first result, and must stay well
#: under a server's idle timeout. A refusal that still races a write is read back through StatusKeeper.
ADMISSION_WAIT_S = 1.0


async def _aiter(chunks: AsyncIterable[bytes] | Iterable[bytes]) -> AsyncIterator[bytes]:
    if isinstance(chunks, AsyncIterable):
        async for chunk in chunks:
            yield chunk
    else:
        for chunk in chunks:
            yield chunk


async def _write_all(call: grpc.aio.StreamStreamCall, requests: AsyncIterator[pb.StreamingTranscribeRequest]) -> None:
    """Send the requests, then half-close; a call that ended first reports its status to the reader."""
    try:
        async for request in requests:
            await call.write(request)
        await call.done_writing()
    except (grpc.aio.AioRpcError, asyncio.InvalidStateError):
        pass
    except Exception:
        call.cancel()  # the caller's audio source failed: end the call, and `stream` raises this error
        raise


class AsyncScribeClient:
    """The asyncio twin of `ScribeClient` (same arguments, same retries); use it inside one event loop."""

    def __init__(
        self,
        address: str = DEFAULT_ADDRESS,
        *,
        credentials: grpc.ChannelCredentials | None = None,
        token: str | None = None,
        timeout: float | None = 600.0,
        busy_retries: int = 3,
        service_config: str | None = None,
        extra_options: Sequence[tuple[str, Any]] = (),
    ) -> None:
        # extra_options: more channel options, e.g. grpc.ssl_target_name_override for a TLS server name.
        options = [*channel_options(service_config), *extra_options]
        self.channel = (
            grpc.aio.secure_channel(address, credentials, options=options)
            if credentials is not None
            else grpc.aio.insecure_channel(address, options=options)
        )
        self._token = token
        self._timeout = timeout
        self._busy_retries = busy_retries
        self._max_message_bytes: int | None = None  # the server's, from GetConfig when first needed
        self._stub = transcription_pb2_grpc.TranscriptionServiceStub(self.channel)
        self._fleet = fleet_pb2_grpc.FleetServiceStub(self.channel)
        #: Batch jobs (JobService): the same calls as ScribeClient.jobs, awaited.
        self.jobs = AsyncJobs(self.channel, token, busy_retries)

    async def __aenter__(self) -> AsyncScribeClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self.channel.close()

    async def transcribe(
        self,
        audio: Audio,
        options: TranscribeOptions | None = None,
        *,
        sample_rate_hertz: int = 0,
        channels: int = 0,
        timeout: float | None = None,
        request_id: str | None = None,
    ) -> pb.TranscribeResponse:
        if await self._must_upload(audio):
            reports = self.upload(
                audio,
                options,
                sample_rate_hertz=sample_rate_hertz,
                channels=channels,
                timeout=timeout,
                request_id=request_id,
            )
            async for report in reports:
                if report.HasField("result"):
                    return report.result
            raise RuntimeError("the server ended the call without a result")
        request = transcribe_request(audio, options, sample_rate_hertz, channels)
        metadata = call_metadata(self._token, request_id)
        deadline = Deadline(self._timeout if timeout is None else timeout)
        attempt = 0
        while True:
            try:
                response: pb.TranscribeResponse = await self._stub.Transcribe(
                    request, timeout=deadline.left(), metadata=metadata
                )
                return response
            except grpc.aio.AioRpcError as err:
                delay = next_delay(err, attempt, self._busy_retries, deadline.left())
                if delay is None:
                    raise
            await asyncio.sleep(delay)
            attempt += 1

    async def transcribe_with_progress(
        self,
        audio: Audio,
        options: TranscribeOptions | None = None,
        *,
        sample_rate_hertz: int = 0,
        channels: int = 0,
        timeout: float | None = None,
        request_id: str | None = None,
    ) -> AsyncGenerator[pb.TranscribeWithProgressResponse, None]:
        if await self._must_upload(audio):
            reports = self.upload(
                audio,
                options,
                sample_rate_hertz=sample_rate_hertz,
                channels=channels,
                timeout=timeout,
                request_id=request_id,
            )
            async for report in reports:
                yield report
            return
        request = pb.TranscribeWithProgressRequest(
            request=transcribe_request(audio, options, sample_rate_hertz, channels)
        )
        metadata = call_metadata(self._token, request_id)
        deadline = Deadline(self._timeout if timeout is None else timeout)
        attempt = 0
        while True:
            call = self._stub.TranscribeWithProgress(request, timeout=deadline.left(), metadata=metadata)
            received = False
            try:
                async for response in call:
                    received = True
                    yield response
                return
            except grpc.aio.AioRpcError as err:
                delay = None if received else next_delay(err, attempt, self._busy_retries, deadline.left())
                if delay is None:
                    raise
            finally:
                call.cancel()
            await asyncio.sleep(delay)
            attempt += 1

    async def _must_upload(self, audio: Audio) -> bool:
        if self._max_message_bytes is None:
            try:
                config = await self.get_config()
            except grpc.aio.AioRpcError:
                return False  # the call itself will say what is wrong
            self._max_message_bytes = config.limits.max_message_bytes or DEFAULT_MAX_MESSAGE_BYTES
        return not fits_one_message(audio, self._max_message_bytes)

    async def upload(
        self,
        audio: Audio,
        options: TranscribeOptions | None = None,
        *,
        sample_rate_hertz: int = 0,
        channels: int = 0,
        timeout: float | None = None,
        request_id: str | None = None,
    ) -> AsyncGenerator[pb.TranscribeWithProgressResponse, None]:
        """TranscribeUpload (see `ScribeClient.upload`); the file is read in a thread, a chunk at a time."""
        first = upload_config(options, sample_rate_hertz, channels)
        chunk_bytes = upload_chunk_bytes(self._max_message_bytes or DEFAULT_MAX_MESSAGE_BYTES)
        metadata = call_metadata(self._token, request_id)
        deadline = Deadline(self._timeout if timeout is None else timeout)

        async def requests() -> AsyncIterator[pb.TranscribeUploadRequest]:
            yield first
            chunks = audio_chunks(audio, chunk_bytes)
            while (chunk := await asyncio.to_thread(next, chunks, None)) is not None:
                yield pb.TranscribeUploadRequest(audio_content=chunk)

        attempt = 0
        while True:
            call = self._stub.TranscribeUpload(requests(), timeout=deadline.left(), metadata=metadata)
            received = False
            try:
                async for response in call:
                    received = True
                    yield response.progress
                return
            except grpc.aio.AioRpcError as err:
                delay = None if received else next_delay(err, attempt, self._busy_retries, deadline.left())
                if delay is None:
                    raise
            finally:
                call.cancel()
            await asyncio.sleep(delay)
            attempt += 1

    async def stream(
        self,
        chunks: AsyncIterable[bytes] | Iterable[bytes],
        config: StreamConfig | None = None,
        *,
        timeout: float | None = None,
        request_id: str | None = None,
    ) -> AsyncGenerator[pb.StreamingTranscribeResponse, None]:
        """Stream LINEAR16 chunks from an async (or plain) iterable; yields interim and final results."""
        first = (config or StreamConfig()).to_pb()
        replay = AsyncReplay(_aiter(chunks))
        metadata = call_metadata(self._token, request_id)
        deadline = Deadline(timeout)

        async def requests(call: grpc.aio.StreamStreamCall) -> AsyncIterator[pb.StreamingTranscribeRequest]:
            yield first
            # Audio waits until the server answers or ADMISSION_WAIT_S passes: a write still in flight
            # when the server refuses the stream turns its status into INTERNAL (grpc/grpc#36066), and
            # a refusal (busy, bad token) comes at once. Chunks read meanwhile are kept, not lost.
            answered = [asyncio.ensure_future(call.initial_metadata()), asyncio.ensure_future(call.code())]
            await asyncio.wait(answered, timeout=ADMISSION_WAIT_S, return_when=asyncio.FIRST_COMPLETED)
            for waiter in answered:
                waiter.cancel()
            if call.done():
                return
            async for chunk in replay.attempt():
                yield pb.StreamingTranscribeRequest(audio_content=chunk)

        attempt = 0
        try:
            while True:
                call = self._stub.StreamingTranscribe(timeout=deadline.left(), metadata=metadata)
                keeper = StatusKeeper(call)
                writer = asyncio.ensure_future(_write_all(call, requests(call)))
                try:
                    async for response in call:
                        replay.commit()
                        yield response
                    return
                except asyncio.CancelledError:
                    if writer.done() and not writer.cancelled() and writer.exception() is not None:
                        raise writer.exception() from None  # type: ignore[misc]
                    raise
                except grpc.aio.AioRpcError as failed:
                    # The server's own status, where grpc.aio reports its write race instead (grpc/grpc#36066).
                    code, details, trailing = await keeper.settle(failed)
                    err = grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(*trailing), details)
                    delay = None if replay.committed else next_delay(err, attempt, self._busy_retries, deadline.left())
                    if delay is None:
                        raise err from None
                finally:
                    call.cancel()
                    writer.cancel()
                await asyncio.sleep(delay)
                attempt += 1
        finally:
            replay.close()

    async def get_config(self, timeout: float = 10.0) -> pb.GetConfigResponse:
        response: pb.GetConfigResponse = await self._stub.GetConfig(
            pb.GetConfigRequest(), timeout=timeout, metadata=call_metadata(self._token)
        )
        return response

    async def list_workers(self, timeout: float = 10.0) -> fleet_pb2.ListWorkersResponse:
        response: fleet_pb2.ListWorkersResponse = await self._fleet.ListWorkers(
            fleet_pb2.ListWorkersRequest(), timeout=timeout, metadata=call_metadata(self._token)
        )
        return response
