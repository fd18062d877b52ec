"""Batch jobs through the asyncio client: `AsyncScribeClient(...).jobs`, the same calls as
`scribe_client.jobs.Jobs` (submit, get, list, watch, cancel, delete, result, wait)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterable, Mapping

import grpc

from scribe_client.gen import jobs_pb2 as jpb
from scribe_client.gen import jobs_pb2_grpc
from scribe_client.jobs import (
    FINISHED,
    RECONNECT_S,
    create_requests,
    format_value,
    job_spec,
    list_request,
    reconnectable,
    with_request_id,
)
from scribe_client.messages import Audio, TranscribeOptions
from scribe_client.retry import call_metadata, next_delay


class AsyncJobs:
    def __init__(self, channel: grpc.aio.Channel, token: str | None, busy_retries: int = 3) -> None:
        self._stub = jobs_pb2_grpc.JobServiceStub(channel)
        self._metadata = call_metadata(token)
        self._busy_retries = busy_retries

    async def submit(
        self,
        audio: Audio | None = None,
        options: TranscribeOptions | None = None,
        *,
        spec: jpb.JobSpec | None = None,
        timeout: float | None = None,
        **fields: object,
    ) -> jpb.Job:
        spec = with_request_id(spec) if spec is not None else job_spec(options, **fields)  # type: ignore[arg-type]
        deadline = time.monotonic() + (RECONNECT_S if timeout is None else timeout)
        attempt = 0
        while True:
            try:
                response: jpb.CreateJobResponse = await self._stub.CreateJob(
                    _aiter(create_requests(spec, audio)), timeout=3600 + RECONNECT_S, metadata=self._metadata
                )
                return response.job
            except grpc.RpcError as err:
                delay = next_delay(err, attempt, self._busy_retries, deadline - time.monotonic())
                if delay is None and reconnectable(err) and time.monotonic() < deadline:
                    delay = min(5.0, 0.5 * 2**attempt)
                if delay is None:
                    raise
            await asyncio.sleep(delay)
            attempt += 1

    async def get(self, job_id: str, timeout: float = 30.0) -> jpb.Job:
        response: jpb.GetJobResponse = await self._stub.GetJob(
            jpb.GetJobRequest(job_id=job_id), timeout=timeout, metadata=self._metadata
        )
        return response.job

    async def list_page(
        self,
        states: Iterable[str | int] = (),
        labels: Mapping[str, str] | None = None,
        page_size: int = 100,
        page_token: str = "",
        timeout: float = 30.0,
    ) -> jpb.ListJobsResponse:
        response: jpb.ListJobsResponse = await self._stub.ListJobs(
            list_request(states, labels, page_size, page_token), timeout=timeout, metadata=self._metadata
        )
        return response

    async def list(
        self, states: Iterable[str | int] = (), labels: Mapping[str, str] | None = None, page_size: int = 500
    ) -> AsyncIterator[jpb.Job]:
        token = ""
        states = list(states)
        while True:
            page = await self.list_page(states, labels, page_size, token)
            for job in page.jobs:
                yield job
            token = page.next_page_token
            if not token:
                return

    async def cancel(self, job_id: str, timeout: float = 30.0) -> jpb.Job:
        response: jpb.CancelJobResponse = await self._stub.CancelJob(
            jpb.CancelJobRequest(job_id=job_id), timeout=timeout, metadata=self._metadata
        )
        return response.job

    async def delete(self, job_id: str, timeout: float = 30.0) -> None:
        await self._stub.DeleteJob(jpb.DeleteJobRequest(job_id=job_id), timeout=timeout, metadata=self._metadata)

    async def result(self, job_id: str, fmt: str | None = None, timeout: float = 60.0) -> jpb.GetJobResultResponse:
        request = jpb.GetJobResultRequest(
            job_id=job_id, format=format_value(fmt) if fmt else jpb.OUTPUT_FORMAT_UNSPECIFIED
        )
        response: jpb.GetJobResultResponse = await self._stub.GetJobResult(
            request, timeout=timeout, metadata=self._metadata
        )
        return response

    async def watch(
        self, job_id: str, after_version: int = 0, reconnect_s: float = RECONNECT_S
    ) -> AsyncIterator[jpb.Job]:
        last = after_version
        failing_since: float | None = None
        attempt = 0
        while True:
            call = self._stub.WatchJob(jpb.WatchJobRequest(job_id=job_id, after_version=last), metadata=self._metadata)
            try:
                async for response in call:
                    failing_since, attempt = None, 0
                    last = response.job.version
                    yield response.job
                    if response.job.state in FINISHED:
                        return
                return
            except grpc.RpcError as err:
                if not reconnectable(err):
                    raise
                failing_since = failing_since or time.monotonic()
                if time.monotonic() - failing_since > reconnect_s:
                    raise
            finally:
                call.cancel()
            await asyncio.sleep(min(5.0, 0.25 * 2**attempt))
            attempt += 1

    async def wait(self, job_id: str) -> jpb.Job:
        last = None
        async for update in self.watch(job_id):
            last = update
        return last if last is not None else await self.get(job_id)


async def _aiter(requests: Iterable[jpb.CreateJobRequest]) -> AsyncIterator[jpb.CreateJobRequest]:
    # Files are read a chunk at a time as the call takes them (a blocking read of 1 MiB is quick).
    for request in requests:
        yield request
