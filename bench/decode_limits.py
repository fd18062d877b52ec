"""What the decode limits cost and save: decompression bombs with and without MAX_DECODE_RATIO, and how far
below the ratio real low-bitrate speech stays.

Each measurement runs `decode_container` in a fresh process and reports its time and its peak RSS above
the process's RSS after imports (VmHWM, reset just before the call). Writes a Markdown table to stdout and
to bench/results/decode_limits.md.

    .venv/bin/python -m bench.decode_limits
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
SHARED_AUDIO = ROOT.parent / "shared" / "audio"

_CHILD = r"""
import json, sys, time
from pathlib import Path
sys.path.insert(0, {root!r})
from services.common.audio import AudioError, decode_container
data = Path(sys.argv[1]).read_bytes()
ratio = float(sys.argv[2])
def hwm():
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
Path("/proc/self/clear_refs").write_text("5")
base = hwm()
started = time.perf_counter()
try:
    audio = decode_container(data, 7200, ratio)
    outcome = f"OK, {{audio.size / 16000:.0f}} s"
except AudioError as err:
    outcome = err.reason
print(json.dumps({{"outcome": outcome, "seconds": time.perf_counter() - started, "peak_mib": hwm() - base}}))
"""


def measure(path: Path, ratio: float) -> dict[str, object]:
    out = subprocess.run(
        [sys.executable, "-c", _CHILD.format(root=str(ROOT)), str(path), str(ratio)],
        capture_output=True,
        text=True,
        check=True,
    )
    result: dict[str, object] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def bombs(folder: Path) -> list[tuple[str, Path]]:
    sys.path.insert(0, str(ROOT))
    from tests.bad_audio import flac_bomb

    made = []
    for label, data in (
        ("3 h FLAC, length in header", flac_bomb(3 * 3600, rate=8000, declare_length=True)),
        ("3 h FLAC, length unknown", flac_bomb(3 * 3600, rate=8000, declare_length=False)),
        ("1.9 h FLAC, length unknown", flac_bomb(1.9 * 3600, rate=8000, declare_length=False)),
    ):
        path = folder / (label.replace(" ", "_").replace(",", "") + ".flac")
        path.write_bytes(data)
        made.append((f"{label} ({len(data) / 1024:.0f} KiB)", path))
    return made


def speech_ratios() -> list[tuple[str, float]]:
    """Decoded size over file size for real speech encoded at the lowest common bitrates."""
    from services.common.audio import DECODED_BYTES_PER_S, decode_container
    from tests.bad_audio import encode_audio

    manifest = SHARED_AUDIO / "manifest.tsv"
    if not manifest.is_file():
        return []
    pieces: list[np.ndarray] = []
    names = [line.split("\t")[0] for line in manifest.read_text().splitlines()[1:]]
    for name in names:  # about two minutes of speech, pauses between utterances included
        pieces.append(decode_container((SHARED_AUDIO / name).read_bytes(), 7200))
        if sum(p.size for p in pieces) > 16000 * 120:
            break
    first = f"{len(pieces)} clips from {names[0].split('/')[0]}"
    samples = np.concatenate(pieces).reshape(1, -1).astype(np.float64)
    seconds = samples.shape[1] / 16000
    rows = []
    for label, codec, container, rate, bit_rate in (
        ("Opus 6 kbps", "libopus", "ogg", 16000, 6000),
        ("MP3 8 kbps", "libmp3lame", "mp3", 16000, 8000),
        ("AMR-NB 4.75 kbps", "libopencore_amrnb", "amr", 8000, 4750),
        ("FLAC", "flac", "flac", 16000, None),
    ):
        resampled = samples if rate == 16000 else samples[:, ::2]
        data = encode_audio(resampled, rate, codec, container, bit_rate)
        rows.append((f"{label} ({first}, {seconds:.0f} s)", seconds * DECODED_BYTES_PER_S / len(data)))
    return rows


def main() -> None:
    folder = ROOT / "bench" / "results"
    folder.mkdir(parents=True, exist_ok=True)
    lines = [
        "| File | MAX_DECODE_RATIO | Outcome | Time s | Peak RSS over baseline MiB |",
        "|---|---|---|---|---|",
    ]
    for label, path in bombs(folder):
        for ratio in (0.0, 1000.0):
            r = measure(path, ratio)
            lines.append(
                f"| {label} | {'off' if not ratio else f'{ratio:g}'} | {r['outcome']} | "
                f"{float(r['seconds']):.2f} | {float(r['peak_mib']):.0f} |"  # type: ignore[arg-type]
            )
    ratios = speech_ratios()
    if ratios:
        lines += ["", "| Real speech | Decoded size / file size |", "|---|---|"]
        lines += [f"| {label} | {ratio:.0f} |" for label, ratio in ratios]
    table = "\n".join(lines)
    stamp = time.strftime("%Y-%m-%d %H:%M")
    (folder / "decode_limits.md").write_text(f"Measured {stamp}\n\n{table}\n")
    print(table)


if __name__ == "__main__":
    main()
