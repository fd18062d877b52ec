"""Where a live stream's final latency goes: the client's view of each final matched with the worker's
`stream_final` log line for it (services/gpu_worker/streaming/call.py).

Every process on one machine reads the same CLOCK_MONOTONIC (Python's `time.monotonic`), so the client's
arrival times and the worker's timestamps subtract. For each utterance's last final, from the end of its
speech (as a live client captured it) to the final's arrival at the client:

- *audio in*: the last speech reaches the worker (100 ms chunks, gateway, worker's reader);
- *endpoint*: the silence that ends the utterance is heard (the end-of-speech timeout, 0.5 s by default);
- *stream busy*: the stream's audio waited while its worker was still busy with this stream's earlier decode
  (for a final that reuses the pause decode, made while the silence was being heard: that decode running on);
- *queue*, *batch formation*, *encode*, *decode*, *alignment*: the final's own decode, when it needed one;
- *worker other*: the rest of the worker's time (session bookkeeping, the response);
- *gateway out*: from the worker's send to the client's receipt.

A second table splits the deciding decode each final came from (its own, or the pause decode it reused)
into the same parts: what the *stream busy* time was spent on.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from bench.stream_metrics import Received, Utterance, markdown_table, nearest, percentile

DECODE_PARTS = (
    ("queue_s", "queue (other work first)"),
    ("form_s", "batch formation"),
    ("encode_s", "encode"),
    ("decode_s", "decode"),
    ("align_s", "alignment"),
)
PARTS = (
    ("audio_in", "audio in (chunks, gateway)"),
    ("endpoint", "endpoint (silence heard)"),
    ("busy", "stream busy (own earlier decode)"),
    ("queue", "queue (other batches)"),
    ("form", "batch formation"),
    ("encode", "encode"),
    ("decode", "decode"),
    ("align", "alignment"),
    ("worker", "worker other"),
    ("gateway", "gateway out"),
)


@dataclass
class Breakdown:
    """Per-part seconds of every matched final, and what could not be matched."""

    parts: dict[str, list[float]] = field(default_factory=lambda: {k: [] for k, _ in PARTS})
    decodes: dict[str, list[float]] = field(default_factory=lambda: {k: [] for k, _ in DECODE_PARTS})
    totals: list[float] = field(default_factory=list)
    reused: int = 0
    unmatched: int = 0

    def add(self, other: Breakdown) -> None:
        for k, values in other.parts.items():
            self.parts[k] += values
        for k, values in other.decodes.items():
            self.decodes[k] += values
        self.totals += other.totals
        self.reused += other.reused
        self.unmatched += other.unmatched


def final_lines(run_dir: Path) -> dict[str, list[dict[str, object]]]:
    """The workers' `stream_final` lines, by request id."""
    lines: dict[str, list[dict[str, object]]] = {}
    for log in (run_dir / "logs").glob("gpu_worker_*.log"):
        for raw in log.read_text(errors="replace").splitlines():
            if '"stream_final"' not in raw:
                continue
            try:
                line = json.loads(raw)
            except ValueError:
                continue
            lines.setdefault(str(line.get("request_id")), []).append(line)
    return lines


def breakdown(utts: list[Utterance], results: list[Received], t0: float, lines: list[dict[str, object]]) -> Breakdown:
    """Match each utterance's last final with its worker line and split its latency."""
    out = Breakdown()
    last: dict[int, Received] = {}
    for r in results:
        if r.final and r.words:
            for start, end, _ in r.words:
                i = nearest(utts, (start + end) / 2)
                if i not in last or r.arrived >= last[i].arrived:
                    last[i] = r
    for i, r in sorted(last.items()):
        line = next((x for x in lines if abs(float(x["end_s"]) - r.words[-1][1]) < 0.011), None)  # type: ignore[arg-type]
        if line is None:
            out.unmatched += 1
            continue

        def at(key: str, line: dict[str, object] = line) -> float:
            return float(line.get(key, 0.0))  # type: ignore[arg-type]

        spoken = t0 + utts[i].end
        arrived = t0 + r.arrived
        reused = bool(line.get("reused"))
        own = 0.0 if reused else at("queue_s") + at("form_s") + at("encode_s") + at("decode_s") + at("align_s")
        values = {
            "audio_in": at("audio_in_at") - spoken,
            "endpoint": at("endpoint_at") - at("audio_in_at"),
            "busy": at("detected_at") - at("endpoint_at"),
            "queue": 0.0 if reused else at("queue_s"),
            "form": 0.0 if reused else at("form_s"),
            "encode": 0.0 if reused else at("encode_s"),
            "decode": 0.0 if reused else at("decode_s"),
            "align": 0.0 if reused else at("align_s"),
            "worker": at("sent_at") - at("detected_at") - own,
            "gateway": arrived - at("sent_at"),
        }
        for k, v in values.items():
            out.parts[k].append(v)
        for k, _ in DECODE_PARTS:
            out.decodes[k].append(at(k))
        out.totals.append(arrived - spoken)
        out.reused += reused
    return out


def breakdown_table(b: Breakdown) -> str:
    """Mean and p95 of each part, and its share of the mean final latency."""
    mean_total = sum(b.totals) / len(b.totals) if b.totals else float("nan")
    rows = []
    for key, name in PARTS:
        values = b.parts[key]
        mean = sum(values) / len(values) if values else float("nan")
        rows.append([name, f"{mean:.3f}", f"{percentile(values, 95):.3f}", f"{100 * mean / mean_total:.0f}%"])
    rows.append(["**final latency**", f"{mean_total:.3f}", f"{percentile(b.totals, 95):.3f}", "100%"])
    table = markdown_table(["part", "mean s", "p95 s", "share of mean"], rows)
    note = (
        f"\n\n{len(b.totals)} finals matched ({b.unmatched} not), {b.reused} of them reused the pause decode "
        "(no decode of their own after the silence). The deciding decode each final came from:\n\n"
    )
    rows = []
    for key, name in DECODE_PARTS:
        values = b.decodes[key]
        mean = sum(values) / len(values) if values else float("nan")
        rows.append([name, f"{mean:.3f}", f"{percentile(values, 95):.3f}"])
    return table + note + markdown_table(["part of that decode", "mean s", "p95 s"], rows)
