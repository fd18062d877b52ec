"""A new job's spec checked before anything is stored, and the output formats (pure but for the
address checks of webhooks and URLs, which resolve names)."""

from __future__ import annotations

import os
import re
from pathlib import Path

import grpc

from services.common import audio
from services.common.config import Settings
from services.common.errors import RequestError
from services.gateway.jobs import netguard
from services.gateway.speakers.diarize import RecordingSpeakers
from services.gen import jobs_pb2 as jpb
from services.gen import transcription_pb2 as pb

MAX_LABELS = 16
LABEL_KEY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,62}$")
MAX_LABEL_VALUE = 256
MAX_NAME = 256
MAX_REQUEST_ID = 128

#: Each format as scribe_client.formats names it, and its media type.
FORMATS: dict[int, tuple[str, str]] = {
    jpb.OUTPUT_FORMAT_JSON: ("json", "application/json"),
    jpb.OUTPUT_FORMAT_TEXT: ("txt", "text/plain; charset=utf-8"),
    jpb.OUTPUT_FORMAT_SRT: ("srt", "application/x-subrip"),
    jpb.OUTPUT_FORMAT_VTT: ("vtt", "text/vtt"),
    jpb.OUTPUT_FORMAT_TSV: ("tsv", "text/tab-separated-values"),
}


def _invalid(reason: str, message: str, code: grpc.StatusCode = grpc.StatusCode.INVALID_ARGUMENT) -> RequestError:
    return RequestError(code, reason, message)


def check_labels(labels: dict[str, str], what: str = "labels") -> None:
    if len(labels) > MAX_LABELS:
        raise _invalid("BAD_LABELS", f"{what}: at most {MAX_LABELS} labels, got {len(labels)}")
    for key, value in labels.items():
        if not LABEL_KEY.match(key):
            raise _invalid(
                "BAD_LABELS",
                f"{what}: key {key[:80]!r} must be 1 to 63 letters, digits and -_./, starting with a letter or digit",
            )
        if len(value) > MAX_LABEL_VALUE:
            raise _invalid("BAD_LABELS", f"{what}: the value of {key!r} is over {MAX_LABEL_VALUE} characters")


def source_path(raw: str, settings: Settings) -> Path:
    """The real path of a `path` source: a readable file under one of JOB_SOURCE_DIRS."""
    if not settings.job_source_dirs:
        raise _invalid(
            "PATH_SOURCES_OFF",
            "this gateway takes no path sources: JOB_SOURCE_DIRS is empty (upload the file instead)",
            grpc.StatusCode.FAILED_PRECONDITION,
        )
    real = Path(os.path.realpath(raw))
    if not any(real.is_relative_to(folder) for folder in settings.job_source_dirs):
        raise _invalid(
            "PATH_NOT_ALLOWED",
            f"{raw!r} is not under a folder of JOB_SOURCE_DIRS ({', '.join(map(str, settings.job_source_dirs))})",
            grpc.StatusCode.PERMISSION_DENIED,
        )
    if not real.is_file() or not os.access(real, os.R_OK):
        raise _invalid("SOURCE_NOT_FOUND", f"{raw!r} is not a readable file on the gateway", grpc.StatusCode.NOT_FOUND)
    return real


def check_options(options: pb.RecognitionOptions, settings: Settings) -> None:
    """What can be checked without a worker; the rest (language, task) the worker checks when the job runs."""
    if options.beam_size > settings.max_beam_size:
        raise _invalid(
            "BEAM_SIZE_TOO_LARGE", f"beam_size {options.beam_size} is over the maximum {settings.max_beam_size}"
        )
    if len(options.initial_prompt) > settings.max_initial_prompt_chars:
        raise _invalid(
            "PROMPT_TOO_LONG", f"initial_prompt is over the maximum of {settings.max_initial_prompt_chars} characters"
        )
    RecordingSpeakers.of(options)  # a bad diarization_config is INVALID_ARGUMENT naming the field, now


async def check_spec(spec: jpb.JobSpec, settings: Settings) -> None:
    """INVALID_ARGUMENT, FAILED_PRECONDITION, PERMISSION_DENIED or NOT_FOUND for a spec that cannot run."""
    check_labels(dict(spec.labels))
    if len(spec.display_name) > MAX_NAME:
        raise _invalid("BAD_NAME", f"display_name is over {MAX_NAME} characters")
    if len(spec.request_id) > MAX_REQUEST_ID or not spec.request_id.isprintable():
        raise _invalid("BAD_REQUEST_ID", f"request_id must be at most {MAX_REQUEST_ID} printable characters")
    for fmt in spec.output_formats:
        if fmt not in FORMATS:
            raise _invalid("BAD_FORMAT", f"output_formats: {fmt} is not a format (JSON, TEXT, SRT, VTT or TSV)")
    check_options(spec.options, settings)
    if spec.encoding == pb.AUDIO_ENCODING_LINEAR16:
        try:
            audio.check_pcm_format(spec.sample_rate_hertz, spec.audio_channel_count)
        except audio.AudioError as err:
            raise _invalid(err.reason, err.message) from None
    allowed = netguard.allowed_networks(settings.job_allow_networks)
    if spec.HasField("webhook"):
        if not settings.job_webhook_secret:
            raise _invalid(
                "WEBHOOK_SECRET_UNSET",
                "this gateway sends no webhooks: JOB_WEBHOOK_SECRET is not set (webhooks are always signed)",
                grpc.StatusCode.FAILED_PRECONDITION,
            )
        await netguard.resolve(netguard.parse_url(spec.webhook.url, "webhook.url"), allowed, "webhook.url")
    source = spec.WhichOneof("source")
    if source == "path":
        source_path(spec.path, settings)
    elif source == "url":
        if not settings.job_allow_urls:
            raise _invalid(
                "URL_SOURCES_OFF",
                "this gateway fetches no URLs: JOB_ALLOW_URLS is off (upload the file instead)",
                grpc.StatusCode.FAILED_PRECONDITION,
            )
        await netguard.resolve(netguard.parse_url(spec.url, "url"), allowed, "url")


def format_of(fmt: int) -> tuple[str, str]:
    """(scribe_client.formats name, media type), or INVALID_ARGUMENT."""
    if fmt not in FORMATS:
        raise _invalid("BAD_FORMAT", f"format {fmt} is not one of JSON, TEXT, SRT, VTT, TSV")
    return FORMATS[fmt]
