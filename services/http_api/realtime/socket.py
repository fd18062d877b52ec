"""The routes of live audio: the `/v1/realtime` WebSocket (who may connect, the frame loop, the session's
limits) and the live-captions page at `/live` with the fleet data it needs."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import grpc
import structlog
from fastapi import APIRouter, FastAPI, Request, WebSocket
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import FileResponse, JSONResponse
from starlette.websockets import WebSocketDisconnect, WebSocketState

from services.common.config import Settings
from services.gen import transcription_pb2 as pb
from services.http_api.errors import HttpError, from_rpc_error
from services.http_api.gateway import Gateway
from services.http_api.realtime.access import SessionCounter, client_key, origin_allowed, token_and_protocol
from services.http_api.realtime.config import FleetInfo
from services.http_api.realtime.protocol import Problem, parse
from services.http_api.realtime.session import Ended, RealtimeSession, close_code_for

log = structlog.get_logger()
STATIC = Path(__file__).resolve().parent.parent / "static"
LIVE_FILES = {"live.js": "text/javascript", "pcm-worklet.js": "text/javascript"}
#: uvicorn closes the socket (1009) on a frame this many times REALTIME_MAX_FRAME_KB; under it, an error event.
HARD_FRAME_FACTOR = 4
#: How often an idle session checks whether its last results are out.
DRAIN_POLL_S = 0.25
#: An idle session ends its stream's audio this long before STREAM_IDLE_TIMEOUT_S (at most a quarter of
#: it): the worker times out a stream that gets no audio for that long, and the session's close must reach
#: the worker before the worker's own clock runs out, however busy the machine is.
AUDIO_END_MARGIN_S = 1.0


def ws_max_size(settings: Settings) -> int:
    return HARD_FRAME_FACTOR * settings.realtime_max_frame_kb * 1024


def _error(problem: Problem) -> str:
    """An error event outside a session (refused before it began)."""
    return json.dumps({"type": "error", "event_id": f"event_{time.time_ns():x}", "error": problem.error()})


def install(app: FastAPI, settings: Settings, gateway: Gateway) -> None:
    """Add the realtime routes, the page, and CORS for HTTP_ALLOWED_ORIGINS to `app`."""
    if settings.http_allowed_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(settings.http_allowed_origins),
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "Content-Type", "X-Request-Id"],
        )
    app.include_router(router(settings, gateway))


def router(settings: Settings, gateway: Gateway) -> APIRouter:
    routes = APIRouter()
    counter = SessionCounter(settings.max_streams_per_client)
    max_frame = settings.realtime_max_frame_kb * 1024
    idle_s = settings.stream_idle_timeout_s

    async def fleet_config(token: str | None) -> pb.GetConfigResponse:
        return await gateway.get_config(token)

    @routes.get("/live", include_in_schema=False)
    async def live_page() -> FileResponse:
        return FileResponse(STATIC / "live.html", media_type="text/html", headers={"Cache-Control": "no-store"})

    @routes.get("/live/{name}", include_in_schema=False)
    async def live_file(name: str) -> FileResponse:
        if name not in LIVE_FILES:
            raise HttpError(404, f"no file {name[:40]!r} here", "not_found")
        return FileResponse(STATIC / name, media_type=LIVE_FILES[name], headers={"Cache-Control": "no-store"})

    @routes.get("/live/api/config", include_in_schema=False)
    async def live_config(request: Request) -> JSONResponse:
        """What the page offers: the fleet's model and languages (GetConfig), and the frame limit."""
        token, _ = token_and_protocol(request.headers.get("authorization", ""), ())
        try:
            config = await fleet_config(token)
        except grpc.aio.AioRpcError as err:
            raise from_rpc_error(err) from None
        info = FleetInfo.of(config)
        body = {
            "model": info.model,
            "models": list(info.models),
            "languages": list(info.languages),
            "multilingual": config.multilingual,
            "max_frame_bytes": max_frame,
        }
        return JSONResponse(body, headers={"Cache-Control": "no-store"})

    @routes.websocket("/v1/realtime")
    async def realtime(websocket: WebSocket) -> None:
        request_id = websocket.headers.get("x-request-id", "")[:64] or f"rt-{time.time_ns():x}"
        structlog.contextvars.bind_contextvars(request_id=request_id, path="/v1/realtime")
        started = time.monotonic()
        line: dict[str, Any] = {"status": "refused"}
        try:
            await _serve(websocket, request_id, line)
        finally:
            log.info("realtime_session", duration_s=round(time.monotonic() - started, 3), **line)
            structlog.contextvars.unbind_contextvars("request_id", "path")

    async def _serve(websocket: WebSocket, request_id: str, line: dict[str, Any]) -> None:
        origin = websocket.headers.get("origin") or ""
        host = websocket.headers.get("host", "")
        scheme = "https" if websocket.url.scheme == "wss" else "http"
        if not origin_allowed(origin, host, scheme, settings.http_allowed_origins):
            line["origin"] = origin
            err = HttpError(
                403, f"origin {origin[:80]!r} is not allowed: add it to HTTP_ALLOWED_ORIGINS", "origin_not_allowed"
            )
            await websocket.send_denial_response(JSONResponse(err.body(), status_code=403))
            return
        token, protocol = token_and_protocol(
            websocket.headers.get("authorization", ""), websocket.scope.get("subprotocols", [])
        )
        await websocket.accept(subprotocol=protocol)

        async def refuse(problem: Problem, code: int) -> None:
            line.update(status="closed", error=problem.code, close=code)
            await websocket.send_text(_error(problem))
            await websocket.close(code)

        if websocket.query_params.get("intent") != "transcription":
            await refuse(
                Problem(
                    "this server serves transcription sessions only: connect to /v1/realtime?intent=transcription",
                    "unsupported_intent",
                    "intent",
                ),
                1008,
            )
            return
        try:
            fleet = FleetInfo.of(await fleet_config(token))
        except grpc.aio.AioRpcError as err:
            http = from_rpc_error(err)
            await refuse(Problem(http.message, http.code, type=http.type), close_code_for(http.status))
            return
        peer = websocket.client.host if websocket.client else "unknown"
        key = client_key(token, peer)
        if not counter.acquire(key):
            await refuse(
                Problem(
                    f"this client already has {counter.open_for(key)} realtime sessions open, the most one client may "
                    "hold (MAX_STREAMS_PER_CLIENT): close one first",
                    "too_many_sessions",
                    type="rate_limit_error",
                ),
                1008,
            )
            return
        try:
            await _session(websocket, token, request_id, fleet, line)
        finally:
            counter.release(key)

    async def _session(
        websocket: WebSocket, token: str | None, request_id: str, fleet: FleetInfo, line: dict[str, Any]
    ) -> None:
        lock = asyncio.Lock()

        async def send(event: dict[str, Any]) -> None:
            async with lock:
                await websocket.send_text(json.dumps(event))

        session = RealtimeSession(send, gateway, token, request_id, fleet, settings.max_stream_seconds)
        line.update(status="open", session=session.id)
        receiving: asyncio.Task[Any] | None = None
        last_audio = time.monotonic()
        audio_open = True  # audio came since the session last ended its stream's audio
        margin = min(AUDIO_END_MARGIN_S, idle_s / 4)
        try:
            await send(session.created())
            while True:
                if receiving is None:
                    receiving = asyncio.ensure_future(websocket.receive())
                remaining = last_audio + idle_s - (margin if audio_open else 0) - time.monotonic()
                done, _ = await asyncio.wait(
                    {receiving, session.ended}, timeout=max(remaining, 0), return_when=asyncio.FIRST_COMPLETED
                )
                if session.ended in done:
                    ended = session.ended.result()
                    raise ended
                if not done and audio_open:
                    # The client went quiet: the audio sent becomes final and its results go out, and the
                    # fleet's stream closes before its idle timeout could fail it.
                    await session.end_audio()
                    audio_open = False
                    continue
                if not done:
                    # No audio for STREAM_IDLE_TIMEOUT_S: once the results are out, the session ends. Time
                    # spent waiting on the fleet is not the client's.
                    if session.draining:
                        last_audio = time.monotonic() - idle_s + DRAIN_POLL_S
                        continue
                    raise Ended(
                        Problem(
                            f"no audio for {idle_s:g} s (STREAM_IDLE_TIMEOUT_S): send audio continuously, "
                            "silence included, or close the session",
                            "session_idle_timeout",
                        ),
                        1008,
                    )
                message = receiving.result()
                receiving = None
                if message["type"] == "websocket.disconnect":
                    line.update(status="client_closed", close=message.get("code"))
                    return
                text = message.get("text")
                try:
                    if text is None:
                        raise Problem(
                            "binary messages are not accepted: send JSON text events (audio base64 in "
                            "input_audio_buffer.append)",
                            "invalid_event",
                        )
                    if len(text) > max_frame:
                        raise Problem(
                            f"the message has {len(text)} bytes, over the {max_frame} this server takes "
                            "(REALTIME_MAX_FRAME_KB): send audio in smaller appends",
                            "message_too_large",
                        )
                    event = parse(text)
                    if event.type == "input_audio_buffer.append":
                        last_audio = time.monotonic()
                        audio_open = True
                    await session.handle(event)
                except Problem as problem:
                    await send(session.error(problem))
        except Ended as ended:
            line.update(status="closed", error=ended.problem.code, close=ended.close_code)
            if websocket.application_state == WebSocketState.CONNECTED:
                try:
                    await send(session.error(ended.problem))
                    await websocket.close(ended.close_code)
                except (WebSocketDisconnect, RuntimeError):
                    pass
        except WebSocketDisconnect as gone:
            line.update(status="client_closed", close=gone.code)
        finally:
            if receiving is not None:
                receiving.cancel()
            session.close()
            line.update(audio_s=round(session.audio_ms / 1000, 3), streams=session.streams_opened)

    return routes
