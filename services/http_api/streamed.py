"""`stream=true` on `/v1/audio/transcriptions`: server-sent events as OpenAI sends them, one
`transcript.text.delta` per segment as the gateway decodes it, then `transcript.text.done` with the
whole text.

The file goes through TranscribeUpload (chunks of the spooled upload, never the whole file in memory),
whose progress reports carry each segment as soon as everything before it is decoded: a long file is
cut at silences and decoded on every serving worker, and its segments still stream in audio order.
Errors before the first report are HTTP statuses (401, 400, 429...); after it, an SSE `data:` line with
{"error": {...}}, which the openai SDK raises as APIError.
"""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import AsyncIterator

import grpc
from fastapi import UploadFile
from fastapi.responses import StreamingResponse
from scribe_client.messages import TranscribeOptions, upload_chunk_bytes

from services.gen import transcription_pb2 as pb
from services.http_api.errors import HttpError, from_rpc_error
from services.http_api.gateway import Gateway

STREAM_FORMATS = ("json", "text")


def _sse(event: dict[str, object]) -> bytes:
    return f"data: {json.dumps(event)}\n\n".encode()


def _logprobs(segment: pb.Segment) -> list[dict[str, object]]:
    return [
        {"token": w.word.strip(), "bytes": list(w.word.strip().encode()), "logprob": math.log(max(w.probability, 1e-9))}
        for w in segment.words
    ]


async def _upload(
    call: grpc.aio.StreamStreamCall, file: UploadFile, options: pb.RecognitionOptions, chunk: int
) -> None:
    try:
        await call.write(pb.TranscribeUploadRequest(upload_config=pb.UploadConfig(options=options)))
        await file.seek(0)
        while data := await file.read(chunk):
            await call.write(pb.TranscribeUploadRequest(audio_content=data))
        await call.done_writing()
    except (grpc.aio.AioRpcError, asyncio.InvalidStateError):
        pass  # the call ended early: its status comes from the read side


async def stream_transcription(
    gateway: Gateway,
    file: UploadFile,
    options: TranscribeOptions,
    token: str | None,
    request_id: str,
    max_message_bytes: int,
    logprobs: bool,
) -> StreamingResponse:
    if options.language or options.model:
        # The worker checks the language only once the file is decoded, after the 200 went out: check it
        # (and the model: an unknown one is UNKNOWN_MODEL) first, so either is a 400 as without stream=true.
        try:
            config = await gateway.get_config(token, options.model or "")
        except grpc.aio.AioRpcError as err:
            raise from_rpc_error(err) from None
    if options.language:
        short = options.language.strip().split("-")[0].split("_")[0].lower()
        if config.language_codes and short not in config.language_codes:
            hint = "this model is English-only" if not config.multilingual else "see GET /v1/models"
            raise HttpError(
                400,
                f"language {options.language[:20]!r} is not supported ({hint}); leave it empty to detect the language",
                "unsupported_language",
                "language",
            )
    call = gateway.transcribe_upload(token, request_id)
    writer = asyncio.create_task(_upload(call, file, options.to_pb(), upload_chunk_bytes(max_message_bytes)))
    reports = aiter(call)
    try:
        first: pb.TranscribeUploadResponse = await anext(reports)
    except grpc.aio.AioRpcError as err:
        writer.cancel()
        raise from_rpc_error(err) from None
    except StopAsyncIteration:
        writer.cancel()
        raise HttpError(502, "the gateway ended the upload without a result", "no_result") from None

    async def events() -> AsyncIterator[bytes]:
        said = False
        try:
            report = first
            while True:
                for segment in report.progress.segments:
                    text = segment.text.strip()
                    if not text:
                        continue
                    delta: dict[str, object] = {"type": "transcript.text.delta", "delta": (" " if said else "") + text}
                    if logprobs:
                        delta["logprobs"] = _logprobs(segment)
                    said = True
                    yield _sse(delta)
                if report.progress.HasField("result"):
                    result = report.progress.result
                    done: dict[str, object] = {"type": "transcript.text.done", "text": result.transcript.strip()}
                    if logprobs:
                        done["logprobs"] = [lp for s in result.segments for lp in _logprobs(s)]
                    yield _sse(done)
                    return
                report = await anext(reports)
        except grpc.aio.AioRpcError as err:
            yield _sse(from_rpc_error(err).body())
        except StopAsyncIteration:
            yield _sse(HttpError(502, "the gateway ended the upload without a result", "no_result").body())
        finally:
            writer.cancel()
            call.cancel()  # a client that went away frees its workers

    headers = {"Cache-Control": "no-store", "X-Accel-Buffering": "no"}
    return StreamingResponse(events(), media_type="text/event-stream", headers=headers)
