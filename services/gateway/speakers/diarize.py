"""Speaker labels for one recording, however many workers decoded its pieces: the pieces' voice
embeddings (each in its piece's time) are clustered together once, so a speaker keeps one label from the
first piece to the last, and the labels go on the merged transcript."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from services.common.convert import duration
from services.gateway.speakers import clustering, labelling
from services.gen import transcription_pb2 as pb
from services.gpu_worker.speakers.options import SpeakerOptions, speaker_options

#: A speaker whose centroid is at least this similar to a known speaker's clip takes its name.
KNOWN_COSINE = 0.5


@dataclass
class Collected:
    """Every piece's embeddings, moved to recording time."""

    starts: list[float]
    ends: list[float]
    vectors: list[np.ndarray]
    reference_names: tuple[str, ...] = ()
    references: np.ndarray | None = None

    @classmethod
    def empty(cls) -> Collected:
        return cls([], [], [])

    def add(self, part: pb.SpeakerEmbeddings, offset_s: float) -> None:
        dim = part.dimension
        if dim and part.vectors:
            vectors = np.frombuffer(part.vectors, dtype="<f4").reshape(-1, dim)
            self.vectors.append(vectors)
            self.starts.extend(s + offset_s for s in part.starts)
            self.ends.extend(e + offset_s for e in part.ends)
        if part.reference_names and self.references is None and dim:
            self.reference_names = tuple(part.reference_names)
            self.references = np.frombuffer(part.reference_vectors, dtype="<f4").reshape(-1, dim)


def _match_known(centres: np.ndarray, names: Sequence[str], references: np.ndarray | None) -> dict[int, str]:
    """Speaker index -> known name, each name to at most one speaker, most similar pairs first."""
    if references is None or not len(names) or not len(centres):
        return {}
    refs = references / np.maximum(np.linalg.norm(references, axis=1, keepdims=True), 1e-9)
    similarity = centres @ refs.T
    out: dict[int, str] = {}
    used: set[int] = set()
    for flat in np.argsort(-similarity, axis=None):
        speaker, ref = np.unravel_index(int(flat), similarity.shape)
        if similarity[speaker, ref] < KNOWN_COSINE:
            break
        if int(speaker) in out or int(ref) in used:
            continue
        out[int(speaker)] = names[int(ref)]
        used.add(int(ref))
    return out


def label_response(
    response: pb.TranscribeResponse, found: Collected, options: SpeakerOptions, keep_words: bool
) -> None:
    """Label `response` in place: speaker_label on its words and segments (split at changes), and
    its speakers; words are dropped afterwards unless the client asked for them."""
    vectors = np.concatenate(found.vectors) if found.vectors else np.zeros((0, 1), dtype=np.float32)
    speakers = clustering.cluster(vectors, options.min_speakers, options.max_speakers)
    turns = labelling.timeline(found.starts, found.ends, [int(s) for s in speakers])
    known = _match_known(clustering.centroids(vectors, speakers), found.reference_names, found.references)
    # Unknown voices are numbered in the order their first word is heard.
    seen: list[int] = []
    for segment in response.segments:
        spans = [(w.start_offset, w.end_offset) for w in segment.words] or [(segment.start_offset, segment.end_offset)]
        for start, end in spans:
            speaker = labelling.speaker_at(turns, start.ToNanoseconds() / 1e9, end.ToNanoseconds() / 1e9)
            if speaker is not None and speaker not in seen:
                seen.append(speaker)
    count = int(speakers.max()) + 1 if len(speakers) else 0
    seen.extend(s for s in range(count) if s not in seen)
    names: dict[int, str] = {}
    number = 0
    for speaker in seen:
        if speaker in known:
            names[speaker] = known[speaker]
        else:
            number += 1
            names[speaker] = str(number)
    segments = labelling.label_segments(response.segments, turns, [names.get(i, "") for i in range(count)])
    heard = {w.speaker_label for s in segments for w in s.words} | {s.speaker_label for s in segments}
    times = labelling.speaking_times(turns)
    del response.segments[:]
    for segment in segments:
        if not keep_words:
            del segment.words[:]
        response.segments.append(segment)
    del response.speakers[:]
    for speaker in seen:
        if names[speaker] in heard:
            response.speakers.append(
                pb.SpeakerInfo(speaker_label=names[speaker], speaking_time=duration(times.get(speaker, 0.0)))
            )
    response.ClearField("speaker_embeddings")


class RecordingSpeakers:
    """Speaker labels for one call in the gateway: `add` each piece's worker result as it completes,
    `finish` the merged transcript. None from `of` when the call did not ask for speaker labels."""

    def __init__(self, options: pb.RecognitionOptions) -> None:
        self.options = speaker_options(options.diarization_config, "options.diarization_config")
        self.keep_words = options.enable_word_time_offsets
        self.found = Collected.empty()

    @classmethod
    def of(cls, options: pb.RecognitionOptions) -> RecordingSpeakers | None:
        """Validates the config (INVALID_ARGUMENT naming the field) before any audio goes to a worker."""
        return cls(options) if options.HasField("diarization_config") else None

    @staticmethod
    def piece_options(options: pb.RecognitionOptions, index: int) -> pb.RecognitionOptions:
        """Known speakers' clips go with the first piece only: one worker embeds them."""
        if index == 0 or not options.diarization_config.known_speakers:
            return options
        out = pb.RecognitionOptions()
        out.CopyFrom(options)
        del out.diarization_config.known_speakers[:]
        return out

    def add(self, result: pb.TranscribeResponse, offset_s: float) -> None:
        self.found.add(result.speaker_embeddings, offset_s)
        result.ClearField("speaker_embeddings")

    def interim(self, segments: Sequence[pb.Segment]) -> None:
        """Progress reports' segments (copies) before the labels are known: words only if asked for."""
        if not self.keep_words:
            for segment in segments:
                del segment.words[:]

    def finish(self, response: pb.TranscribeResponse) -> None:
        label_response(response, self.found, self.options, self.keep_words)
