"""Every service, RPC, message, field, enum and enum value in our protos has a comment: grpcurl
`describe` and generated stubs in every language show them, so they are the API's documentation."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from google.protobuf import descriptor_pb2

from tests.helpers import ROOT

pytestmark = pytest.mark.fast

DESCRIPTORS = ROOT / "services" / "gen" / "transcription" / "descriptors.binpb"

# Paths in SourceCodeInfo: (field number in the parent, index) pairs.
_MESSAGE, _ENUM, _SERVICE = 4, 5, 6
_FIELD, _NESTED, _NESTED_ENUM = 2, 3, 4
_ENUM_VALUE, _METHOD = 2, 2


def _enum(path: tuple[int, ...], e: descriptor_pb2.EnumDescriptorProto) -> Iterator[tuple[tuple[int, ...], str]]:
    yield path, e.name
    for i, v in enumerate(e.value):
        yield (*path, _ENUM_VALUE, i), f"{e.name}.{v.name}"


def _message(path: tuple[int, ...], m: descriptor_pb2.DescriptorProto) -> Iterator[tuple[tuple[int, ...], str]]:
    yield path, m.name
    for i, field in enumerate(m.field):
        yield (*path, _FIELD, i), f"{m.name}.{field.name}"
    for i, nested in enumerate(m.nested_type):
        if nested.options.map_entry:
            continue  # the entry protoc makes for a map<K, V> field: no source to comment, the field has it
        yield from _message((*path, _NESTED, i), nested)
    for i, e in enumerate(m.enum_type):
        yield from _enum((*path, _NESTED_ENUM, i), e)


def declarations(f: descriptor_pb2.FileDescriptorProto) -> Iterator[tuple[tuple[int, ...], str]]:
    """(source path, name) of everything in a file that should carry a comment."""
    for i, m in enumerate(f.message_type):
        yield from _message((_MESSAGE, i), m)
    for i, e in enumerate(f.enum_type):
        yield from _enum((_ENUM, i), e)
    for i, s in enumerate(f.service):
        yield (_SERVICE, i), s.name
        for j, method in enumerate(s.method):
            yield (_SERVICE, i, _METHOD, j), f"{s.name}.{method.name}"


def undocumented() -> list[str]:
    files = descriptor_pb2.FileDescriptorSet.FromString(DESCRIPTORS.read_bytes()).file
    missing = []
    for f in files:
        if not f.name.startswith("transcription/"):
            continue
        commented = {tuple(loc.path) for loc in f.source_code_info.location if loc.leading_comments.strip()}
        missing += [f"{f.name}: {name}" for path, name in declarations(f) if path not in commented]
    return missing


def test_every_rpc_message_field_and_enum_value_has_a_comment() -> None:
    assert undocumented() == []


def test_the_check_sees_the_new_progress_rpc() -> None:
    files = descriptor_pb2.FileDescriptorSet.FromString(DESCRIPTORS.read_bytes()).file
    (transcription,) = [f for f in files if f.name == "transcription/v1/transcription.proto"]
    methods = [m.name for s in transcription.service for m in s.method]
    assert "TranscribeWithProgress" in methods
