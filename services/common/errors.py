"""gRPC error statuses with a google.rpc.ErrorInfo reason, so clients can branch on more than the code."""

from __future__ import annotations

from typing import NoReturn

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

# What clients read from an error lives in scribe_client; the server's code and tests import it from here too.
from scribe_client.errors import DOMAIN, error_reason, retry_delay


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
