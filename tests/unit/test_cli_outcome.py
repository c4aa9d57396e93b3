"""The end of `deploy` and `deployment show` in an 80-column terminal: the decision and the alarm that made it
first, every evidence sentence whole on lines of its own under its row, and the alarms of functions that took no
traffic folded into one line. Rendered from a real deployment on a FakePlatform, as the control API serves it."""

from __future__ import annotations

import io
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from rich.console import Console

from backout.cli.outcome import outcome
from fakes import World, raising


def view_of(w: World, deployment_id: str) -> dict[str, Any]:
    """What `GET /deployments/ID` answers (the deployments router's view)."""
    d = w.store.get(deployment_id)
    inc = w.store.incident_for_deployment(d.id)
    lv = w.deployer.live.get(d.id)
    return {"deployment": {**asdict(d), "stable": d.stable, "target": d.target},
            "alarms": {k: e.as_dict() for k, e in (lv.alarms.items() if lv else [])},
            "events": [asdict(e) for e in w.store.events(deployment_id=d.id)],
            "incident": asdict(inc) if inc else None, "now": time.time()}


def render(view: dict[str, Any], width: int = 80) -> list[str]:
    out = io.StringIO()
    Console(file=out, width=width, force_terminal=False, color_system=None).print(outcome(view, width))
    return [line.rstrip() for line in out.getvalue().splitlines()]


def whole(sentence: str, lines: list[str]) -> bool:
    """The sentence appears unbroken once the lines are joined as they were wrapped (at spaces)."""
    return sentence in " ".join(line.strip() for line in lines)


def test_a_rollback_leads_with_its_alarm_and_every_sentence_is_whole_in_80_columns(
    tmp_path: Path, fast_evaluations: None
) -> None:
    w = World(tmp_path)
    try:
        w.fake.handle("worker", raising(), version="12")
        d = w.deploy(w.release("api", "worker"))
        w.wait_step(d.id, 0)
        w.fake.traffic("worker", 40)  # 20 on v12, all failing; api and repair take no traffic
        w.clock.advance(1)
        w.nudge(d.id)
        w.finish(d.id)
        lines = render(view_of(w, d.id))
    finally:
        w.close()
    assert max(len(x) for x in lines) <= 80, "\n".join(lines)
    alarm = "error rate 95.2 % (20/21) > 10 % over 1 s on worker v12"
    judge = "errors-judge:worker: e-value 1 < 400, no events to compare yet, canary 0/0, stable 0/0 over 0 s"
    first = lines[: next(i for i, x in enumerate(lines) if x.startswith("decided on:"))]
    assert lines[0].startswith(f"{d.id} RolledBack r1 ") and whole(f"alarm error-rate:worker — {alarm}", first)
    assert not whole(judge, first), "one sentence first; the judge's comparison is a detail"
    body = lines[len(first):]
    row = next(i for i, x in enumerate(body) if x.startswith("error-rate:worker "))
    assert body[row].split()[1:3] == ["ALARM", "95.24"]
    assert body[row + 1] == f"    {alarm}" and whole(judge, body[row + 2:])
    (at,) = [i for i, x in enumerate(body) if "had no data" in x]
    assert body[at].startswith("6 alarms had no data") and whole(
        "(their functions' new version took no traffic, or too little to decide): ", body[at:])
    for name in ("error-rate:api", "error-rate:repair", "errors-judge:worker", "dlq-judge:jobs-dlq"):
        assert whole(name, body[at:]) and not [x for x in body if x.startswith(f"{name} ")]
    assert "INSUFFICIENT_DATA" not in "\n".join(body)


def test_a_success_says_so_first(tmp_path: Path, fast_evaluations: None) -> None:
    w = World(tmp_path)
    try:
        r2 = w.release("api", "worker")
        d = w.deploy(r2, (100, 0))
        w.fake.traffic("worker", 30)
        w.clock.advance(1)
        w.finish(d.id)
        lines = render(view_of(w, d.id))
    finally:
        w.close()
    assert max(len(x) for x in lines) <= 80
    assert lines[0].startswith(f"{d.id} Succeeded r1 ") and whole("takes all traffic; no alarm or judge fired",
                                                                  lines[:3])
