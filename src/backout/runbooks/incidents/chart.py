"""The incident chart (matplotlib, Agg without pyplot): the new version's error rate per function, the
share of traffic on it, the alarm threshold and the rollback moment.

It draws only what was measured: the error rate is one point per second in which the version served
traffic, joined only to the next second's point when that second had traffic too — a second without
requests is a gap, never a line drawn across it; the traffic share is a step line that changes only at the
recorded moments the live alias changed. (`rate_points` and `gapped` are shared with the dashboard.)"""

from __future__ import annotations

import io
import math

from backout.runbooks.incidents.formatting import clock
from backout.runbooks.incidents.views import IncidentView

ROLLING_SECONDS = 5  # the chart's error rate is a trailing sum over this many seconds (readable at low rates)


def chart_available(view: IncidentView) -> bool:
    return bool(view.weights) or any(
        (f.get("per_second") or []) for f in ((view.impact or {}).get("functions") or {}).values()
    )


def rate_points(per_second: list[list[float]], start: int, end: int,
                rolling: int = ROLLING_SECONDS) -> list[tuple[float, float]]:
    """(end of second, error rate %) for every second in [start, end) in which the version served traffic:
    errors over invocations of the trailing `rolling` seconds. Seconds without traffic have no point."""
    inv = {int(t): float(i) for t, i, _ in per_second}
    err = {int(t): float(e) for t, _, e in per_second}
    out = []
    for t in range(start, end):
        if not inv.get(t):
            continue  # no traffic on the version this second (before the canary, after the rollback): no rate
        window = range(t - rolling + 1, t + 1)
        n = sum(inv.get(s, 0.0) for s in window)
        # the value covers the second [t, t+1): plot it at its end, as a trailing window
        out.append((t + 1.0, 100.0 * sum(err.get(s, 0.0) for s in window) / n))
    return out


def gapped(points: list[tuple[float, float]], step: float = 1.0) -> tuple[list[float], list[float]]:
    """xs, ys with a NaN between two points more than `step` apart: matplotlib (and the dashboard's SVG)
    breaks the line there instead of drawing across seconds without data."""
    xs: list[float] = []
    ys: list[float] = []
    for x, y in points:
        if xs and x - xs[-1] > step + 1e-9:
            xs.append((xs[-1] + x) / 2)
            ys.append(math.nan)
        xs.append(x)
        ys.append(y)
    return xs, ys


def render_chart(view: IncidentView) -> bytes | None:
    """PNG: error rate % of the new version per function over time, the canary weight % as a step line on a
    second axis, the alarm threshold and the rollback moment. None when there is nothing to draw."""
    if not chart_available(view):
        return None
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # Agg without pyplot: no global backend state
    from matplotlib.figure import Figure

    imp = view.impact or {}
    fns = imp.get("functions") or {}
    weights = view.weights
    d = view.deployment
    t0 = (
        d.created_at
        if d
        else (
            weights[0][0]
            if weights
            else min(int(p[0]) for f in fns.values() for p in f.get("per_second") or [])
        )
    )
    window = imp.get("window") or []
    times = [t for t, _ in weights] + [float(p[0]) for f in fns.values() for p in f.get("per_second") or []]
    times += [x for x in (view.decided_at, view.completed_at) if x is not None]
    start = int(window[0]) if window else int(min(times))
    end = int(window[1]) if len(window) > 1 else int(max(times)) + 1
    end = max(end, int(max(times)) + 2)

    fig = Figure(figsize=(10, 4.8), dpi=110)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    v = view.bad_version
    plotted = False
    colours = iter(
        ["tab:blue", "tab:orange", "tab:green", "tab:brown", "tab:olive", "tab:cyan", "tab:pink"] * 9
    )
    for fn, f in sorted(fns.items()):
        ps = f.get("per_second") or []
        if not any(p[1] for p in ps):
            continue
        xs, ys = gapped(rate_points(ps, start, end))
        ax.plot(
            [x - t0 for x in xs],
            ys,
            lw=1.4,
            marker="o",
            ms=3,
            color=next(colours),
            label=f"{fn} v{(view.deployment.target_versions.get(fn) if view.deployment else None) or v} error rate",
        )
        plotted = True
    thresholds = sorted({a.threshold for a in view.alarm_evaluations if a.alarm.startswith("error-rate")})
    for thr in thresholds[:1]:
        ax.axhline(thr, color="dimgray", ls="--", lw=1, label=f"error-rate alarm threshold ({thr:g} %)")
    ax.set_ylim(-3, 103)
    ax.set_ylabel(f"error rate of r{v} (%)" if plotted else "error rate (no data)")
    ax.set_xlabel("seconds since the deployment started" if d else "seconds")
    ax.grid(alpha=0.3)
    handles, labels = ax.get_legend_handles_labels()
    if weights:
        ax2 = ax.twinx()
        wx = [t - t0 for t, _ in weights] + [end - t0]
        wy = [w for _, w in weights] + [weights[-1][1]]
        ax2.step(wx, wy, where="post", color="tab:purple", lw=2.2, alpha=0.8, label=f"traffic on r{v} (%)")
        ax2.fill_between(wx, wy, step="post", color="tab:purple", alpha=0.08)
        ax2.set_ylim(-3, 103)
        ax2.set_ylabel(f"share of traffic on r{v} (%)")
        h2, l2 = ax2.get_legend_handles_labels()
        handles, labels = handles + h2, labels + l2
    if view.decided_at is not None:
        x = view.decided_at - t0
        ln = ax.axvline(x, color="red", lw=1.6, label=f"rollback decided (+{x:.1f} s)")
        handles.append(ln)
        labels.append(ln.get_label())
        if view.completed_at is not None and view.completed_at > view.decided_at:
            ax.axvspan(x, view.completed_at - t0, color="red", alpha=0.15)
    ax.set_xlim(start - t0, end - t0)
    title = (
        f"{view.incident.id}: {d.id} {d.stable} → {d.target} in {view.env}"
        if d
        else f"{view.incident.id} in {view.env}"
    )
    ax.set_title(title + f" (started {clock(t0)})", fontsize=11)
    ax.legend(handles, labels, loc="upper left", fontsize=8, framealpha=0.9)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()
