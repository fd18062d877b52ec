"""Server reflection that serves the protos' comments, so `grpcurl describe` documents the API.

The stubs' built-in descriptors carry no comments, and grpcio-reflection copies descriptors with
CopyToProto, which drops them too. `make proto` therefore also writes a descriptor set with source
info; this pool adapter hands reflection those full FileDescriptorProtos, and also resolves
method symbols ("Service.Method"), which protobuf's pool does not.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool
from grpc_reflection.v1alpha import reflection

DESCRIPTOR_SET = Path(__file__).resolve().parent.parent / "gen" / "transcription" / "descriptors.binpb"


class _File:
    """Looks like a FileDescriptor to grpcio-reflection: name, dependencies and CopyToProto."""

    def __init__(self, pool: SourceInfoPool, name: str) -> None:
        self._pool = pool
        self.name = name

    @property
    def dependencies(self) -> list[_File]:
        return [_File(self._pool, dep) for dep in self._pool.protos[self.name].dependency]

    def CopyToProto(self, proto: descriptor_pb2.FileDescriptorProto) -> None:
        proto.CopyFrom(self._pool.protos[self.name])


class SourceInfoPool:
    def __init__(self, descriptor_set: descriptor_pb2.FileDescriptorSet) -> None:
        self.protos = {f.name: f for f in descriptor_set.file}
        self._pool = descriptor_pool.DescriptorPool()
        for proto in descriptor_set.file:
            self._pool.Add(proto)

    def FindFileByName(self, name: str) -> _File:
        if name not in self.protos:
            raise KeyError(name)
        return _File(self, name)

    def FindFileContainingSymbol(self, symbol: str) -> _File:
        try:
            return _File(self, self._pool.FindFileContainingSymbol(symbol).name)
        except KeyError:
            service, _, method = symbol.rpartition(".")
            found = self._pool.FindServiceByName(service)  # raises KeyError when it is no service either
            if method not in found.methods_by_name:
                raise
            return _File(self, found.file.name)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._pool, name)


def enable_reflection(server: grpc.aio.Server, service_names: tuple[str, ...]) -> None:
    pool: Any = None
    if DESCRIPTOR_SET.is_file():
        descriptor_set = descriptor_pb2.FileDescriptorSet.FromString(DESCRIPTOR_SET.read_bytes())
        pool = SourceInfoPool(descriptor_set)
        # Health, reflection and error details are not in our descriptor set: add them from their packages.
        for module_file in _standard_files():
            if module_file.name not in pool.protos:
                proto = descriptor_pb2.FileDescriptorProto()
                module_file.CopyToProto(proto)
                pool.protos[proto.name] = proto
                pool._pool.Add(proto)
    reflection.enable_server_reflection((*service_names, reflection.SERVICE_NAME), server, pool=pool)


def _standard_files() -> list[Any]:
    from google.protobuf import duration_pb2
    from google.rpc import error_details_pb2
    from grpc_health.v1 import health_pb2
    from grpc_reflection.v1alpha import reflection_pb2

    # error_details lets grpcurl print the ErrorInfo and RetryInfo our errors carry.
    return [
        health_pb2.DESCRIPTOR,
        reflection_pb2.DESCRIPTOR,
        duration_pb2.DESCRIPTOR,
        error_details_pb2.DESCRIPTOR,
    ]
