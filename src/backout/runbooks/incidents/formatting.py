"""Formatting shared by the report, the chart and the `incident` commands: wall clocks to the millisecond,
durations and counts, and literal text inside markdown."""

from __future__ import annotations

import re
import time
from typing import Any


def clock(ts: float | None) -> str:
    """Local wall clock to the millisecond (the timeline's resolution)."""
    if ts is None:
        return "—"
    sec, ms = divmod(round(ts * 1000), 1000)
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(sec)) + f".{ms:03d}"


def zone(ts: float) -> str:
    z = time.strftime("%z", time.localtime(ts))
    return f"UTC{z[:3]}:{z[3:]}" if len(z) == 5 else (z or "local time")


def fmt_ms(v: float | None) -> str:
    return "—" if v is None else f"{v:,.0f} ms"


def secs(v: float | None) -> str:
    if v is None:
        return "—"
    if v < 120:
        return f"{v:.1f} s"
    m, s = divmod(int(round(v)), 60)
    return f"{m} min {s:02d} s" if m < 60 else f"{m // 60} h {m % 60:02d} min"


def num(v: Any) -> str:
    if v is None:
        return "—"
    f = float(v)
    return f"{int(f):,}" if f.is_integer() else f"{f:,.2f}"


def pct(num: float, den: float) -> str:
    return "—" if not den else f"{100.0 * num / den:.1f} %"


_MD_SPECIAL = re.compile(r"([\\`*\[\]<|])|(?<![A-Za-z0-9])_|_(?![A-Za-z0-9])")
_MD_LINE_START = re.compile(r"^(?:[#>=]|[-+]\s)")
_MD_ORDERED = re.compile(r"^(\d+)([.)]\s)")


def md(text: Any) -> str:
    """Literal text in markdown: punctuation that would format is backslash-escaped (CommonMark allows it for
    any ASCII punctuation), block markers only where they would start a block; intraword underscores
    (`dlq_processor`) stay readable; newlines become spaces."""
    s = _MD_SPECIAL.sub(lambda m: "\\" + m.group(0), " ".join(str(text).split("\n")))
    s = _MD_ORDERED.sub(r"\1\\\2", s)
    return "\\" + s if _MD_LINE_START.match(s) else s


def code(text: Any) -> str:
    s = str(text).replace("\n", " ")
    ticks = "`" * (max((len(r) for r in re.findall(r"`+", s)), default=0) + 1)
    pad = " " if s.startswith("`") or s.endswith("`") else ""
    return f"{ticks}{pad}{s}{pad}{ticks}"


def fence(text: str) -> str:
    ticks = "`" * max(3, max((len(r) for r in re.findall(r"`+", text)), default=0) + 1)
    return f"{ticks}text\n{text.rstrip()}\n{ticks}"


def table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(c if c else " " for c in r) + " |" for r in rows]
    return "\n".join(lines)
