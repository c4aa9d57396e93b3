"""The dashboard's charts as inline SVG, drawn on the server (no chart library in the page).

Same rule as the incident chart: only what was measured. The weight is a step line that changes at the
recorded moments the live alias changed (step events, the rollback, success) and ends now; the new
version's error rate is one dot per second in which it served traffic, joined only to the next second's
dot when that second had traffic too — seconds without requests are gaps.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from html import escape

from backout.control.store import Deployment, Event
from backout.runbooks.incidents.chart import gapped

WIDTH, HEIGHT = 640, 220
PAD_L, PAD_R, PAD_T, PAD_B = 40, 40, 12, 26


@dataclass(frozen=True)
class ChartData:
    """What one deployment's chart shows: times are epoch seconds."""

    start: float
    end: float
    weights: list[tuple[float, float]]  # (when the alias changed, % on the target after it)
    errors: list[tuple[float, float]]  # (end of a second with traffic, error rate % of the target)
    threshold: float | None = None  # the error-rate alarm's, in %

    @property
    def last_weight(self) -> float:
        return self.weights[-1][1] if self.weights else 0.0


def weight_steps(d: Deployment, events: list[Event]) -> list[tuple[float, float]]:
    """The target's share of traffic at each recorded change, from the deployment's events."""
    out = [(d.created_at, 0.0)]
    for e in events:
        if e.kind == "step_reached" and isinstance(e.data, dict):
            out.append((e.ts, float(e.data.get("weight", 0.0))))
        elif e.kind == "rolled_back":
            out.append((e.ts, 0.0))
        elif e.kind == "succeeded":
            out.append((e.ts, 100.0))
    if d.rollback_completed_at is not None and not any(e.kind == "rolled_back" for e in events):
        # the deployer writes the record before its event: a page updated in between already shows the rollback
        out.append((d.rollback_completed_at, 0.0))
    return out


def svg(data: ChartData, title: str) -> str:
    """An SVG with the weight steps (purple), the error-rate dots (red), the threshold (dashed)."""
    span = max(1.0, data.end - data.start)

    def x(t: float) -> float:
        return PAD_L + (WIDTH - PAD_L - PAD_R) * (min(max(t, data.start), data.end) - data.start) / span

    def y(pct: float) -> float:
        return PAD_T + (HEIGHT - PAD_T - PAD_B) * (1 - min(max(pct, 0.0), 100.0) / 100)

    parts = [
        f'<svg class="chart" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" aria-label="{escape(title)}" '
        f'data-weight="{data.last_weight:g}" data-weights="{" ".join(f"{w:g}" for _, w in data.weights)}" '
        f'data-error-points="{len(data.errors)}">',
        f"<title>{escape(title)}</title>",
    ]
    for pct in (0, 50, 100):
        parts.append(f'<line class="grid" x1="{PAD_L}" x2="{WIDTH - PAD_R}" y1="{y(pct):.1f}" y2="{y(pct):.1f}"/>')
        parts.append(f'<text class="axis" x="{PAD_L - 4}" y="{y(pct) + 4:.1f}" text-anchor="end">{pct}%</text>')
    parts.append(f'<text class="axis" x="{PAD_L}" y="{HEIGHT - 6}">0 s</text>')
    parts.append(f'<text class="axis" x="{WIDTH - PAD_R}" y="{HEIGHT - 6}" text-anchor="end">{span:.0f} s</text>')
    if data.threshold is not None:
        ty = y(data.threshold)
        parts.append(f'<line class="threshold" x1="{PAD_L}" x2="{WIDTH - PAD_R}" y1="{ty:.1f}" y2="{ty:.1f}"/>')
    if data.weights:
        pts = []
        for i, (t, w) in enumerate(data.weights):
            if i:
                pts.append(f"{x(t):.1f},{y(data.weights[i - 1][1]):.1f}")
            pts.append(f"{x(t):.1f},{y(w):.1f}")
        pts.append(f"{x(data.end):.1f},{y(data.weights[-1][1]):.1f}")
        parts.append(f'<polyline class="weight" points="{" ".join(pts)}"/>')
    xs, ys = gapped(data.errors)
    run: list[str] = []
    for t, v in [*zip(xs, ys, strict=True), (0.0, math.nan)]:
        if math.isnan(v):
            if len(run) > 1:
                parts.append(f'<polyline class="errors" points="{" ".join(run)}"/>')
            run = []
            continue
        run.append(f"{x(t):.1f},{y(v):.1f}")
    for t, v in data.errors:
        parts.append(f'<circle class="error" cx="{x(t):.1f}" cy="{y(v):.1f}" r="2.5"><title>'
                     f"{v:.1f} % errors</title></circle>")
    parts.append("</svg>")
    return "".join(parts)
