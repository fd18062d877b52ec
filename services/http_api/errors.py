"""gRPC statuses as HTTP answers in OpenAI's error shape: {"error": {"message", "type", "param", "code"}}."""

from __future__ import annotations

import math
from dataclasses import dataclass

import grpc
from scribe_client.errors import error_reason, retry_delay

#: HTTP status for each gRPC code; RESOURCE_EXHAUSTED depends on whether the server asked for a retry.
HTTP_STATUS: dict[grpc.StatusCode, int] = {
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.FAILED_PRECONDITION: 400,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.CANCELLED: 503,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
}


@dataclass  # not frozen: Python sets __traceback__ on an exception when it is raised
class HttpError(Exception):
    """An answer other than 200: status, OpenAI error body fields, and headers (Retry-After)."""

    status: int
    message: str
    code: str
    param: str | None = None
    retry_after_s: int | None = None

    @property
    def type(self) -> str:
        if self.status == 401:
            return "authentication_error"
        if self.status == 429:
            return "rate_limit_error"
        return "invalid_request_error" if self.status < 500 else "server_error"

    def body(self) -> dict[str, object]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def headers(self) -> dict[str, str]:
        return {} if self.retry_after_s is None else {"Retry-After": str(self.retry_after_s)}


def from_rpc_error(err: grpc.RpcError) -> HttpError:
    """The HTTP answer for a failed gateway call: the status by code, the ErrorInfo reason as `code`."""
    code: grpc.StatusCode = err.code()
    trailing = err.trailing_metadata()
    reason = error_reason(trailing) or code.name
    message = err.details() or code.name
    status = HTTP_STATUS.get(code, 500)
    retry_after = None
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
        delay = retry_delay(trailing)
        if delay is None:
            status = 413  # gRPC's own "message larger than max": retrying cannot help
        else:
            retry_after = max(1, math.ceil(delay))
    elif code == grpc.StatusCode.UNAVAILABLE:
        retry_after = 1
    param = "model" if reason in ("UNKNOWN_MODEL", "MODEL_NOT_SERVING") else None
    param = "language" if reason == "UNSUPPORTED_LANGUAGE" else param
    return HttpError(status, message, reason.lower(), param=param, retry_after_s=retry_after)
