"""JobService: create, get, list, cancel, delete and watch jobs, and fetch their results.

Who may see a job: when clients are identified (a bearer token, or a client certificate), each sees only
the jobs it created; without either every client sees every job (there is no one to tell apart).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import grpc
import structlog
from scribe_client.formats import render

from services.common import audio
from services.common.auth import client_identity
from services.common.config import Settings
from services.common.errors import RequestError, abort
from services.common.rpclog import RequestLine, request_line
from services.gateway.jobs import requests
from services.gateway.jobs.fairness import JobEvents
from services.gateway.jobs.model import (
    QUEUED,
    STATE_NAMES,
    SUCCEEDED,
    JobRecord,
    job_pb,
    new_job_id,
    page_token,
    parse_page_token,
)
from services.gateway.jobs.runner import JobRunner
from services.gateway.jobs.spool import JobSpool
from services.gateway.jobs.store import JobStore
from services.gateway.recordings.pieces import Source
from services.gateway.routing.models import FleetModels
from services.gen import jobs_pb2 as jpb
from services.gen import jobs_pb2_grpc
from services.gen import transcription_pb2 as pb

log = structlog.get_logger()
DEFAULT_PAGE = 100
MAX_PAGE = 1000


def caller(context: grpc.aio.ServicerContext) -> tuple[str, str]:
    """(owner, tenant): who is calling, and whose jobs they may see ("" when clients are not identified)."""
    owner = client_identity(context)
    return owner, owner if owner.startswith(("token:", "cert:")) else ""


def _not_found(job_id: str) -> RequestError:
    return RequestError(
        grpc.StatusCode.NOT_FOUND, "JOB_NOT_FOUND", f"there is no job {job_id[:64]!r} (or it is not yours)"
    )


def _declared_seconds(path: str, spec: jpb.JobSpec) -> float:
    try:
        return Source(path, spec.encoding, spec.sample_rate_hertz, spec.audio_channel_count).declared_seconds()
    except audio.AudioError:
        return 0.0


class JobServicer(jobs_pb2_grpc.JobServiceServicer):
    def __init__(
        self,
        store: JobStore,
        runner: JobRunner,
        spool: JobSpool,
        events: JobEvents,
        settings: Settings,
        models: FleetModels,
        observe: Callable[[RequestLine, float], None] | None = None,
    ) -> None:
        self._store = store
        self._runner = runner
        self._spool = spool
        self._events = events
        self._settings = settings
        self._models = models
        self._observe = observe

    async def _job(self, job: JobRecord, with_attempts: bool = True) -> jpb.Job:
        attempts = await self._store.run(self._store.attempts, job.id) if with_attempts and job.webhook_attempts else []
        return job_pb(job, attempts)

    # --- create ---------------------------------------------------------------------------------------

    async def CreateJob(
        self, request_iterator: AsyncIterator[jpb.CreateJobRequest], context: grpc.aio.ServicerContext
    ) -> jpb.CreateJobResponse:
        with request_line("CreateJob", context, self._observe) as line:
            owner, tenant = caller(context)
            try:
                job, created = await self._create(request_iterator, owner, tenant, line)
            except RequestError as err:
                line.fail(err)
                await abort(context, err)
            line.fields.update(job_id=job.id, created=created)
            return jpb.CreateJobResponse(job=await self._job(job), created=created)

    async def _create(
        self, requests_in: AsyncIterator[jpb.CreateJobRequest], owner: str, tenant: str, line: RequestLine
    ) -> tuple[JobRecord, bool]:
        first = await anext(requests_in, None)
        if first is None or first.WhichOneof("create_request") != "spec":
            raise RequestError(
                grpc.StatusCode.INVALID_ARGUMENT,
                "SPEC_NOT_FIRST",
                "the first CreateJobRequest must carry spec, and only it",
            )
        spec = first.spec
        await requests.check_spec(spec, self._settings)
        # The served model the options name, written into them: the job runs on it, and its workers see it.
        spec.options.model = self._models.resolve(spec.options.model)
        store = self._store
        if spec.request_id:
            found = await store.run(store.find_request, owner, spec.request_id)
            if found is not None:
                return found, False  # the rest of the stream is not read: the job already has its audio
        active = await store.run(store.count_active, owner)
        if active >= self._settings.job_max_queued_per_token:
            raise RequestError(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                "TOO_MANY_JOBS",
                f"you have {active} jobs queued or running, the most this server takes "
                f"(JOB_MAX_QUEUED_PER_TOKEN={self._settings.job_max_queued_per_token}): retry when some have finished",
                retry_after_s=30.0,
            )
        now = time.time()
        job = JobRecord(
            id=new_job_id(now),
            owner=owner,
            tenant=tenant,
            state=QUEUED,
            spec=spec,
            created_at=now,
            updated_at=now,
            request_id=spec.request_id or None,
            webhook_state=jpb.WEBHOOK_STATE_PENDING if spec.HasField("webhook") else jpb.WEBHOOK_STATE_UNSPECIFIED,
        )
        source = spec.WhichOneof("source")
        if source is None:
            path = await self._receive(requests_in, job.id)
            job.audio_path, job.audio_bytes = str(path), path.stat().st_size
            job.audio_s = await asyncio.to_thread(_declared_seconds, str(path), spec)
        else:
            async for extra in requests_in:
                if extra.WhichOneof("create_request") == "audio_content" and extra.audio_content:
                    raise RequestError(
                        grpc.StatusCode.INVALID_ARGUMENT,
                        "AUDIO_WITH_SOURCE",
                        f"the spec names a {source} source: send no audio_content after it",
                    )
            if source == "path":
                real = requests.source_path(spec.path, self._settings)
                job.audio_s = await asyncio.to_thread(_declared_seconds, str(real), spec)
        line.fields.update(source=source or "upload", audio_bytes=job.audio_bytes)
        try:
            stored, created = await store.run(store.create, job)
        except BaseException:
            self._spool.remove(job.audio_path)
            raise
        if created:
            self._spool.stored(job.audio_bytes)
            self._runner.wake()
        else:
            self._spool.remove(job.audio_path)  # the same request stored meanwhile by another call
        return stored, created

    async def _receive(self, requests_in: AsyncIterator[jpb.CreateJobRequest], job_id: str) -> Path:
        """The uploaded file, in the spool under the job's name."""
        await self._spool.check()
        upload = self._spool.open()
        limit = self._settings.max_upload_bytes
        try:
            async for request in requests_in:
                if request.WhichOneof("create_request") != "audio_content":
                    raise RequestError(
                        grpc.StatusCode.INVALID_ARGUMENT,
                        "SPEC_TWICE",
                        "spec may only be sent once, in the first request; later requests carry audio_content",
                    )
                if upload.size + len(request.audio_content) > limit:
                    raise RequestError(
                        grpc.StatusCode.OUT_OF_RANGE,
                        "UPLOAD_TOO_LARGE",
                        f"the upload is larger than the {limit // 2**20} MiB (MAX_UPLOAD_MB) the server takes: "
                        "compress it (FLAC, MP3, Opus) or split it",
                    )
                await upload.write(request.audio_content)
            if not upload.size:
                raise RequestError(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    "EMPTY_AUDIO",
                    "the upload holds no audio: send the file's bytes after spec, or name a path or url source",
                )
            return await asyncio.to_thread(upload.commit, job_id)
        except BaseException:
            upload.discard()  # refused, cancelled or failed: nothing of it stays
            raise

    # --- read ----------------------------------------------------------------------------------------

    async def _get(self, job_id: str, context: grpc.aio.ServicerContext) -> JobRecord:
        job = await self._store.run(self._store.get, job_id, caller(context)[1])
        if job is None:
            raise _not_found(job_id)
        return job

    async def GetJob(self, request: jpb.GetJobRequest, context: grpc.aio.ServicerContext) -> jpb.GetJobResponse:
        with request_line("GetJob", context, self._observe) as line:
            try:
                job = await self._get(request.job_id, context)
            except RequestError as err:
                line.fail(err)
                await abort(context, err)
            return jpb.GetJobResponse(job=await self._job(job))

    async def ListJobs(self, request: jpb.ListJobsRequest, context: grpc.aio.ServicerContext) -> jpb.ListJobsResponse:
        with request_line("ListJobs", context, self._observe) as line:
            try:
                requests.check_labels(dict(request.labels), "labels filter")
                after = parse_page_token(request.page_token)
                size = min(MAX_PAGE, request.page_size or DEFAULT_PAGE)
                states = [s for s in request.states if s != jpb.JOB_STATE_UNSPECIFIED]
                store = self._store
                found = await store.run(store.page, caller(context)[1], states, dict(request.labels), size + 1, after)
            except RequestError as err:
                line.fail(err)
                await abort(context, err)
            page, more = found[:size], len(found) > size
            line.fields["jobs"] = len(page)
            return jpb.ListJobsResponse(
                jobs=[job_pb(job) for job in page],
                next_page_token=page_token(page[-1].created_at, page[-1].id) if more else "",
            )

    async def GetJobResult(
        self, request: jpb.GetJobResultRequest, context: grpc.aio.ServicerContext
    ) -> jpb.GetJobResultResponse:
        with request_line("GetJobResult", context, self._observe) as line:
            try:
                found = await self._store.run(self._store.result, request.job_id, caller(context)[1])
                if found is None:
                    raise _not_found(request.job_id)
                job, result = found
                if job.state != SUCCEEDED or result is None:
                    raise RequestError(
                        grpc.StatusCode.FAILED_PRECONDITION,
                        "JOB_NOT_SUCCEEDED",
                        f"job {job.id} is {STATE_NAMES.get(job.state, job.state)}: a result exists once it has succeeded",
                    )
                response = pb.TranscribeResponse.FromString(result)
                out = jpb.GetJobResultResponse(result=response)
                if request.format != jpb.OUTPUT_FORMAT_UNSPECIFIED:
                    name, media_type = requests.format_of(request.format)
                    out.content, out.media_type = render(response, name), media_type
            except RequestError as err:
                line.fail(err)
                await abort(context, err)
            return out

    async def WatchJob(
        self, request: jpb.WatchJobRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[jpb.WatchJobResponse]:
        with request_line("WatchJob", context, self._observe) as line:
            tenant = caller(context)[1]
            last = request.after_version
            with self._events.watch(request.job_id) as changed:
                while True:
                    changed.clear()
                    try:
                        job = await self._store.run(self._store.get, request.job_id, tenant)
                        if job is None:
                            raise _not_found(request.job_id)
                    except RequestError as err:
                        line.fail(err)
                        await abort(context, err)
                    if job.version > last:
                        last = job.version
                        yield jpb.WatchJobResponse(job=await self._job(job))
                    if job.finished:
                        return
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(changed.wait(), self._settings.job_poll_s)

    # --- change ----------------------------------------------------------------------------------------

    async def CancelJob(
        self, request: jpb.CancelJobRequest, context: grpc.aio.ServicerContext
    ) -> jpb.CancelJobResponse:
        with request_line("CancelJob", context, self._observe) as line:
            try:
                job = await self._store.run(self._store.cancel, request.job_id, caller(context)[1])
                if job is None:
                    raise _not_found(request.job_id)
            except RequestError as err:
                line.fail(err)
                await abort(context, err)
            self._runner.cancel_local(job.id)
            self._events.changed(job.id)
            line.fields["state"] = STATE_NAMES.get(job.state)
            return jpb.CancelJobResponse(job=await self._job(job))

    async def DeleteJob(
        self, request: jpb.DeleteJobRequest, context: grpc.aio.ServicerContext
    ) -> jpb.DeleteJobResponse:
        with request_line("DeleteJob", context, self._observe) as line:
            try:
                job = await self._store.run(self._store.delete, request.job_id, caller(context)[1])
                if job is None:
                    raise _not_found(request.job_id)
            except RequestError as err:
                line.fail(err)
                await abort(context, err)
            self._runner.cancel_local(job.id)
            self._spool.remove(job.audio_path)
            self._events.changed(job.id)
            return jpb.DeleteJobResponse()
