"""How a deployment ended, as a person reads it at the end of `deploy` and in `deployment show`: first the
decision and the alarm or judge that made it (one sentence), then the details — the alarms it was decided
on, each with its evidence sentence on lines of its own under its row (never squeezed into a narrow column,
so it stays whole in an 80-column terminal), and the other alarms' last states, those that never had enough
data (INSUFFICIENT_DATA: functions that took no traffic, or too little) folded into one line."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from rich.console import Group, RenderableType
from rich.padding import Padding
from rich.table import Table
from rich.text import Text

STYLE = {"Succeeded": "green", "RolledBack": "red", "Stopped": "yellow", "Failed": "red"}
STATE_STYLE = {"ALARM": "red", "OK": "green", "INSUFFICIENT_DATA": "yellow"}
INDENT = 4  # the evidence sentence under its row


def rolled_back_event(view: dict[str, Any]) -> dict[str, Any] | None:
    """The `rolled_back` event's data: trigger, reason, the alarms decided on with their evidence."""
    ev = next((e for e in view.get("events") or [] if e["kind"] == "rolled_back"), None)
    return ev["data"] if ev is not None and isinstance(ev.get("data"), dict) else None


def last_states(events: Iterable[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Every alarm's and judge's last evaluation, from the deployment's `alarm_state` events."""
    out: dict[str, dict[str, Any]] = {}
    for e in events:
        if e["kind"] == "alarm_state" and isinstance(e.get("data"), dict) and "alarm" in e["data"]:
            out[e["data"]["alarm"]] = e["data"]
    return out


def decision(view: dict[str, Any]) -> Text:
    """One sentence: the deployment's end and what made it — `d-0002 RolledBack r1 → r2: alarm
    error-rate:worker — error rate 95.2 % (20/21) > 10 % over 1 s on worker v12`."""
    d = view["deployment"]
    status = d["status"]
    head = Text.assemble((f"{d['id']} ", "bold"), (status, f"bold {STYLE.get(status, 'cyan')}"),
                         f" {d['stable']} → {d['target']}")
    rb = rolled_back_event(view)
    if status == "RolledBack" and rb is not None:
        trigger, firing = rb.get("trigger"), [a for a in rb.get("alarms") or [] if isinstance(a, dict)]
        if trigger in ("alarm", "judge") and firing:
            first = firing[0]
            more = f" (and {len(firing) - 1} more)" if len(firing) > 1 else ""
            sentence = first["detail"].split("; ")[0]  # its judge's comparison is in the details
            return head.append(f": {trigger} {first['alarm']}{more} — {sentence}")
        return head.append(f": {trigger or 'rollback'} — {rb.get('reason') or d['reason']}")
    if status == "Succeeded":
        states = last_states(view.get("events") or [])
        fired = sorted(k for k, e in states.items() if e["state"] == "ALARM")
        judged = "no alarm or judge fired" if not fired else f"{', '.join(fired)} fired without rollback"
        return head.append(f": {d['target']} takes all traffic; {judged} ({len(states)} watched)")
    return head.append(f": {d['reason']}" if d.get("reason") else "")


def no_data(e: dict[str, Any]) -> bool:
    """INSUFFICIENT_DATA: its function's new version took no traffic, or too little to decide on."""
    return bool(e["state"] == "INSUFFICIENT_DATA")


def alarm_rows(alarms: dict[str, dict[str, Any]], width: int = 80) -> list[RenderableType]:
    """A row per alarm (name, state, value, threshold) with its evidence sentence under it, its judge's
    comparison under that; the alarms that had no data folded into one line."""
    shown = {k: e for k, e in sorted(alarms.items()) if not no_data(e)}
    folded = sorted(k for k in alarms if k not in shown)
    out: list[RenderableType] = []
    if shown:
        name_w = max(8, min(max(len(k) for k in shown), width - 17 - 10 - 10 - 6))
        for name, e in shown.items():
            row = Table.grid(padding=(0, 2))
            row.add_column(width=name_w, overflow="fold")
            row.add_column(width=17, no_wrap=True)
            row.add_column(width=10, justify="right", no_wrap=True)
            row.add_column(width=10, justify="right", no_wrap=True)
            value = "—" if e.get("value") is None else f"{e['value']:.2f}"
            row.add_row(name, Text(e["state"], style=STATE_STYLE.get(e["state"], "")), value,
                        f"≥ {e['threshold']:g}" if e.get("comparison", "").endswith("OrEqualToThreshold")
                        else f"{e['threshold']:g}")
            out.append(row)
            # the alarm's sentence, and its judge's comparison (`…; errors-judge:api: e-value …`) on its own line
            for sentence in e["detail"].split("; "):
                out.append(Padding(Text(sentence, style="dim"), (0, 0, 0, INDENT), expand=False))
    if folded:
        out.append(Text(f"{len(folded)} alarm{'s' if len(folded) > 1 else ''} had no data (their functions' new "
                        f"version took no traffic, or too little to decide): {', '.join(folded)}", style="yellow"))
    return out


def outcome(view: dict[str, Any], width: int = 80) -> Group:
    """The decision, then the alarms it was decided on, then every other alarm's last state."""
    return Group(decision(view), details(view, width))


def details(view: dict[str, Any], width: int = 80) -> Group:
    """What follows the decision: the alarms it was decided on, then every other alarm's last state."""
    parts: list[RenderableType] = []
    rb = rolled_back_event(view)
    decided = {a["alarm"]: a for a in (rb or {}).get("alarms") or [] if isinstance(a, dict) and "alarm" in a}
    if decided:
        parts += [Text("decided on:", style="bold"), *alarm_rows(decided, width)]
    others = {k: e for k, e in last_states(view.get("events") or []).items() if k not in decided}
    if not others and view.get("alarms"):
        others = {k: e for k, e in view["alarms"].items() if k not in decided}
    if others:
        parts += [Text("alarms at the end:" if decided else "alarms:", style="bold"), *alarm_rows(others, width)]
    return Group(*parts)
