"""Regenerates the committed speaker-label test conversations (espeak-ng voices, joined with sox).

Needs Debian's espeak-ng and sox (apt-get install espeak-ng sox); the tests only read the committed files.
Run: python tests/data/speakers/make_conversations.py

Each conversation is a Ogg Vorbis file (quality 2: small, and the voices survive it) (16 kHz mono) and a JSON file with its turns: who speaks, when (seconds),
and what. The three espeak-ng voices below are the most different of its English ones for the speaker
model (their mean voice prints are 0.25 to 0.55 apart in cosine, against 0.65 to 0.9 for one voice).
The turn-taking is synthetic: one voice at a time, with pauses of 0.3 to 0.8 s between turns.
"""

from __future__ import annotations

import json
import subprocess
import tempfile
import wave
from pathlib import Path

HERE = Path(__file__).resolve().parent
VOICES = {"A": "en+m7", "B": "en-us+f3", "C": "en-us+m1"}
RATE = 16000

TWO = [
    ("A", "Good morning, thanks for joining the call today.", 0.5),
    ("B", "Happy to be here. Shall we start with the budget for next year?", 0.6),
    ("A", "Yes. The numbers came in on Friday, and they look better than we expected.", 0.4),
    ("B", "That is good news. How much more can we spend on travel?", 0.7),
    ("A", "About ten percent more, if the second quarter holds up.", 0.5),
    ("B", "Then I would like to send two people to the conference in May.", 0.3),
    ("A", "That sounds fine to me. Please send me the names by Monday.", 0.6),
    ("B", "I will. Thank you, and have a good week.", 0.0),
]
THREE = [
    ("A", "Welcome back to the show. Today we have two guests in the studio.", 0.5),
    ("B", "Thanks for having me. It is great to be back.", 0.4),
    ("C", "Hello everyone, and thank you for the invitation.", 0.6),
    ("A", "Let us talk about the new train line that opens next month.", 0.5),
    ("C", "It will cut the trip to the city from an hour to twenty minutes.", 0.3),
    ("B", "And the tickets will cost less than the bus does today.", 0.7),
    ("A", "What do the people who live near the tracks think about the noise?", 0.4),
    ("C", "Most of them are happy, because the trains run quietly at night.", 0.5),
    ("B", "There was a meeting last week, and very few people complained.", 0.0),
]
KNOWN = {
    "known_A.ogg": ("A", "My name does not matter, but my voice is the one you will hear first in the call."),
    "known_B.ogg": ("B", "This is a short recording of my voice, so that the system can recognise me later."),
}


def say(voice: str, text: str, out: Path) -> list[int]:
    raw = out.with_suffix(".raw.wav")
    subprocess.run(["espeak-ng", "-v", voice, "-s", "155", "-w", str(raw), text], check=True)
    subprocess.run(["sox", str(raw), "-r", str(RATE), "-c", "1", "-b", "16", str(out)], check=True)
    with wave.open(str(out)) as w:
        frames = w.readframes(w.getnframes())
    return list(memoryview(frames).cast("h"))


def trim(samples: list[int], threshold: int = 200) -> list[int]:
    """espeak pads its output with silence: cut it, so the turns' times are the speech's."""
    loud = [i for i, s in enumerate(samples) if abs(s) > threshold]
    return samples[loud[0] : loud[-1] + 1] if loud else samples


def write_flac(samples: list[int], path: Path, tmp: Path) -> None:
    wav = tmp / "out.wav"
    with wave.open(str(wav), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(RATE)
        w.writeframes(b"".join(int(s).to_bytes(2, "little", signed=True) for s in samples))
    subprocess.run(["sox", str(wav), "-C", "2", str(path)], check=True)


def build(name: str, script: list[tuple[str, str, float]], tmp: Path) -> None:
    samples: list[int] = [0] * int(0.5 * RATE)
    turns = []
    for i, (speaker, text, pause) in enumerate(script):
        spoken = trim(say(VOICES[speaker], text, tmp / f"{name}_{i}.wav"))
        start = len(samples) / RATE
        samples.extend(spoken)
        turns.append({"speaker": speaker, "start": round(start, 3), "end": round(len(samples) / RATE, 3), "text": text})
        samples.extend([0] * int(pause * RATE))
    samples.extend([0] * int(0.5 * RATE))
    write_flac(samples, HERE / f"{name}.ogg", tmp)
    (HERE / f"{name}.json").write_text(json.dumps({"voices": VOICES, "turns": turns}, indent=1) + "\n")


def main() -> None:
    with tempfile.TemporaryDirectory() as folder:
        tmp = Path(folder)
        build("two_voices", TWO, tmp)
        build("three_voices", THREE, tmp)
        for file, (speaker, text) in KNOWN.items():
            write_flac(trim(say(VOICES[speaker], text, tmp / "known.wav")), HERE / file, tmp)


if __name__ == "__main__":
    main()
