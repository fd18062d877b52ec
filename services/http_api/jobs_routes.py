"""`/v1/jobs`: batch jobs over HTTP, a client of the gateway's JobService (the caller's token goes along).

    POST   /v1/jobs                     multipart: file (or form field url / path), language, prompt,
                                        formats (comma-separated), label (repeatable KEY=VALUE),
                                        webhook_url, display_name, request_id  -> 201 and the job
    GET    /v1/jobs?state=&label=&limit=&page_token=    -> {"object": "list", "data": [...], "next_page_token"}
    GET    /v1/jobs/{id}                -> the job
    POST   /v1/jobs/{id}/cancel         -> the job
    DELETE /v1/jobs/{id}                -> {"id", "object": "transcription.job.deleted", "deleted": true}
    GET    /v1/jobs/{id}/result?format=txt|srt|vtt|json|tsv   -> the transcript in that format

Errors are OpenAI-shaped like the rest of the HTTP face (400, 403, 404, 409 for a job that has not
succeeded, 413, 429 with Retry-After when the spool or a client's queue is full). An upload here is
limited to MAX_MESSAGE_MB like every HTTP body; larger files go through gRPC (`scribe jobs submit`,
`scribe batch`) or a path or URL source.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Annotated, Any

import grpc
from fastapi import APIRouter, File, Form, Query, Request, UploadFile
from fastapi.responses import JSONResponse, Response
from scribe_client.jobs import FORMATS, STATES, job_spec, state_name
from scribe_client.messages import TranscribeOptions
from scribe_client.retry import call_metadata

from services.common.auth import bearer_token
from services.common.config import Settings
from services.gen import jobs_pb2 as jpb
from services.gen import jobs_pb2_grpc
from services.http_api.errors import HttpError, from_rpc_error
from services.http_api.gateway import Gateway

CHUNK = 1 << 20
WEBHOOK_STATES = {
    jpb.WEBHOOK_STATE_PENDING: "pending",
    jpb.WEBHOOK_STATE_DELIVERED: "delivered",
    jpb.WEBHOOK_STATE_FAILED: "failed",
}


def _iso(ts: Any) -> str | None:
    if not ts.seconds and not ts.nanos:
        return None
    return datetime.fromtimestamp(ts.ToNanoseconds() / 1e9, UTC).isoformat().replace("+00:00", "Z")


def _seconds(d: Any) -> float:
    return round(d.ToNanoseconds() / 1e9, 3)


def job_json(job: jpb.Job) -> dict[str, object]:
    """A job as the HTTP face shows it."""
    body: dict[str, object] = {
        "id": job.id,
        "object": "transcription.job",
        "state": state_name(job.state),
        "created_at": _iso(job.create_time),
        "started_at": _iso(job.start_time),
        "finished_at": _iso(job.end_time),
        "audio_duration_s": _seconds(job.audio_duration),
        "processed_audio_s": _seconds(job.processed_audio),
        "progress_percent": round(job.progress_percent, 2),
        "pieces_done": job.pieces_done,
        "pieces_total": job.pieces_total,
        "runs": job.runs,
        "display_name": job.spec.display_name,
        "labels": dict(job.spec.labels),
        "source": job.spec.WhichOneof("source") or "upload",
        "error": None,
        "webhook": None,
    }
    if job.HasField("error") and job.error.code:
        code = next((c.name for c in grpc.StatusCode if c.value[0] == job.error.code), str(job.error.code))
        body["error"] = {"code": code, "message": job.error.message}
    if job.spec.HasField("webhook"):
        body["webhook"] = {
            "url": job.spec.webhook.url,
            "state": WEBHOOK_STATES.get(job.webhook_state, "none"),
            "attempts": [
                {"attempt": a.attempt, "at": _iso(a.time), "http_status": a.http_status, "error": a.error or None}
                for a in job.webhook_attempts
            ],
        }
    return body


def _labels(values: list[str] | None, param: str) -> dict[str, str]:
    labels = {}
    for item in values or ():
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise HttpError(400, f"{param} takes KEY=VALUE, got {item!r}", "invalid_value", param)
        labels[key] = value
    return labels


def jobs_router(gateway: Gateway, settings: Settings) -> APIRouter:
    router = APIRouter(prefix="/v1/jobs")
    stubs: dict[str, jobs_pb2_grpc.JobServiceStub] = {}

    def stub() -> jobs_pb2_grpc.JobServiceStub:
        # The gateway's channel exists once the app has started (it is bound to the server's event loop).
        if "jobs" not in stubs:
            stubs["jobs"] = jobs_pb2_grpc.JobServiceStub(gateway.channel)
        return stubs["jobs"]

    def metadata(request: Request) -> tuple[tuple[str, str], ...]:
        token = bearer_token([("authorization", request.headers.get("authorization", ""))])
        return call_metadata(token, str(request.state.request_id))

    async def call(method: Any, message: Any, request: Request, timeout: float = 30.0) -> Any:
        try:
            return await method(message, timeout=timeout, metadata=metadata(request))
        except grpc.aio.AioRpcError as err:
            raise from_rpc_error(err) from None

    @router.post("", status_code=201)
    async def create(
        request: Request,
        file: Annotated[UploadFile | None, File()] = None,
        url: Annotated[str | None, Form()] = None,
        path: Annotated[str | None, Form()] = None,
        language: Annotated[str | None, Form()] = None,
        prompt: Annotated[str | None, Form()] = None,
        formats: Annotated[str | None, Form()] = None,
        label: Annotated[list[str] | None, Form()] = None,
        webhook_url: Annotated[str | None, Form()] = None,
        display_name: Annotated[str | None, Form()] = None,
        request_id: Annotated[str | None, Form()] = None,
    ) -> JSONResponse:
        if (file is not None) + bool(url) + bool(path) != 1:
            raise HttpError(400, "give exactly one of: a file, url, or path", "invalid_request", "file")
        wanted = [f.strip() for f in (formats or "").split(",") if f.strip()]
        unknown = [f for f in wanted if f not in FORMATS]
        if unknown:
            raise HttpError(
                400, f"formats takes {', '.join(sorted(FORMATS))}, got {unknown[0]!r}", "invalid_value", "formats"
            )
        spec = job_spec(
            TranscribeOptions(
                language=language or None, initial_prompt=prompt or None, word_timestamps="json" in wanted
            ),
            path=path,
            url=url,
            formats=wanted,
            labels=_labels(label, "label"),
            webhook_url=webhook_url,
            display_name=display_name or (file.filename if file is not None and file.filename else ""),
            request_id=request_id,
        )

        async def requests() -> AsyncIterator[jpb.CreateJobRequest]:
            yield jpb.CreateJobRequest(spec=spec)
            if file is not None:
                while chunk := await file.read(CHUNK):
                    yield jpb.CreateJobRequest(audio_content=chunk)

        response = await call(stub().CreateJob, requests(), request, timeout=3600.0)
        return JSONResponse(job_json(response.job), status_code=201 if response.created else 200)

    @router.get("")
    async def list_jobs(
        request: Request,
        state: Annotated[list[str] | None, Query()] = None,
        label: Annotated[list[str] | None, Query()] = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
        page_token: str = "",
    ) -> JSONResponse:
        unknown = [s for s in state or () if s not in STATES]
        if unknown:
            raise HttpError(400, f"state takes {', '.join(STATES)}, got {unknown[0]!r}", "invalid_value", "state")
        message = jpb.ListJobsRequest(labels=_labels(label, "label"), page_size=limit, page_token=page_token)
        for s in state or ():
            message.states.append(STATES[s])  # type: ignore[arg-type]
        page = await call(stub().ListJobs, message, request)
        return JSONResponse(
            {
                "object": "list",
                "data": [job_json(j) for j in page.jobs],
                "next_page_token": page.next_page_token or None,
            }
        )

    @router.get("/{job_id}")
    async def get(request: Request, job_id: str) -> JSONResponse:
        response = await call(stub().GetJob, jpb.GetJobRequest(job_id=job_id), request)
        return JSONResponse(job_json(response.job))

    @router.post("/{job_id}/cancel")
    async def cancel(request: Request, job_id: str) -> JSONResponse:
        response = await call(stub().CancelJob, jpb.CancelJobRequest(job_id=job_id), request)
        return JSONResponse(job_json(response.job))

    @router.delete("/{job_id}")
    async def delete(request: Request, job_id: str) -> JSONResponse:
        await call(stub().DeleteJob, jpb.DeleteJobRequest(job_id=job_id), request)
        return JSONResponse({"id": job_id, "object": "transcription.job.deleted", "deleted": True})

    @router.get("/{job_id}/result")
    async def result(request: Request, job_id: str, format: str = "json") -> Response:
        if format not in FORMATS:
            raise HttpError(
                400, f"format takes {', '.join(sorted(FORMATS))}, got {format!r}", "invalid_value", "format"
            )
        message = jpb.GetJobResultRequest(job_id=job_id, format=FORMATS[format])
        try:
            answer = await call(stub().GetJobResult, message, request, timeout=60.0)
        except HttpError as err:
            if err.code == "job_not_succeeded":
                err.status = 409  # the job exists, in a state that has no result yet
            raise
        if format == "json":
            return JSONResponse(json.loads(answer.content))
        return Response(answer.content, media_type=answer.media_type)

    return router
