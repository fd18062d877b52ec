"""Protobuf and gRPC stubs, generated from protos/ by `make proto` (never edited by hand).

grpc_tools writes absolute imports (`from transcription.v1 import ...`), so this folder is put on
sys.path once; everything else imports the stubs through `services.gen`.
"""

import sys
from pathlib import Path

_HERE = str(Path(__file__).resolve().parent)
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)

try:
    from transcription.v1 import (
        fleet_pb2,
        fleet_pb2_grpc,
        transcription_pb2,
        transcription_pb2_grpc,
        worker_pb2,
        worker_pb2_grpc,
    )
except ModuleNotFoundError as exc:  # pragma: no cover - only on a checkout without `make proto`
    raise ImportError("gRPC stubs are missing: run `make proto` (make run and make test do it)") from exc

__all__ = [
    "fleet_pb2",
    "fleet_pb2_grpc",
    "transcription_pb2",
    "transcription_pb2_grpc",
    "worker_pb2",
    "worker_pb2_grpc",
]
