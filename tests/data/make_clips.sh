#!/usr/bin/env bash
# Regenerates the committed test clips. Needs Debian's espeak-ng and sox (apt-get install espeak-ng sox);
# the tests themselves only read the committed files.
set -euo pipefail
cd "$(dirname "$0")"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

say() {  # say OUT.wav "text" [WORDS-PER-MINUTE]: 16 kHz mono speech
  espeak-ng -v en-us -s "${3:-150}" -w "$tmp/raw.wav" "$2"
  sox "$tmp/raw.wav" -r 16000 -c 1 -b 16 "$1"
}

# Short sentence for Transcribe (about 3.4 s). At 145 words a minute tiny.en hears "brown fox" at every
# encoder input length (10, 15 and 30 s); at 150 it heard "roundfire" below 30 s.
# Its trailing silence is cut to 55015 samples (3.438 s), the length the audio and upload tests know.
say "$tmp/short.wav" "The quick brown fox jumps over the lazy dog." 145
sox "$tmp/short.wav" speech_short.wav trim 0 55015s

# About 14 s of speech with pauses, for streaming at real-time pace.
say "$tmp/a.wav" "Good morning everyone. Today we talk about the weather."
say "$tmp/b.wav" "It will be sunny in the morning and cold at night."
say "$tmp/c.wav" "Please remember to bring a warm coat tomorrow."
sox -n -r 16000 -c 1 -b 16 "$tmp/gap.wav" trim 0 0.8
sox "$tmp/a.wav" "$tmp/gap.wav" "$tmp/b.wav" "$tmp/gap.wav" "$tmp/c.wav" speech_long.wav

# About 25 s of speech whose pauses are all under 0.5 s: one long utterance, for buffer trims
# inside an utterance. Ogg at the lowest quality keeps the file small.
say "$tmp/p.wav" "Streaming speech recognition turns live audio into text while the speaker is still talking. \
Each word appears first as a guess, and becomes final once the system is sure of it. \
Final words never change, so captions can be shown at once. \
The service cuts its audio buffer at the end of each sentence, which keeps every decode equally fast, even after an hour."
sox "$tmp/p.wav" -C 0 speech_paragraph.ogg

# Four voices, 3.5 to 16 s: windows of every encoder length bucket (tests/test_encoder_length.py).
voice() {  # voice OUT.ogg VOICE "text"
  espeak-ng -v "$2" -s 160 -w "$tmp/raw.wav" "$3"
  sox "$tmp/raw.wav" -r 16000 -c 1 -b 16 "$tmp/v.wav"
  sox "$tmp/v.wav" -C 0 "$1"
}
voice voice_3s.ogg en-gb "Please send the report to the finance team before noon."
voice voice_7s.ogg en-us+f3 "The museum opens at nine in the morning, and the guided tours start every half hour \
until the late afternoon."
voice voice_10s.ogg en-gb-scotland "Our train left the station ten minutes late because of a signal problem. \
The conductor apologised and promised that we would still arrive in time for the meeting in the city."
voice voice_16s.ogg en-us+m3 "The garden behind the old library was planted more than a century ago. \
Every spring the volunteers clear the paths, repair the wooden benches and plant new flowers along the wall. \
Visitors are welcome on weekends, and children may feed the ducks in the pond."

# The short sentence in other containers and formats.
sox speech_short.wav speech_short.flac
sox speech_short.wav -C 3 speech_short.ogg
sox speech_short.wav -r 44100 -c 2 speech_short_44k_stereo.wav

# Two seconds of silence and a one-second 440 Hz tone: no speech in either.
sox -n -r 16000 -c 1 -b 16 silence.wav trim 0 2
sox -n -r 16000 -c 1 -b 16 tone.wav synth 1 sine 440 vol 0.5
ls -l

# sliver_44k_stereo.raw is not made here: it is the 1880-byte LINEAR16 payload (44.1 kHz, stereo,
# 10.7 ms) that tests/test_fuzz.py found crashing word alignment; it is kept as found.
