"""The protobuf and gRPC stubs, from scribe_client, which generates them from protos/ when it is built
(`make proto` regenerates them in a checkout). The server imports them through this module.

`make proto` also writes transcription/descriptors.binpb here: the descriptor set with the protos'
comments that server reflection serves.
"""

from scribe_client.gen import (
    fleet_pb2,
    fleet_pb2_grpc,
    jobs_pb2,
    jobs_pb2_grpc,
    transcription_pb2,
    transcription_pb2_grpc,
    worker_pb2,
    worker_pb2_grpc,
)

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
