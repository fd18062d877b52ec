"""The FastAPI app: OpenAI's `/v1/audio/transcriptions`, `/v1/audio/translations` and `/v1/models`, and
the status page at `/` with its data at `/api/status`."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated

import grpc
import structlog
from fastapi import FastAPI, File, Form, Request, Response, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, PlainTextResponse
from scribe_client.credentials import ClientSecurity
from scribe_client.messages import TranscribeOptions, transcribe_request

from services.common.auth import bearer_token
from services.common.config import Settings
from services.common.rpclog import REQUEST_ID_HEADER
from services.gen import transcription_pb2 as pb
from services.http_api.diarized import diarized_json_body, known_speakers
from services.http_api.errors import HttpError, from_rpc_error
from services.http_api.gateway import Gateway
from services.http_api.jobs_routes import jobs_router
from services.http_api.middleware import RequestLineMiddleware
from services.http_api.openai_format import (
    GRANULARITIES,
    MEDIA_TYPES,
    RESPONSE_FORMATS,
    TEXT_WRITERS,
    json_body,
    verbose_json_body,
)
from services.http_api.realtime.socket import install as install_realtime
from services.http_api.status import StatusBoard
from services.http_api.streamed import STREAM_FORMATS, stream_transcription

log = structlog.get_logger()
STATUS_HTML = Path(__file__).resolve().parent / "static" / "status.html"
#: Deadline of one Transcribe through HTTP: as long as the longest audio the gateway accepts may take.
TRANSCRIBE_TIMEOUT_S = 3600.0
DISCONNECT_CHECK_S = 0.25
WORKER_HEADER = "x-scribe-worker"


def _request_id(request: Request) -> str:
    return str(request.state.request_id)  # set by RequestLineMiddleware


def _token(request: Request) -> str | None:
    return bearer_token([("authorization", request.headers.get("authorization", ""))])


async def _unless_disconnected(request: Request, call: asyncio.Future[pb.TranscribeResponse]) -> pb.TranscribeResponse:
    """The call's result; if the HTTP client goes away first, the gRPC call is cancelled, which frees
    its worker within a second as for a gRPC client that cancels."""
    try:
        while True:
            done, _ = await asyncio.wait({call}, timeout=DISCONNECT_CHECK_S)
            if done:
                return call.result()
            if await request.is_disconnected():
                log.info("http_client_gone")
                raise HttpError(499, "the client closed the connection", "client_closed_request")
    finally:
        call.cancel()  # a no-op once it finished; also when this handler itself is cancelled (shutdown)


def model_entry(m: pb.ModelInfo) -> dict[str, object]:
    """One model as OpenAI lists it (id, object, created, owned_by), with what scribe knows besides."""
    return {
        "id": m.name,
        "object": "model",
        "created": 0,
        "owned_by": "scribe",
        "default": m.is_default,
        "description": m.description,
        "multilingual": m.multilingual,
        "translation": m.multilingual,
        "languages": list(m.language_codes),
        "workers": m.workers,
        "serving_workers": m.serving_workers,
        "loaded_workers": m.loaded_workers,
    }


def create_app(settings: Settings, security: ClientSecurity, status_token: str | None) -> FastAPI:
    """`security`: how to reach the gateway (TLS); `status_token`: the token the status page polls with."""
    gateway = Gateway(settings.gateway_address, security)
    board = StatusBoard(gateway, status_token) if settings.status_page else None

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        gateway.open()
        task = asyncio.create_task(board.run()) if board is not None else None
        yield
        if task is not None:
            task.cancel()
        await gateway.close()

    app = FastAPI(title="scribe", lifespan=lifespan, docs_url=None, redoc_url=None)

    @app.exception_handler(HttpError)
    async def http_error(request: Request, exc: HttpError) -> JSONResponse:
        return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers())

    @app.exception_handler(RequestValidationError)
    async def bad_form(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0]
        param = str(first["loc"][-1]) if first.get("loc") else None
        err = HttpError(400, f"{param}: {first['msg']}", "invalid_request", param=param)
        return JSONResponse(err.body(), status_code=400)

    app.add_middleware(RequestLineMiddleware, max_message_mb=settings.max_message_mb)
    install_realtime(app, settings, gateway)  # /v1/realtime, /live, CORS for HTTP_ALLOWED_ORIGINS

    async def transcribe(
        request: Request,
        task: str,
        model: str,
        file: UploadFile,
        language: str | None,
        prompt: str | None,
        response_format: str,
        temperature: float,
        granularities: list[str],
        speakers: bool = False,
        known: dict[str, bytes] | None = None,
    ) -> Response:
        if response_format not in RESPONSE_FORMATS:
            raise HttpError(
                400, f"response_format must be one of {', '.join(RESPONSE_FORMATS)}", "invalid_value", "response_format"
            )
        unknown = [g for g in granularities if g not in GRANULARITIES]
        if unknown:
            raise HttpError(
                400,
                f"timestamp_granularities[] takes segment and word, got {unknown[0]!r}",
                "invalid_value",
                "timestamp_granularities[]",
            )
        if granularities and response_format != "verbose_json":
            raise HttpError(
                400,
                "timestamp_granularities[] needs response_format=verbose_json",
                "invalid_value",
                "timestamp_granularities[]",
            )
        if not 0.0 <= temperature <= 1.0:
            raise HttpError(400, "temperature must be between 0 and 1", "invalid_value", "temperature")
        if file.size is not None and file.size > settings.max_message_bytes:
            raise HttpError(
                413,
                f"the file is larger than MAX_MESSAGE_MB ({settings.max_message_mb} MiB)",
                "file_too_large",
                "file",
            )
        audio = await file.read()
        options = TranscribeOptions(
            language=language or None,
            task=task,
            word_timestamps="word" in granularities,
            initial_prompt=prompt or None,
            model=model or None,  # the gateway takes whisper-1 and empty for its default model
            speakers=speakers or response_format == "diarized_json",
            known_speakers=known or {},
        )
        call = asyncio.ensure_future(
            gateway.transcribe(
                transcribe_request(audio, options), _token(request), _request_id(request), TRANSCRIBE_TIMEOUT_S
            )
        )
        try:
            response = await _unless_disconnected(request, call)
        except grpc.aio.AioRpcError as err:
            raise from_rpc_error(err) from None
        # Which worker (and so which model's group) served the call, as gRPC's worker_id says.
        headers = {REQUEST_ID_HEADER: response.request_id, WORKER_HEADER: response.worker_id}
        if response_format == "json":
            return JSONResponse(json_body(response), headers=headers)
        if response_format == "verbose_json":
            return JSONResponse(verbose_json_body(response, task, granularities), headers=headers)
        if response_format == "diarized_json":
            return JSONResponse(diarized_json_body(response), headers=headers)
        return PlainTextResponse(
            TEXT_WRITERS[response_format](response), media_type=MEDIA_TYPES[response_format], headers=headers
        )

    # `model` names one of the fleet's models (GET /v1/models); `whisper-1`, OpenAI's name, means the default.
    @app.post("/v1/audio/transcriptions")
    async def transcriptions(
        request: Request,
        file: Annotated[UploadFile, File()],
        model: Annotated[str, Form()] = "whisper-1",
        language: Annotated[str | None, Form()] = None,
        prompt: Annotated[str | None, Form()] = None,
        response_format: Annotated[str, Form()] = "json",
        temperature: Annotated[float, Form()] = 0.0,
        timestamp_granularities: Annotated[list[str] | None, Form(alias="timestamp_granularities[]")] = None,
        known_speaker_names: Annotated[list[str] | None, Form(alias="known_speaker_names[]")] = None,
        known_speaker_references: Annotated[list[str] | None, Form(alias="known_speaker_references[]")] = None,
        # OpenAI's diarizing model wants it for audio over 30 s; scribe cuts at silences whatever it says.
        chunking_strategy: Annotated[str | None, Form()] = None,
        stream: Annotated[bool, Form()] = False,
        include: Annotated[list[str] | None, Form(alias="include[]")] = None,
    ) -> Response:
        known = known_speakers(known_speaker_names or [], known_speaker_references or [])
        if stream:  # server-sent events (services/http_api/streamed.py)
            if response_format not in STREAM_FORMATS:
                raise HttpError(400, "stream=true takes response_format json or text", "invalid_value", "stream")
            logprobs = "logprobs" in (include or [])
            options = TranscribeOptions(
                language=language or None,
                word_timestamps=logprobs,
                initial_prompt=prompt or None,
                model=model or None,
            )
            return await stream_transcription(
                gateway, file, options, _token(request), _request_id(request), settings.max_message_bytes, logprobs
            )
        return await transcribe(
            request,
            "transcribe",
            model,
            file,
            language,
            prompt,
            response_format,
            temperature,
            timestamp_granularities or [],
            speakers="diarize" in model,
            known=known,
        )

    @app.post("/v1/audio/translations")
    async def translations(
        request: Request,
        file: Annotated[UploadFile, File()],
        model: Annotated[str, Form()] = "whisper-1",
        prompt: Annotated[str | None, Form()] = None,
        response_format: Annotated[str, Form()] = "json",
        temperature: Annotated[float, Form()] = 0.0,
    ) -> Response:
        return await transcribe(request, "translate", model, file, None, prompt, response_format, temperature, [])

    async def listed(request: Request) -> list[dict[str, object]]:
        try:
            config: pb.GetConfigResponse = await gateway.get_config(_token(request))
        except grpc.aio.AioRpcError as err:
            raise from_rpc_error(err) from None
        return [model_entry(m) for m in config.models]

    @app.get("/v1/models")
    async def models(request: Request) -> JSONResponse:
        return JSONResponse({"object": "list", "data": await listed(request)})

    @app.get("/v1/models/{model_id}")
    async def one_model(request: Request, model_id: str) -> JSONResponse:
        for entry in await listed(request):
            if entry["id"] == model_id:
                return JSONResponse(entry)
        raise HttpError(404, f"model {model_id!r} is not served here: GET /v1/models lists them", "model_not_found")

    app.include_router(jobs_router(gateway, settings))

    if board is not None:

        @app.get("/", include_in_schema=False)
        async def status_page() -> FileResponse:
            return FileResponse(STATUS_HTML, media_type="text/html", headers={"Cache-Control": "no-store"})

        @app.get("/api/status")
        async def status() -> JSONResponse:
            return JSONResponse(board.snapshot(), headers={"Cache-Control": "no-store"})

    return app
