"""Request messages built from plain Python values (pure functions the sync and async clients share)."""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from scribe_client.gen import transcription_pb2 as pb

#: A recording: a path to an audio file, or its bytes.
Audio = str | os.PathLike[str] | bytes

_TASKS = {"transcribe": pb.TASK_TRANSCRIBE, "translate": pb.TASK_TRANSLATE}


@dataclass(frozen=True)
class TranscribeOptions:
    """Decoding options (RecognitionOptions in the proto). The defaults are the server's."""

    #: BCP-47 code such as "en"; None detects the language.
    language: str | None = None
    #: "transcribe", or "translate" into English (multilingual models only).
    task: str = "transcribe"
    #: Beam width; 0 is the server default.
    beam_size: int = 0
    #: Per-word start and end times and probabilities.
    word_timestamps: bool = False
    #: Skip non-speech with the Silero VAD before decoding.
    vad_filter: bool = False
    #: Text that conditions the decoder: names, jargon, spelling.
    initial_prompt: str | None = None
    #: Model to decode with (e.g. "tiny.en", "base"); None is the fleet's default.
    model: str | None = None
    #: Speaker labels ("who spoke when") on every segment and word, and the speakers found; on a stream,
    #: on every final. Setting min_speakers, max_speakers or known_speakers turns them on too.
    speakers: bool = False
    #: Bounds on the number of speakers; 0 lets the audio decide (at most 10).
    min_speakers: int = 0
    max_speakers: int = 0
    #: Voices to label by name: name -> a 2 to 30 s recording of that person alone (path or bytes); up to 4.
    known_speakers: Mapping[str, Audio] = field(default_factory=dict)

    @property
    def wants_speakers(self) -> bool:
        return self.speakers or bool(self.min_speakers or self.max_speakers or self.known_speakers)

    def to_pb(self) -> pb.RecognitionOptions:
        if self.task not in _TASKS:
            raise ValueError(f"task must be one of {', '.join(_TASKS)}, got {self.task!r}")
        options = pb.RecognitionOptions(
            language_code=self.language or "",
            task=_TASKS[self.task],
            beam_size=self.beam_size,
            enable_word_time_offsets=self.word_timestamps,
            vad_filter=self.vad_filter,
            initial_prompt=self.initial_prompt or "",
            model=self.model or "",
        )
        if self.wants_speakers:
            options.diarization_config.CopyFrom(
                pb.SpeakerDiarizationConfig(
                    min_speaker_count=self.min_speakers,
                    max_speaker_count=self.max_speakers,
                    known_speakers=[
                        pb.KnownSpeaker(name=name, audio_content=audio_bytes(clip))
                        for name, clip in self.known_speakers.items()
                    ],
                )
            )
        return options


def audio_bytes(audio: Audio) -> bytes:
    return audio if isinstance(audio, bytes) else Path(audio).read_bytes()


def transcribe_request(
    audio: Audio, options: TranscribeOptions | None, sample_rate_hertz: int = 0, channels: int = 0
) -> pb.TranscribeRequest:
    """A container file's bytes, or raw LINEAR16 when `sample_rate_hertz` is given."""
    request = pb.TranscribeRequest(audio_content=audio_bytes(audio), options=(options or TranscribeOptions()).to_pb())
    if sample_rate_hertz:
        request.encoding = pb.AUDIO_ENCODING_LINEAR16
        request.sample_rate_hertz = sample_rate_hertz
        request.audio_channel_count = channels
    return request


#: Bytes of the file in each TranscribeUpload message (less when the server's message limit is smaller).
UPLOAD_CHUNK_BYTES = 1 << 20
#: Room left in a message for everything but the audio (options, initial prompt, framing).
MESSAGE_MARGIN_BYTES = 64 << 10


def audio_size(audio: Audio) -> int:
    return len(audio) if isinstance(audio, bytes) else os.path.getsize(audio)


def fits_one_message(audio: Audio, max_message_bytes: int) -> bool:
    """Whether a Transcribe request with this audio stays under the server's message limit."""
    return audio_size(audio) <= max_message_bytes - MESSAGE_MARGIN_BYTES


def upload_chunk_bytes(max_message_bytes: int) -> int:
    return max(4096, min(UPLOAD_CHUNK_BYTES, (max_message_bytes - MESSAGE_MARGIN_BYTES) // 2))


def upload_config(
    options: TranscribeOptions | None, sample_rate_hertz: int = 0, channels: int = 0
) -> pb.TranscribeUploadRequest:
    """The first message of TranscribeUpload: a container file, or raw LINEAR16 when `sample_rate_hertz` is given."""
    config = pb.UploadConfig(options=(options or TranscribeOptions()).to_pb())
    if sample_rate_hertz:
        config.encoding = pb.AUDIO_ENCODING_LINEAR16
        config.sample_rate_hertz = sample_rate_hertz
        config.audio_channel_count = channels
    return pb.TranscribeUploadRequest(upload_config=config)


def audio_chunks(audio: Audio, chunk_bytes: int) -> Iterator[bytes]:
    """The file's bytes in order, read from disk a chunk at a time (never the whole file in memory)."""
    if isinstance(audio, bytes):
        for start in range(0, len(audio), chunk_bytes):
            yield audio[start : start + chunk_bytes]
        return
    with open(audio, "rb") as data:
        while chunk := data.read(chunk_bytes):
            yield chunk


def final_result(reports: Iterable[pb.TranscribeWithProgressResponse]) -> pb.TranscribeResponse:
    """The `result` of the last progress report."""
    for report in reports:
        if report.HasField("result"):
            return report.result
    raise RuntimeError("the server ended the call without a result")


@dataclass(frozen=True)
class StreamConfig:
    """Settings of a stream (StreamingConfig in the proto). Audio is LINEAR16."""

    sample_rate_hertz: int = 16_000
    channels: int = 1
    options: TranscribeOptions = TranscribeOptions()
    #: Send interim results (is_final=False) while the speech goes on.
    interim_results: bool = True
    #: End the stream after the first utterance.
    single_utterance: bool = False
    #: Send speech-began and speech-ended events.
    voice_activity_events: bool = False

    def to_pb(self) -> pb.StreamingTranscribeRequest:
        return pb.StreamingTranscribeRequest(
            streaming_config=pb.StreamingConfig(
                encoding=pb.AUDIO_ENCODING_LINEAR16,
                sample_rate_hertz=self.sample_rate_hertz,
                audio_channel_count=self.channels,
                options=self.options.to_pb(),
                interim_results=self.interim_results,
                single_utterance=self.single_utterance,
                enable_voice_activity_events=self.voice_activity_events,
            )
        )
