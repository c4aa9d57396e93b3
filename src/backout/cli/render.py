"""Tables for people, JSON for programs: every command that prints a table also takes --json."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from typing import Any

from rich.console import Console
from rich.table import Table

console = Console()
err_console = Console(stderr=True)


def emit_json(data: Any) -> None:
    from backout.redact import redact_data

    print(json.dumps(redact_data(json.loads(json.dumps(data, default=str))), indent=2))


def table(title: str, columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    t = Table(title=title, title_justify="left")
    for c in columns:
        t.add_column(c)
    for r in rows:
        t.add_row(*("" if v is None else str(v) for v in r))
    console.print(t)


def fmt_weights(weights: dict[str, float]) -> str:
    return ", ".join(f"v{v}: {w:g}%" for v, w in weights.items())
