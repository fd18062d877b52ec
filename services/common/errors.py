"""gRPC error statuses with a google.rpc.ErrorInfo reason, so clients can branch on more than the code."""

from __future__ import annotations

from typing import NoReturn

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

DOMAIN = "scribe.transcription.v1"


class RequestError(Exception):
    """An error to answer with `code`; `reason` is the ErrorInfo reason (UPPER_SNAKE)."""

    def __init__(
        self,
        code: grpc.StatusCode,
        reason: str,
        message: str,
        retry_after_s: float | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason
        self.message = message
        self.retry_after_s = retry_after_s


def to_status(err: RequestError) -> grpc.Status:
    details = []
    info = any_pb2.Any()
    info.Pack(error_details_pb2.ErrorInfo(reason=err.reason, domain=DOMAIN))
    details.append(info)
    if err.retry_after_s is not None:
        retry = any_pb2.Any()
        delay = duration_pb2.Duration()
        delay.FromMilliseconds(int(err.retry_after_s * 1000))
        retry.Pack(error_details_pb2.RetryInfo(retry_delay=delay))
        details.append(retry)
    status = status_pb2.Status(code=err.code.value[0], message=err.message, details=details)
    return rpc_status.to_status(status)


async def abort(context: grpc.aio.ServicerContext, err: RequestError) -> NoReturn:
    await context.abort_with_status(to_status(err))
    raise AssertionError("unreachable: abort_with_status raises")


def error_reason(trailing_metadata: object) -> str | None:
    """The ErrorInfo reason in an error's trailing metadata, if the server sent one."""
    for key, value in trailing_metadata or ():  # type: ignore[attr-defined]
        if key == "grpc-status-details-bin":
            status = status_pb2.Status.FromString(value)
            for detail in status.details:
                if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
                    info = error_details_pb2.ErrorInfo()
                    detail.Unpack(info)
                    return info.reason
    return None


def retry_delay(trailing_metadata: object) -> float | None:
    """Seconds of the google.rpc.RetryInfo in an error's trailing metadata, if the server sent one."""
    for key, value in trailing_metadata or ():  # type: ignore[attr-defined]
        if key == "grpc-status-details-bin":
            for detail in status_pb2.Status.FromString(value).details:
                if detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
                    info = error_details_pb2.RetryInfo()
                    detail.Unpack(info)
                    return info.retry_delay.ToNanoseconds() / 1e9
    return None


def config_not_first() -> RequestError:
    """A stream whose first request is not its config (checked by the gateway and by workers)."""
    return RequestError(
        grpc.StatusCode.INVALID_ARGUMENT,
        "CONFIG_NOT_FIRST",
        "the first StreamingTranscribeRequest must carry streaming_config, and only it",
    )


def config_twice() -> RequestError:
    return RequestError(
        grpc.StatusCode.INVALID_ARGUMENT,
        "CONFIG_TWICE",
        "streaming_config may only be sent once, in the first request; later requests carry audio_content",
    )


__all__ = [
    "DOMAIN",
    "RequestError",
    "abort",
    "code_pb2",
    "config_not_first",
    "config_twice",
    "error_reason",
    "retry_delay",
    "to_status",
]
