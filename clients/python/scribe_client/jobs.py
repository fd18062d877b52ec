"""Batch jobs through the blocking client: `ScribeClient(...).jobs`.

    with ScribeClient("127.0.0.1:50051") as client:
        job = client.jobs.submit("meeting.mp3", formats=["srt"], labels={"project": "q3"})
        for update in client.jobs.watch(job.id):      # resumes by itself after a disconnect
            print(update.state, update.progress_percent)
        print(client.jobs.result(job.id, "srt").content)

Every submit carries a request id (one is made when none is given), so a submit retried after a lost
answer returns the job already made instead of making a second one.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterable, Iterator, Mapping

import grpc

from scribe_client.gen import jobs_pb2 as jpb
from scribe_client.gen import jobs_pb2_grpc
from scribe_client.gen import transcription_pb2 as pb
from scribe_client.messages import Audio, TranscribeOptions, audio_chunks, upload_chunk_bytes
from scribe_client.retry import call_metadata, next_delay

#: Format names (as scribe_client.formats and the CLI spell them) and their enum values.
FORMATS: dict[str, jpb.OutputFormat] = {
    "json": jpb.OUTPUT_FORMAT_JSON,
    "txt": jpb.OUTPUT_FORMAT_TEXT,
    "text": jpb.OUTPUT_FORMAT_TEXT,
    "srt": jpb.OUTPUT_FORMAT_SRT,
    "vtt": jpb.OUTPUT_FORMAT_VTT,
    "tsv": jpb.OUTPUT_FORMAT_TSV,
}
STATES: dict[str, int] = {
    jpb.JobState.Name(v).removeprefix("JOB_STATE_").lower(): v for v in jpb.JobState.values() if v
}
FINISHED = frozenset({jpb.JOB_STATE_SUCCEEDED, jpb.JOB_STATE_FAILED, jpb.JOB_STATE_CANCELLED})
#: The server's message limit when it is not known: uploads go in chunks well under it.
CHUNK_BYTES = upload_chunk_bytes(64 * 2**20)
#: How long submit and watch keep trying while the gateway is unreachable (restarting).
RECONNECT_S = 120.0


def state_name(state: int) -> str:
    return jpb.JobState.Name(state).removeprefix("JOB_STATE_").lower()


def format_value(fmt: str) -> jpb.OutputFormat:
    try:
        return FORMATS[fmt.lower()]
    except KeyError:
        raise ValueError(f"format must be one of {', '.join(FORMATS)}, got {fmt!r}") from None


def job_spec(
    options: TranscribeOptions | None = None,
    *,
    path: str | None = None,
    url: str | None = None,
    formats: Iterable[str] = (),
    labels: Mapping[str, str] | None = None,
    webhook_url: str | None = None,
    display_name: str = "",
    request_id: str | None = None,
    sample_rate_hertz: int = 0,
    channels: int = 0,
) -> jpb.JobSpec:
    """A JobSpec from plain values; a path or url source, or neither for an upload."""
    spec = jpb.JobSpec(
        options=(options or TranscribeOptions()).to_pb(),
        output_formats=[format_value(f) for f in formats],
        labels=dict(labels or {}),
        display_name=display_name,
        request_id=request_id or uuid.uuid4().hex,
    )
    if path and url:
        raise ValueError("a job has one source: a path or a url, not both")
    if path:
        spec.path = path
    elif url:
        spec.url = url
    if webhook_url:
        spec.webhook.url = webhook_url
    if sample_rate_hertz:
        spec.encoding = pb.AUDIO_ENCODING_LINEAR16
        spec.sample_rate_hertz = sample_rate_hertz
        spec.audio_channel_count = channels
    return spec


def with_request_id(spec: jpb.JobSpec) -> jpb.JobSpec:
    """The spec with a request id, so that retrying its create cannot make a second job."""
    if spec.request_id:
        return spec
    out = jpb.JobSpec()
    out.CopyFrom(spec)
    out.request_id = uuid.uuid4().hex
    return out


def create_requests(
    spec: jpb.JobSpec, audio: Audio | None, chunk_bytes: int = CHUNK_BYTES
) -> Iterator[jpb.CreateJobRequest]:
    yield jpb.CreateJobRequest(spec=spec)
    if audio is not None:
        for chunk in audio_chunks(audio, chunk_bytes):
            yield jpb.CreateJobRequest(audio_content=chunk)


def list_request(
    states: Iterable[str | int] = (),
    labels: Mapping[str, str] | None = None,
    page_size: int = 100,
    page_token: str = "",
) -> jpb.ListJobsRequest:
    request = jpb.ListJobsRequest(labels=dict(labels or {}), page_size=page_size, page_token=page_token)
    for state in states:
        request.states.append(STATES[state.lower()] if isinstance(state, str) else state)  # type: ignore[arg-type]
    return request


def reconnectable(err: grpc.RpcError) -> bool:
    """A gateway restarting or unreachable: the call may be made again."""
    return err.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL)


class Jobs:
    """JobService over a client's channel (its token and retries)."""

    def __init__(self, channel: grpc.Channel, token: str | None, busy_retries: int = 3) -> None:
        self._stub = jobs_pb2_grpc.JobServiceStub(channel)
        self._metadata = call_metadata(token)
        self._busy_retries = busy_retries

    def submit(
        self,
        audio: Audio | None = None,
        options: TranscribeOptions | None = None,
        *,
        spec: jpb.JobSpec | None = None,
        timeout: float | None = None,
        **fields: object,
    ) -> jpb.Job:
        """Create a job from a file (path or bytes, uploaded), or with `path=` / `url=` (read by the gateway).
        `fields` are job_spec's: formats, labels, webhook_url, display_name, request_id. A gateway that is
        restarting is waited for (RECONNECT_S); the request id makes the retry safe."""
        spec = with_request_id(spec) if spec is not None else job_spec(options, **fields)  # type: ignore[arg-type]
        deadline = time.monotonic() + (RECONNECT_S if timeout is None else timeout)
        attempt = 0
        while True:
            try:
                response: jpb.CreateJobResponse = self._stub.CreateJob(
                    create_requests(spec, audio),
                    timeout=max(1.0, deadline - time.monotonic()) + 3600,
                    metadata=self._metadata,
                )
                return response.job
            except grpc.RpcError as err:
                delay = next_delay(err, attempt, self._busy_retries, deadline - time.monotonic())
                if delay is None and reconnectable(err) and time.monotonic() < deadline:
                    delay = min(5.0, 0.5 * 2**attempt)
                if delay is None:
                    raise
            time.sleep(delay)
            attempt += 1

    def get(self, job_id: str, timeout: float = 30.0) -> jpb.Job:
        response: jpb.GetJobResponse = self._stub.GetJob(
            jpb.GetJobRequest(job_id=job_id), timeout=timeout, metadata=self._metadata
        )
        return response.job

    def list_page(
        self,
        states: Iterable[str | int] = (),
        labels: Mapping[str, str] | None = None,
        page_size: int = 100,
        page_token: str = "",
        timeout: float = 30.0,
    ) -> jpb.ListJobsResponse:
        response: jpb.ListJobsResponse = self._stub.ListJobs(
            list_request(states, labels, page_size, page_token), timeout=timeout, metadata=self._metadata
        )
        return response

    def list(
        self, states: Iterable[str | int] = (), labels: Mapping[str, str] | None = None, page_size: int = 500
    ) -> Iterator[jpb.Job]:
        """Every matching job, newest first, page after page."""
        token = ""
        states = list(states)
        while True:
            page = self.list_page(states, labels, page_size, token)
            yield from page.jobs
            token = page.next_page_token
            if not token:
                return

    def cancel(self, job_id: str, timeout: float = 30.0) -> jpb.Job:
        response: jpb.CancelJobResponse = self._stub.CancelJob(
            jpb.CancelJobRequest(job_id=job_id), timeout=timeout, metadata=self._metadata
        )
        return response.job

    def delete(self, job_id: str, timeout: float = 30.0) -> None:
        self._stub.DeleteJob(jpb.DeleteJobRequest(job_id=job_id), timeout=timeout, metadata=self._metadata)

    def result(self, job_id: str, fmt: str | None = None, timeout: float = 60.0) -> jpb.GetJobResultResponse:
        """The transcript of a job that succeeded, rendered in `fmt` (json, txt, srt, vtt, tsv) when given."""
        request = jpb.GetJobResultRequest(
            job_id=job_id, format=format_value(fmt) if fmt else jpb.OUTPUT_FORMAT_UNSPECIFIED
        )
        response: jpb.GetJobResultResponse = self._stub.GetJobResult(request, timeout=timeout, metadata=self._metadata)
        return response

    def watch(self, job_id: str, after_version: int = 0, reconnect_s: float = RECONNECT_S) -> Iterator[jpb.Job]:
        """The job now, then each change, until it finishes. A broken stream (the gateway restarted) is
        opened again after the last version seen, for up to `reconnect_s` without an answer."""
        last = after_version
        failing_since: float | None = None
        attempt = 0
        while True:
            call = self._stub.WatchJob(jpb.WatchJobRequest(job_id=job_id, after_version=last), metadata=self._metadata)
            try:
                for response in call:
                    failing_since, attempt = None, 0
                    last = response.job.version
                    yield response.job
                    if response.job.state in FINISHED:
                        return
                return  # the server ended the stream without a final state: the job is final already
            except grpc.RpcError as err:
                if not reconnectable(err):
                    raise
                failing_since = failing_since or time.monotonic()
                if time.monotonic() - failing_since > reconnect_s:
                    raise
            finally:
                call.cancel()
            time.sleep(min(5.0, 0.25 * 2**attempt))
            attempt += 1

    def wait(self, job_id: str) -> jpb.Job:
        """Block until the job finishes; returns it in its final state."""
        last = None
        for update in self.watch(job_id):
            last = update
        return last if last is not None else self.get(job_id)
