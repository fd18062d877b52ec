"""The value types of `Settings` fields: pydantic types plus the few rules pydantic has no word for.

Each type takes the text of an environment variable; a validator raises ValueError with a message that
reads after the variable's name ("must be HOST:PORT ..."), and `Settings.from_env` puts the name in front.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BeforeValidator, Field
from pydantic_settings import NoDecode

from services.common.models.catalogue import served_name

#: Shortest bearer token accepted: a guessable token is no protection.
MIN_TOKEN_CHARS = 16
TOKEN_RULE = (
    f"every token must be at least {MIN_TOKEN_CHARS} printable characters without spaces or commas "
    "(e.g. the output of `openssl rand -hex 32`)"
)


#: gRPC's DNS target syntax: dns:[//AUTHORITY]/NAME:PORT, AUTHORITY being the DNS server to ask.
DNS_TARGET = re.compile(r"dns:(?://(?P<server>[^/]*))?/(?P<name>[A-Za-z0-9._-]+):(?P<port>[0-9]{1,5})")


def token_problem(token: str) -> str | None:
    """Why `token` is not acceptable as a bearer token, or None."""
    if len(token) < MIN_TOKEN_CHARS or any(c.isspace() or c == "," for c in token) or not token.isprintable():
        return TOKEN_RULE
    return None


def _text(value: Any) -> Any:
    return value.strip() if isinstance(value, str) else value


def _lower(value: Any) -> Any:
    return value.strip().lower() if isinstance(value, str) else value


def _flag(value: Any) -> Any:
    # An empty variable (`ALLOW_INSECURE=` in .env) means off, as it always has.
    return False if isinstance(value, str) and not value.strip() else _lower(value)


def _workers(value: Any) -> Any:
    # "auto" is stored as 0; a written 0 is no worker count at all.
    if not isinstance(value, str):
        return value
    text = value.strip().lower()
    if text == "auto":
        return 0
    if not text.isdigit() or not 1 <= int(text) <= 64:
        raise ValueError("must be a number between 1 and 64, or auto")
    return int(text)


def _host_port(value: str) -> str:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError("must be HOST:PORT (e.g. 127.0.0.1:50051)")
    return value


def _optional_host_port(value: str) -> str:
    return _host_port(value) if value else ""


def _comma_list(value: Any) -> Any:
    if isinstance(value, str):
        return tuple(item.strip() for item in value.split(",") if item.strip())
    return value


def _endpoints(values: tuple[str, ...]) -> tuple[str, ...]:
    for item in values:
        if item.startswith("dns:"):
            if not DNS_TARGET.fullmatch(item):
                raise ValueError(
                    f"{item!r} is not a DNS target: write dns:///NAME:PORT (the system resolver) or "
                    "dns://SERVER[:PORT]/NAME:PORT (ask SERVER)"
                )
        elif not item.startswith("unix:"):
            _host_port(item)
    return values


def _tokens(values: tuple[str, ...]) -> tuple[str, ...]:
    for token in values:
        problem = token_problem(token)
        if problem:
            raise ValueError(problem)
    return values


def _origins(values: tuple[str, ...]) -> tuple[str, ...]:
    out = []
    for item in values:
        if item == "*":
            out.append(item)
            continue
        origin = item.rstrip("/").lower()
        if not re.fullmatch(r"https?://[^/\s]+", origin):
            raise ValueError(
                f"{item!r} is not an origin: write scheme://host[:port] (e.g. https://captions.example.com) or *"
            )
        out.append(origin)
    return tuple(out)


def _blank_is_none(value: Any) -> Any:
    return None if isinstance(value, str) and not value.strip() else _text(value)


def _resolved(path: Path) -> Path:
    return path.expanduser().resolve()


def _existing_file(path: Path | None) -> Path | None:
    if path is None:
        return None
    path = _resolved(path)
    if not path.is_file():
        raise ValueError(f"names {str(path)!r}, which is not a readable file")
    return path


def _nonempty(value: Any) -> Any:
    if isinstance(value, str) and not value.strip():
        raise ValueError("must not be empty")
    return _text(value)


def _model_counts(values: tuple[str, ...]) -> tuple[str, ...]:
    """`NAME[:COUNT]` entries, COUNT a number of workers (0 to 64) or `auto`, 1 when left out; kept as
    `NAME:COUNT` text so the setting reads back the way it was written."""
    out: list[str] = []
    names: set[str] = set()
    for item in values:
        name, sep, count = item.rpartition(":")
        if not sep or "/" in count:  # no count, or the colon belongs to a path
            name, count = item, "1"
        name, count = name.strip(), count.strip().lower()
        if not name:
            raise ValueError(f"{item!r} names no model: write NAME:COUNT, e.g. tiny.en:2,base:1")
        if count != "auto" and (not count.isdigit() or int(count) > 64):
            raise ValueError(f"{item!r}: the count must be a number from 0 to 64, or auto")
        key = served_name(name)
        if key in names:
            raise ValueError(f"{name!r} is named twice")
        names.add(key)
        out.append(f"{name}:{count}")
    return tuple(out)


def _model_nice(values: tuple[str, ...]) -> tuple[str, ...]:
    """`MODEL:NICE` entries, NICE a Unix nice value from 0 to 19."""
    for item in values:
        name, sep, nice = item.rpartition(":")
        if not sep or not name.strip() or not nice.strip().isdigit() or int(nice) > 19:
            raise ValueError(f"{item!r}: write MODEL:NICE with NICE from 0 to 19, e.g. base:10")
    return tuple(item.replace(" ", "") for item in values)


def _optional_folder(value: Any) -> Any:
    return None if isinstance(value, str) and not value.strip() else _text(value)


Flag = Annotated[bool, BeforeValidator(_flag)]
Text = Annotated[str, BeforeValidator(_nonempty)]
Workers = Annotated[int, BeforeValidator(_workers), Field(ge=0, le=64)]
Address = Annotated[str, BeforeValidator(_text), AfterValidator(_host_port)]
OptionalAddress = Annotated[str, BeforeValidator(_text), AfterValidator(_optional_host_port)]
Endpoints = Annotated[tuple[str, ...], NoDecode, BeforeValidator(_comma_list), AfterValidator(_endpoints)]
Tokens = Annotated[tuple[str, ...], NoDecode, BeforeValidator(_comma_list), AfterValidator(_tokens)]
Origins = Annotated[tuple[str, ...], NoDecode, BeforeValidator(_comma_list), AfterValidator(_origins)]
Folder = Annotated[Path, BeforeValidator(_nonempty), AfterValidator(_resolved)]
ModelCounts = Annotated[tuple[str, ...], NoDecode, BeforeValidator(_comma_list), AfterValidator(_model_counts)]
ModelNice = Annotated[tuple[str, ...], NoDecode, BeforeValidator(_comma_list), AfterValidator(_model_nice)]
OptionalFolder = Annotated[Path | None, BeforeValidator(_optional_folder), AfterValidator(lambda p: p and _resolved(p))]
OptionalFile = Annotated[Path | None, BeforeValidator(_blank_is_none), AfterValidator(_existing_file)]
Device = Annotated[Literal["auto", "cpu", "cuda"], BeforeValidator(_lower)]
EngineName = Annotated[Literal["auto", "ctranslate2", "torch"], BeforeValidator(_lower)]
SpeakerModelName = Annotated[Literal["campplus", "off"], BeforeValidator(_lower)]
LogLevel = Annotated[Literal["debug", "info", "warning", "error"], BeforeValidator(_lower)]
LogFormat = Annotated[Literal["auto", "json", "console"], BeforeValidator(_lower)]
