"""`ScribeClient`: the blocking Python client of the gateway."""

from __future__ import annotations

import time
from collections.abc import Callable, Generator, Iterable, Iterator, Sequence
from typing import Any, TypeVar

import grpc

from scribe_client.gen import fleet_pb2, fleet_pb2_grpc, transcription_pb2_grpc
from scribe_client.gen import transcription_pb2 as pb
from scribe_client.jobs import Jobs
from scribe_client.messages import (
    Audio,
    StreamConfig,
    TranscribeOptions,
    audio_chunks,
    final_result,
    fits_one_message,
    transcribe_request,
    upload_chunk_bytes,
    upload_config,
)
from scribe_client.replay import Replay
from scribe_client.retry import Deadline, call_metadata, channel_options, next_delay

T = TypeVar("T")
DEFAULT_ADDRESS = "127.0.0.1:50051"
#: The server's MAX_MESSAGE_MB default, for a server whose GetConfig does not say.
DEFAULT_MAX_MESSAGE_BYTES = 64 * 2**20


class ScribeClient:
    """Talks to a scribe gateway over one channel; safe to share between threads.

    `credentials` (e.g. `grpc.ssl_channel_credentials(ca)`) makes it a TLS channel; `token` is sent as
    `authorization: Bearer <token>` on every call. `timeout` is the deadline, in seconds, of `transcribe`
    and `transcribe_with_progress` unless a call gives its own (None: no deadline); a stream has a
    deadline only when `stream` is given one. UNAVAILABLE is retried
    by gRPC's retry policy; RESOURCE_EXHAUSTED with a RetryInfo up to `busy_retries` times, after the
    delay the server asked for.
    """

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
            grpc.secure_channel(address, credentials, options=options)
            if credentials is not None
            else grpc.insecure_channel(address, options=options)
        )
        self._token = token
        self._timeout = timeout
        self._busy_retries = busy_retries
        self._max_message_bytes: int | None = None  # the server's, from GetConfig when first needed
        self._stub = transcription_pb2_grpc.TranscriptionServiceStub(self.channel)
        self._fleet = fleet_pb2_grpc.FleetServiceStub(self.channel)
        #: Batch jobs (JobService): submit, get, list, watch, cancel, delete, result.
        self.jobs = Jobs(self.channel, token, busy_retries)

    def __enter__(self) -> ScribeClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.channel.close()

    def _retrying(self, deadline: Deadline, call: Callable[[float | None], T]) -> T:
        attempt = 0
        while True:
            try:
                return call(deadline.left())
            except grpc.RpcError as err:
                delay = next_delay(err, attempt, self._busy_retries, deadline.left())
                if delay is None:
                    raise
            time.sleep(delay)
            attempt += 1

    def transcribe(
        self,
        audio: Audio,
        options: TranscribeOptions | None = None,
        *,
        sample_rate_hertz: int = 0,
        channels: int = 0,
        timeout: float | None = None,
        request_id: str | None = None,
    ) -> pb.TranscribeResponse:
        """Transcribe a file (path or bytes); raw LINEAR16 bytes need `sample_rate_hertz`.

        A file too large for one message goes through `upload` instead, transparently."""
        if self._must_upload(audio):
            reports = self.upload(
                audio,
                options,
                sample_rate_hertz=sample_rate_hertz,
                channels=channels,
                timeout=timeout,
                request_id=request_id,
            )
            return final_result(reports)
        request = transcribe_request(audio, options, sample_rate_hertz, channels)
        metadata = call_metadata(self._token, request_id)
        deadline = Deadline(self._timeout if timeout is None else timeout)
        return self._retrying(deadline, lambda left: self._stub.Transcribe(request, timeout=left, metadata=metadata))

    def transcribe_with_progress(
        self,
        audio: Audio,
        options: TranscribeOptions | None = None,
        *,
        sample_rate_hertz: int = 0,
        channels: int = 0,
        timeout: float | None = None,
        request_id: str | None = None,
    ) -> Generator[pb.TranscribeWithProgressResponse, None, None]:
        """Like `transcribe`, yielding progress reports; the last one has the whole result in `.result`."""
        if self._must_upload(audio):
            yield from self.upload(
                audio,
                options,
                sample_rate_hertz=sample_rate_hertz,
                channels=channels,
                timeout=timeout,
                request_id=request_id,
            )
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
                for response in call:
                    received = True
                    yield response
                return
            except grpc.RpcError as err:
                delay = None if received else next_delay(err, attempt, self._busy_retries, deadline.left())
                if delay is None:
                    raise
            finally:
                call.cancel()  # no-op once it ended; stops the server when the caller stops early
            time.sleep(delay)
            attempt += 1

    def _must_upload(self, audio: Audio) -> bool:
        if self._max_message_bytes is None:
            try:
                self._max_message_bytes = self.get_config().limits.max_message_bytes or DEFAULT_MAX_MESSAGE_BYTES
            except grpc.RpcError:
                return False  # the call itself will say what is wrong
        return not fits_one_message(audio, self._max_message_bytes)

    def upload(
        self,
        audio: Audio,
        options: TranscribeOptions | None = None,
        *,
        sample_rate_hertz: int = 0,
        channels: int = 0,
        timeout: float | None = None,
        request_id: str | None = None,
    ) -> Generator[pb.TranscribeWithProgressResponse, None, None]:
        """TranscribeUpload: a file of any size (path or bytes) sent in chunks, read from disk as they go;
        yields the same progress reports as `transcribe_with_progress`."""
        first = upload_config(options, sample_rate_hertz, channels)
        chunk_bytes = upload_chunk_bytes(self._max_message_bytes or DEFAULT_MAX_MESSAGE_BYTES)
        metadata = call_metadata(self._token, request_id)
        deadline = Deadline(self._timeout if timeout is None else timeout)

        def requests() -> Iterator[pb.TranscribeUploadRequest]:
            yield first
            for chunk in audio_chunks(audio, chunk_bytes):
                yield pb.TranscribeUploadRequest(audio_content=chunk)

        attempt = 0
        while True:
            call = self._stub.TranscribeUpload(requests(), timeout=deadline.left(), metadata=metadata)
            received = False
            try:
                for response in call:
                    received = True
                    yield response.progress
                return
            except grpc.RpcError as err:
                delay = None if received else next_delay(err, attempt, self._busy_retries, deadline.left())
                if delay is None:
                    raise
            finally:
                call.cancel()  # also stops the upload when the caller stops early
            time.sleep(delay)
            attempt += 1

    def stream(
        self,
        chunks: Iterable[bytes],
        config: StreamConfig | None = None,
        *,
        timeout: float | None = None,
        request_id: str | None = None,
    ) -> Generator[pb.StreamingTranscribeResponse, None, None]:
        """Stream LINEAR16 chunks (any size from 20 ms on) and yield interim and final results."""
        first = (config or StreamConfig()).to_pb()
        replay = Replay(iter(chunks))
        metadata = call_metadata(self._token, request_id)
        deadline = Deadline(timeout)

        def requests() -> Iterator[pb.StreamingTranscribeRequest]:
            yield first
            for chunk in replay.attempt():
                yield pb.StreamingTranscribeRequest(audio_content=chunk)

        attempt = 0
        while True:
            call = self._stub.StreamingTranscribe(requests(), timeout=deadline.left(), metadata=metadata)
            try:
                for response in call:
                    replay.commit()
                    yield response
                return
            except grpc.RpcError as err:
                delay = None if replay.committed else next_delay(err, attempt, self._busy_retries, deadline.left())
                if delay is None:
                    raise
            finally:
                call.cancel()
            time.sleep(delay)
            attempt += 1

    def get_config(self, timeout: float = 10.0) -> pb.GetConfigResponse:
        return self._stub.GetConfig(pb.GetConfigRequest(), timeout=timeout, metadata=call_metadata(self._token))

    def list_workers(self, timeout: float = 10.0) -> fleet_pb2.ListWorkersResponse:
        return self._fleet.ListWorkers(
            fleet_pb2.ListWorkersRequest(), timeout=timeout, metadata=call_metadata(self._token)
        )
