"""The live-stream targets, and the regression check of `make bench` against committed figures.

bench/streaming_baseline.json (committed) holds the final-latency p95 of one and four streams as last
accepted (with the machine and load they were measured at). A run whose p95 is worse than that by more
than `TOLERANCE` (relative) plus `SLACK_S` is flagged as a regression in the table, and `--check` makes
the benchmark exit non-zero. `--update-baseline` writes the run's figures as the new baseline.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from bench.fleet import ROOT
from bench.stream_metrics import markdown_table

BASELINE = ROOT / "bench" / "streaming_baseline.json"  # committed (bench/results/ is not)
CHECKED_K = (1, 4)
TOLERANCE = 0.25
SLACK_S = 0.10
KEEPS_UP_LAG_S = 2.0  # a stream keeps up when its call ends within this of its audio's end


@dataclass
class LoadRow:
    """One K of the load section."""

    k: int
    final_p50: float
    final_p95: float
    worst_lag: float
    errors: int

    @property
    def keeps_up(self) -> bool:
        return not self.errors and self.worst_lag < KEEPS_UP_LAG_S


@dataclass
class Baseline:
    final_p95_s: dict[int, float] = field(default_factory=dict)
    note: str = ""

    @staticmethod
    def load(path: Path = BASELINE) -> Baseline:
        if not path.is_file():
            return Baseline()
        data = json.loads(path.read_text())
        return Baseline({int(k): float(v) for k, v in data["final_p95_s"].items()}, str(data.get("note", "")))

    def save(self, path: Path = BASELINE) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        data = {"final_p95_s": {str(k): round(v, 3) for k, v in sorted(self.final_p95_s.items())}, "note": self.note}
        path.write_text(json.dumps(data, indent=2) + "\n")


def regression(k: int, p95: float, baseline: Baseline) -> str:
    """'' when within the committed figure's tolerance (or none is committed for K), else what regressed."""
    before = baseline.final_p95_s.get(k)
    if before is None or k not in CHECKED_K:
        return ""
    if math.isnan(p95) or p95 > before * (1 + TOLERANCE) + SLACK_S:
        return f"REGRESSION: K={k} final p95 {p95:.2f} s against {before:.2f} s committed"
    return ""


def check_cell(k: int, p95: float, baseline: Baseline) -> str:
    before = baseline.final_p95_s.get(k)
    if before is None or k not in CHECKED_K:
        return ""
    flag = regression(k, p95, baseline)
    return f"**regression** (committed {before:.2f})" if flag else f"ok (committed {before:.2f})"


def targets_section(rows: list[LoadRow], wer_gap: float | None) -> str:
    """Each live-stream target of issues 19 and 24, met or missed, with the figure."""
    by_k = {r.k: r for r in rows}
    lines: list[list[str]] = []

    def add(name: str, k: int, ok: bool | None, figure: str) -> None:
        status = "not run" if ok is None else ("met" if ok else "missed")
        lines.append([name, figure if k in by_k or k == 0 else "", status])

    def p95(k: int, bound: float, name: str) -> None:
        row = by_k.get(k)
        add(name, k, None if row is None else row.keeps_up and row.final_p95 <= bound, _fig(row, "final_p95"))

    p95(1, 1.2, "1 stream: final p95 ≤ 1.2 s")
    p95(4, 1.5, "4 streams: final p95 ≤ 1.5 s")
    p95(4, 1.0, "4 streams: final p95 ≤ 1.0 s")
    row8 = by_k.get(8)
    add(
        "8 streams keep up, worst end lag ≤ 1.5 s",
        8,
        None if row8 is None else (not row8.errors and row8.worst_lag <= 1.5),
        _fig(row8, "worst_lag"),
    )
    row12 = by_k.get(12)
    add("12 streams keep up", 12, None if row12 is None else row12.keeps_up, _fig(row12, "worst_lag"))
    gap = "" if wer_gap is None else f"{wer_gap:+.2f} points"
    add("streaming WER within 1.0 point of Transcribe", 0, None if wer_gap is None else wer_gap <= 1.0, gap)
    return markdown_table(["target", "figure", "status"], lines)


def _fig(row: LoadRow | None, attr: str) -> str:
    return "" if row is None else f"{getattr(row, attr):.2f} s"
