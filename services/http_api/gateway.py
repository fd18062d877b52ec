"""The HTTP server's one channel to the gateway. Each call carries the token it is given (the HTTP
caller's), so the gateway, not this process, decides who may call."""

from __future__ import annotations

import grpc
from scribe_client.credentials import ClientSecurity
from scribe_client.retry import call_metadata, channel_options

from services.gen import fleet_pb2, fleet_pb2_grpc, transcription_pb2_grpc
from services.gen import transcription_pb2 as pb


class Gateway:
    """grpc.aio stubs of the gateway at `address`, over TLS when `security` names a CA (SCRIBE_TLS_*)."""

    def __init__(self, address: str, security: ClientSecurity) -> None:
        self._address = address
        self._security = security
        self._channel: grpc.aio.Channel | None = None

    def open(self) -> None:
        """Make the channel; call it inside the server's event loop, which grpc.aio binds the channel to."""
        options = [*channel_options(), *self._security.channel_options()]
        credentials = self._security.credentials()
        self._channel = (
            grpc.aio.secure_channel(self._address, credentials, options=options)
            if credentials is not None
            else grpc.aio.insecure_channel(self._address, options=options)
        )
        self._transcription = transcription_pb2_grpc.TranscriptionServiceStub(self._channel)
        self._fleet = fleet_pb2_grpc.FleetServiceStub(self._channel)

    @property
    def channel(self) -> grpc.aio.Channel:
        """The channel, for other services' stubs (the job routes); it exists once `open` has run."""
        assert self._channel is not None, "Gateway.open() runs in the app's lifespan first"
        return self._channel

    async def close(self) -> None:
        if self._channel is not None:
            await self._channel.close()

    async def transcribe(
        self, request: pb.TranscribeRequest, token: str | None, request_id: str | None, timeout: float
    ) -> pb.TranscribeResponse:
        response: pb.TranscribeResponse = await self._transcription.Transcribe(
            request, timeout=timeout, metadata=call_metadata(token, request_id)
        )
        return response

    async def get_config(self, token: str | None, model: str = "") -> pb.GetConfigResponse:
        """GetConfig of `model` (empty: the default model), with every model listed in `models`."""
        response: pb.GetConfigResponse = await self._transcription.GetConfig(
            pb.GetConfigRequest(model=model), timeout=10, metadata=call_metadata(token)
        )
        return response

    async def list_workers(self, token: str | None) -> fleet_pb2.ListWorkersResponse:
        response: fleet_pb2.ListWorkersResponse = await self._fleet.ListWorkers(
            fleet_pb2.ListWorkersRequest(), timeout=5, metadata=call_metadata(token)
        )
        return response

    def streaming_transcribe(self, token: str | None, request_id: str | None) -> grpc.aio.StreamStreamCall:
        """A StreamingTranscribe call: write its config, then audio; read its responses."""
        call: grpc.aio.StreamStreamCall = self._transcription.StreamingTranscribe(
            metadata=call_metadata(token, request_id)
        )
        return call

    def transcribe_upload(self, token: str | None, request_id: str | None) -> grpc.aio.StreamStreamCall:
        """A TranscribeUpload call: write its config, then the file's chunks; read progress reports."""
        call: grpc.aio.StreamStreamCall = self._transcription.TranscribeUpload(
            metadata=call_metadata(token, request_id)
        )
        return call
