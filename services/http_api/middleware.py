"""A plain ASGI middleware: one request id and one canonical log line per HTTP request, and uploads over
MAX_MESSAGE_MB refused before their body is read.

Plain ASGI rather than Starlette's BaseHTTPMiddleware, which wraps `receive` so that an endpoint never
sees the client disconnect, and the transcription of a client that went away could not be cancelled.
"""

from __future__ import annotations

import re
import time
import uuid

import structlog
from starlette.datastructures import Headers, MutableHeaders
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from services.common.rpclog import REQUEST_ID_HEADER
from services.http_api.errors import HttpError

log = structlog.get_logger()
_SAFE_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
#: Paths polled every second by the status page: not worth a log line each.
QUIET_PATHS = ("/api/status",)


class RequestLineMiddleware:
    def __init__(self, app: ASGIApp, max_message_mb: int) -> None:
        self.app = app
        self.max_message_mb = max_message_mb
        # The multipart envelope around the audio is small; a MiB of room keeps a file at the limit acceptable.
        self.max_body = (max_message_mb + 1) * 2**20

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        given = headers.get(REQUEST_ID_HEADER, "")
        request_id = given if _SAFE_ID.match(given) else uuid.uuid4().hex[:16]
        scope.setdefault("state", {})["request_id"] = request_id  # request.state.request_id in endpoints
        tokens = structlog.contextvars.bind_contextvars(request_id=request_id, path=scope["path"])
        started = time.perf_counter()
        status = 500

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                response_headers = MutableHeaders(scope=message)
                if REQUEST_ID_HEADER not in response_headers:
                    response_headers[REQUEST_ID_HEADER] = request_id
            await send(message)

        try:
            length = headers.get("content-length", "")
            if length.isdigit() and int(length) > self.max_body:
                # Refused before the body is read: Starlette would otherwise spool any size to disk.
                err = HttpError(
                    413, f"the upload is larger than MAX_MESSAGE_MB ({self.max_message_mb} MiB)", "file_too_large"
                )
                await JSONResponse(err.body(), status_code=413)(scope, receive, send_with_id)
            else:
                await self.app(scope, receive, send_with_id)
        finally:
            if scope["path"] not in QUIET_PATHS:
                log.info(
                    "http_request",
                    http_method=scope["method"],
                    status=status,
                    duration_ms=round((time.perf_counter() - started) * 1000, 1),
                )
            structlog.contextvars.reset_contextvars(**tokens)
