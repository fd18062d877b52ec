"""Protobuf messages and gRPC stubs of scribe's API, generated from the protos when scribe-client is built
(generate_stubs.py; `make proto` in a checkout). Never edited by hand.

    from scribe_client.gen import transcription_pb2 as pb
"""

try:
    from scribe_client.gen.transcription.v1 import (
        fleet_pb2,
        fleet_pb2_grpc,
        jobs_pb2,
        jobs_pb2_grpc,
        transcription_pb2,
        transcription_pb2_grpc,
        worker_pb2,
        worker_pb2_grpc,
    )
except ModuleNotFoundError as exc:  # pragma: no cover - only in a checkout without `make proto`
    raise ImportError(
        "scribe_client's gRPC stubs are missing: install scribe-client (pip install ./clients/python), "
        "or run `make proto` in a checkout"
    ) from exc

__all__ = [
    "fleet_pb2",
    "fleet_pb2_grpc",
    "jobs_pb2",
    "jobs_pb2_grpc",
    "transcription_pb2",
    "transcription_pb2_grpc",
    "worker_pb2",
    "worker_pb2_grpc",
]
