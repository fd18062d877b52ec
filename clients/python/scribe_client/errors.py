"""What a scribe error says beyond its code: the google.rpc.ErrorInfo reason and the RetryInfo delay that
the server packs into the grpc-status-details-bin trailer."""

from __future__ import annotations

from google.rpc import error_details_pb2, status_pb2

#: ErrorInfo.domain of every scribe error.
DOMAIN = "scribe.transcription.v1"


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
