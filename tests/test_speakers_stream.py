"""Speaker labels on a live stream: every final is labelled online, and a stream whose worker is killed
with SIGKILL goes on on another worker with the same labels for the same voices."""

from __future__ import annotations

import os
import signal

from services.gen import transcription_pb2 as pb
from tests.conftest import Fleet
from tests.helpers import stream_requests
from tests.speakers_data import SPEAKERS, conversation, pcm16, word_labels


def test_stream_finals_keep_their_labels_after_the_worker_is_killed(serving_fleet: Fleet) -> None:
    audio, turns = conversation("two_voices")
    bob = pb.KnownSpeaker(name="Bob", audio_content=(SPEAKERS / "known_B.ogg").read_bytes())
    requests = stream_requests(
        pcm16(audio),
        16000,
        pace=1.5,
        interim_results=True,
        options=pb.RecognitionOptions(enable_word_time_offsets=True),
        diarization_config=pb.SpeakerDiarizationConfig(known_speakers=[bob]),
    )
    call = serving_fleet.transcription.StreamingTranscribe(requests, timeout=180)
    finals: list[pb.StreamingRecognitionResult] = []
    workers: list[str] = []
    killed_at = None
    try:
        for response in call:
            workers.append(response.worker_id)
            for result in response.results:
                if not result.is_final:
                    assert not result.speaker_label  # interims are not labelled
                    continue
                finals.append(result)
            # Kill the worker once the first two turns (two voices) have final words.
            if killed_at is None and finals and finals[-1].result_start_offset.seconds >= 9:
                killed_at = len(finals)
                os.kill(serving_fleet.workers()[response.worker_id].supervisor_pid, signal.SIGKILL)
        assert killed_at is not None and len(set(workers)) == 2, "the stream did not move to another worker"
        assert killed_at < len(finals)
        assert all(r.speaker_label for r in finals)
        for result in finals:
            assert {w.speaker_label for w in result.alternatives[0].words} == {result.speaker_label}
        found = [
            (w.start_offset.ToNanoseconds() / 1e9, w.end_offset.ToNanoseconds() / 1e9, w.speaker_label)
            for r in finals
            for w in r.alternatives[0].words
        ]
        # A final that holds the end of one turn and the start of the next may label a word or two of
        # it wrong; the voices' labels are right for nine words in ten or more, before and after the move.
        moved_at = finals[killed_at].result_start_offset.ToNanoseconds() / 1e9
        for part in ([w for w in found if w[0] < moved_at], [w for w in found if w[0] >= moved_at]):
            labels = word_labels(part, turns)
            for speaker, label in (("A", "1"), ("B", "Bob")):
                assert labels[speaker][label] >= 0.9 * labels[speaker].total(), labels
    finally:
        serving_fleet.wait_all_serving(timeout=60)
