#!/usr/bin/env bash
# Regenerates the committed non-English test clips (the multilingual model `base`: language detection and
# translation). Needs Debian's espeak-ng and sox; the tests only read the committed files.
set -euo pipefail
cd "$(dirname "$0")"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

say() {  # say VOICE OUT.wav "text": 16 kHz mono speech
  espeak-ng -v "$1" -s 140 -w "$tmp/raw.wav" "$3"
  sox "$tmp/raw.wav" -r 16000 -c 1 -b 16 "$2"
}

say de "$tmp/de.wav" "Guten Morgen. Heute ist das Wetter sehr schön, und wir gehen am Nachmittag in den Park."
say es "$tmp/es.wav" "Buenos días. Hoy hace muy buen tiempo, y por la tarde vamos a caminar por el parque."
say it "$tmp/it.wav" "Buongiorno a tutti. Oggi il tempo è molto bello, e nel pomeriggio andiamo a fare una passeggiata nel parco."
say en-us "$tmp/en.wav" "Please remember to bring a warm coat tomorrow, because it will be cold at night."
sox -n -r 16000 -c 1 -b 16 "$tmp/gap.wav" trim 0 4

# Ogg at a low quality keeps each clip small.
sox "$tmp/de.wav" -C 0 german.ogg
sox "$tmp/es.wav" -C 0 spanish.ogg
sox "$tmp/it.wav" -C 0 italian.ogg
# German, 4 s of silence (a window of its own on each side: chunking.MAX_GAP_S is 3 s), then English.
sox "$tmp/de.wav" "$tmp/gap.wav" "$tmp/en.wav" -C 0 german_then_english.ogg
ls -l german.ogg spanish.ogg italian.ogg german_then_english.ogg
