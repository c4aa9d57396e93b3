"""Incidents after the fact: built in a real store the way the deployer leaves them, worked on through the
`incident` commands, and reported as markdown and HTML with a real matplotlib chart."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import typer
from matplotlib.image import imread
from typer.testing import CliRunner

from backout.cli import main as cli_main
from backout.cli.incident_cmds import register
from backout.control.store import Store
from backout.control.strategies import Step, Strategy
from backout.errors import UsageError
from backout.platforms.base import Release
from backout.runbooks import incidents as ir
from backout.runbooks.incidents import chart as incident_chart

ENV = "staging"
CANARY = Strategy("Canary10Percent30Seconds", (Step(10.0, 30.0), Step(100.0, 0.0)))
THRESHOLD = 10.0
ALARM_SENTENCE = "error rate of worker v3 is 41.67 % > 10 % over 60 s (10 of 24 invocations)"

MANIFEST = """
[service]
name = "svc"
source = "."
[functions.api]
handler = "app.handler"
events = [{{ http = "GET /items/{{id}}" }}]
[functions.worker]
handler = "app.work"
events = [{{ queue = "jobs", batch_size = 1 }}]
[queues.jobs]
dead_letter_queue = "jobs-dlq"
max_receive_count = 3
[queues.jobs-dlq]
[environments.staging]
gateway_port = 0
control_port = 0
state_dir = "{state}/staging"
[environments.prod]
gateway_port = 0
control_port = 0
state_dir = "{state}/prod"
"""


def rel(n: int) -> Release:
    """A release whose functions all carry the release id as their version (as the local platform numbers them)."""
    return Release(n, {"api": str(n), "worker": str(n)}, f"digest-{n}", 0.0)


# --- an incident as the deployer leaves it --------------------------------------------------------------
def _per_second(start: int, seconds: range, inv: int, bad_from: int, err_every: int) -> list[list[float]]:
    """A canary at 10 %: `inv` invocations a second; from second `bad_from` on, every `err_every`-th fails."""
    out = []
    for s in seconds:
        errors = (inv + err_every - 1) // err_every if s >= bad_from else 0
        out.append([start + s, float(inv), float(errors)])
    return out


def build_rollback_incident(store: Store, t0: float) -> tuple[str, str, dict[str, float]]:
    """Deployment v2 → v3 with a canary step, an error-rate alarm firing on the worker, the rollback, and the
    incident with the trigger/evidence/impact shapes of `Deployer._rollback` and `measure_impact`."""
    d = store.create_deployment(ENV, rel(2), rel(3), CANARY, description="faster schedule export", created_by="ana",
                                now=t0
    )
    ev = lambda kind, msg, dt, **kw: store.add_event(kind, msg, deployment_id=d.id, ts=t0 + dt, **kw)  # noqa: E731
    ev("created", f"deployment {d.id} created: v2 → v3 with {CANARY.name}", 0.0)
    store.transition(d.id, "PreTraffic")
    ev("pre_traffic_started", "pre-traffic: snapshot data, warm v3, run hooks", 0.051)
    ev(
        "snapshot",
        "data snapshot snap-0001 taken before any traffic shift",
        0.187,
        data={"snapshot": "snap-0001"},
    )
    ev("hook_passed", "pre-traffic hook smoke passed in 0.6 s: 200 OK", 0.804)
    store.transition(d.id, "InProgress", current_step=0, current_weight=10.0, step_started_at=t0 + 1.0)
    first_traffic = t0 + 1.0
    ev("step_reached", "step 1/2: 10 % on v3, hold 30 s", 1.0, data={"step": 0, "weight": 10.0, "hold": 30.0})

    def alarm(
        name: str,
        dt: float,
        state: str,
        value: float | None,
        prev: str,
        detail: str,
        threshold: float = THRESHOLD,
    ) -> None:
        store.record_alarm_evaluation(
            d.id, name, state, value, threshold, "GreaterThanThreshold", 60.0, detail, ts=t0 + dt
        )
        ev(
            "alarm_state",
            f"{name}: {prev} → {state}: {detail}",
            dt,
            severity="critical" if state == "ALARM" else "info",
            data={"alarm": name, "state": state, "value": value, "threshold": threshold},
        )

    alarm("error-rate:worker", 1.25, "INSUFFICIENT_DATA", None, "new", "3 of 20 invocations needed so far")
    alarm("api-5xx", 1.25, "OK", 0.0, "new", "0 5xx served by svc v3 over 60 s", threshold=5.0)
    alarm("error-rate:worker", 5.75, "OK", 0.0, "INSUFFICIENT_DATA", "error rate of worker v3 is 0.00 %")
    alarm("error-rate:worker", 9.5, "ALARM", 41.67, "OK", ALARM_SENTENCE)

    decided, completed = t0 + 9.512, t0 + 9.527
    store.transition(
        d.id, "RolledBack", reason="alarm error-rate:worker in ALARM", rollback_decided_at=decided
    )
    store.update(d.id, rollback_completed_at=completed)
    firing = {
        "alarm": "error-rate:worker",
        "state": "ALARM",
        "value": 41.67,
        "threshold": THRESHOLD,
        "comparison": "GreaterThanThreshold",
        "window_seconds": 60.0,
        "detail": ALARM_SENTENCE,
        "ts": t0 + 9.5,
    }
    ev(
        "rolled_back",
        "rolled back to v2 in 15 ms: alarm error-rate:worker in ALARM",
        9.527,
        severity="critical",
        data={
            "trigger": "alarm",
            "reason": "alarm error-rate:worker in ALARM",
            "evidence": [ALARM_SENTENCE],
            "decided_at": decided,
            "completed_at": completed,
            "alarms": [firing],
        },
    )

    start = int(t0)
    impact = {
        "version": 3,
        "stable_version": 2,
        "window": [start, int(completed) + 1],
        "functions": {
            "worker": {
                "invocations": 27.0,
                "errors": 10.0,
                "per_second": _per_second(start, range(1, 10), 3, bad_from=5, err_every=2),
            },
            "api": {
                "invocations": 36.0,
                "errors": 0.0,
                "per_second": _per_second(start, range(1, 10), 4, bad_from=99, err_every=1),
            },
        },
        "api": {"requests_served": 36.0, "failed_requests": 4.0, "per_second_5xx": [[start + 7, 4.0]]},
        "dlq_arrivals": {"jobs-dlq": 2.0},
        "weights": [[t0, 0.0], [first_traffic, 10.0], [t0 + 9.527, 0.0]],
        "duration_seconds": round(completed - t0, 3),
    }
    inc = store.open_incident(
        ENV,
        f"{d.id} rolled back: alarm error-rate:worker in ALARM",
        deployment_id=d.id,
        opened_at=completed,
        trigger={
            "kind": "alarm",
            "reason": "alarm error-rate:worker in ALARM",
            "decided_at": decided,
            "completed_at": completed,
            "alarms": [firing],
        },
        evidence={"alarms": [ALARM_SENTENCE], "impact": impact, "jobs_touched": 7},
    )
    store.add_event(
        "incident_opened",
        f"incident {inc.id} opened for {d.id}",
        deployment_id=d.id,
        incident_id=inc.id,
        severity="critical",
        ts=completed + 0.002,
    )
    return d.id, inc.id, {"first_traffic": first_traffic, "decided": decided, "completed": completed}


def build_emergency_incident(store: Store, t0: float) -> str:
    """An emergency stop: no deployment, no impact, its steps timed as incident events."""
    inc = store.open_incident(
        ENV,
        "emergency stop: wrong schedules reported by customers",
        opened_at=t0,
        trigger={"kind": "emergency", "reason": "wrong schedules reported by customers"},
    )
    for i, step in enumerate(
        (
            "API throttled to 0 (429 with Retry-After)",
            "event source mappings paused",
            "data snapshot snap-0002 taken",
        )
    ):
        store.add_event(
            "emergency_step", step, incident_id=inc.id, severity="warning", ts=t0 + 0.01 * (i + 1)
        )
    return inc.id


# --- fixtures ------------------------------------------------------------------------------------------
@pytest.fixture
def env_dir(tmp_path: Path) -> tuple[Path, Path]:
    """A manifest whose staging state dir is in tmp_path; returns (manifest, staging state dir)."""
    manifest = tmp_path / "backout.toml"
    manifest.write_text(MANIFEST.format(state=tmp_path / "state"))
    return manifest, tmp_path / "state" / ENV


@pytest.fixture
def t0() -> float:
    return float(int(time.time()) - 600)


@pytest.fixture
def rolled_back(env_dir: tuple[Path, Path], t0: float) -> dict[str, Any]:
    manifest, state = env_dir
    with Store.for_env(state) as store:
        dep, inc, times = build_rollback_incident(store, t0)
    return {"manifest": manifest, "state": state, "deployment": dep, "incident": inc, **times}


def cli(manifest: Path, *args: str) -> tuple[int, str]:
    """The commands through a Typer app built with register(); errors mapped as `main.run` maps them."""
    app = typer.Typer(pretty_exceptions_enable=False)
    app.callback()(cli_main._global)
    register(app)
    register(app)  # idempotent: main.py may wire it while a test wires it too
    r = CliRunner().invoke(app, ["--manifest", str(manifest), *args])
    if isinstance(r.exception, UsageError):
        return 2, str(r.exception)
    if r.exception is not None and not isinstance(r.exception, SystemExit):
        raise r.exception
    return r.exit_code, r.output


ENVIRON = {k: v for k, v in os.environ.items() if k not in ("BACKOUT_ENV", "BACKOUT_MANIFEST")} | {
    "COLUMNS": "200"
}
RUN_WIRED = (
    "import sys; from backout.cli import main; from backout.cli.incident_cmds import register; "
    "register(main.app); sys.argv[0] = 'backout'; main.run()"
)


def backout(manifest: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """The real entry point (`run`: one-line errors, exit codes) in a subprocess, with `incident` wired."""
    return subprocess.run(
        [sys.executable, "-c", RUN_WIRED, "--manifest", str(manifest), *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=ENVIRON,
    )


# --- the report ------------------------------------------------------------------------------------------
def test_markdown_report_has_every_section_and_the_numbers(rolled_back: dict[str, Any]) -> None:
    with Store.for_env(rolled_back["state"]) as store:
        view = ir.load(store, rolled_back["incident"], ENV)
    md = ir.render_markdown(view, image="r-chart.png", command="backout incident report INC-0001")
    headings = re.findall(r"^#{1,3} (.+)$", md, flags=re.M)
    assert headings[0] == "Incident INC-0001: d-0001 rolled back: alarm error-rate:worker in ALARM"
    assert headings[1:] == [
        "Summary",
        "Impact",
        "Communication",
        "Contacts",
        "Timeline",
        "Alarm evidence",
        "Error rate and canary weight",
        "Root cause",
        "Action items",
        "Lessons learned",
    ]
    summary = md.split("## Impact")[0]
    # first traffic at t0+1.000, decided at t0+9.512, 100 % stable at t0+9.527
    assert "8,512 ms" in summary and "15 ms" in summary
    assert "`d-0001`" in summary and "from r2 to r3" in summary and "**staging**" in summary
    assert "the alarm `error-rate:worker` went into ALARM" in summary
    assert ir.clock(rolled_back["first_traffic"]) in summary and ir.clock(rolled_back["decided"]) in summary
    impact = md.split("## Impact")[1].split("## Timeline")[0]
    assert "**4** of 36 (11.1 %)" in impact  # failed API requests
    assert "| Jobs touched by r3 | 7 |" in impact
    assert "`jobs-dlq`: 2" in impact and "10 %" in impact and "9.5 s" in impact
    assert "| `worker` | 27 | 10 | 37.0 % |" in impact and "| `api` | 36 | 0 | 0.0 % |" in impact
    timeline = md.split("## Timeline")[1].split("## Alarm evidence")[0]
    with Store.for_env(rolled_back["state"]) as store:
        events = store.events(deployment_id=rolled_back["deployment"], incident_id=rolled_back["incident"])
    assert len(events) == 11
    for e in events:  # every event, to the millisecond, in order
        assert re.search(re.escape(ir.clock(e.ts)) + r" \| [+-]\d+\.\d{3} \| ", timeline), e
    stamps = re.findall(r"^\| (\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3}) \|", timeline, flags=re.M)
    assert stamps == sorted(stamps) and len(stamps) == 11
    assert "| **critical** | `rolled_back` |" in timeline and "| +9.527 |" in timeline
    evidence = md.split("## Alarm evidence")[1].split("## Error rate")[0]
    assert f"- {ALARM_SENTENCE}" in evidence
    assert "| `error-rate:worker` | **ALARM** | 41.67 % | > 10 % | 60 s |" in evidence
    assert "| `api-5xx` | OK | 0.00 | > 5 | 60 s |" in evidence
    assert "![error rate and canary weight of r3](r-chart.png)" in md
    assert "_Not yet determined._" in md and "None recorded yet" in md
    assert md.rstrip().endswith(".") and "`backout incident report INC-0001`" in md.split("---")[-1]
    assert "`backout deployment show d-0001 --env staging`" in md


def test_lessons_are_grouped_by_the_procedures_three_kinds() -> None:
    lessons = [
        {"text": t}
        for t in (
            "Monitoring enhancements: alarm on the worker's error rate per version",
            "process improvement - run the post-traffic drawing check in staging first",
            "Prevention strategies: a schedule golden test in CI",
            "canary traffic was too low to decide in under 5 s",
            "Monitoring enhancement dashboards show the canary separately",
        )
    ]
    groups = ir.group_lessons(lessons)
    assert list(groups) == [
        "Process improvements",
        "Monitoring enhancements",
        "Prevention strategies",
        "Other",
    ]
    assert groups["Monitoring enhancements"] == [
        "Alarm on the worker's error rate per version",
        "Dashboards show the canary separately",
    ]
    assert groups["Process improvements"] == ["Run the post-traffic drawing check in staging first"]
    assert groups["Other"] == ["canary traffic was too low to decide in under 5 s"]


def test_chart_is_a_real_png_with_both_series(rolled_back: dict[str, Any], tmp_path: Path) -> None:
    with Store.for_env(rolled_back["state"]) as store:
        view = ir.load(store, rolled_back["incident"], ENV)
    png = ir.render_chart(view)
    assert png is not None and png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5 * 1024
    (tmp_path / "c.png").write_bytes(png)
    img = imread(tmp_path / "c.png")
    assert img.shape[0] > 300 and img.shape[1] > 600
    # the chart is not blank: many distinct colours (lines, legend, red rollback marker, purple weight)
    colours = {tuple(px) for px in (img[::4, ::4, :3] * 255).astype(int).reshape(-1, 3)}
    assert len(colours) > 50
    reds = ((img[:, :, 0] > 0.9) & (img[:, :, 1] < 0.2) & (img[:, :, 2] < 0.2)).sum()
    assert reds > 100  # the rollback line
    # the error-rate series: a trailing 5 s sum; 0 % before the bad seconds, then 2 of every 3 calls fail
    ys = [y for _, y in incident_chart.rate_points(
        view.impact["functions"]["worker"]["per_second"],
        int(view.impact["window"][0]),
        int(view.impact["window"][1]),
    )]
    assert ys[1] == 0.0 and ys[-2] == pytest.approx(100 * 8 / 15) and ys[-1] == pytest.approx(100 * 10 / 15)


def test_cli_list_show_note_action_lesson_close_and_report(
    rolled_back: dict[str, Any], tmp_path: Path
) -> None:
    m, iid = rolled_back["manifest"], rolled_back["incident"]
    code, out = cli(m, "incident", "list", "--json")
    assert code == 0, out
    rows = json.loads(out)
    assert [r["id"] for r in rows] == [iid] and rows[0]["status"] == "open"
    code, out = cli(m, "incident", "list", "--status", "closed", "--json")
    assert code == 0 and json.loads(out) == []

    assert cli(m, "incident", "note", "1", "customers on the beta saw failed exports")[0] == 0
    assert cli(m, "incident", "action", iid, "add a golden schedule test", "--owner", "ana")[0] == 0
    assert cli(m, "incident", "action", iid, "alert on DLQ arrivals in prod")[0] == 0
    assert cli(m, "incident", "done", iid, "1")[0] == 0
    assert (
        cli(m, "incident", "lesson", iid, "Monitoring enhancements: per-version error rate on the board")[0]
        == 0
    )
    assert (
        cli(m, "incident", "lesson", iid, "Process improvements: rehearse the export path in staging")[0] == 0
    )

    code, out = cli(m, "incident", "show", iid, "--json")
    assert code == 0, out
    shown = json.loads(out)
    inc = shown["incident"]
    assert inc["notes"][0]["text"] == "customers on the beta saw failed exports"
    assert [(a["text"], a["owner"], a["done"]) for a in inc["action_items"]] == [
        ("add a golden schedule test", "ana", True),
        ("alert on DLQ arrivals in prod", "", False),
    ]
    assert shown["timings"]["first_traffic_to_decision_ms"] == pytest.approx(8512, abs=1)
    kinds = [e["kind"] for e in shown["timeline"]]
    assert kinds[0] == "created" and kinds[-7:] == [
        "incident_opened",
        "note_added",
        "action_added",
        "action_added",
        "action_done",
        "lesson_added",
        "lesson_added",
    ]
    assert {"note_added", "action_added", "action_done", "lesson_added"} <= set(kinds)
    assert [e["ts"] for e in shown["timeline"]] == sorted(e["ts"] for e in shown["timeline"])
    code, out = cli(m, "incident", "show", iid)
    assert code == 0
    for needle in (
        "INC-0001",
        "timeline",
        "rolled_back",
        ALARM_SENTENCE[:40],
        "customers on the beta",
        "golden schedule test",
        "not yet determined",
        "8,512 ms",
    ):
        assert needle in out, needle

    code, out = cli(m, "incident", "close", iid, "--root-cause", "v3's exporter dropped rows over 1000")
    assert code == 0 and "1 action item(s) still open" in out
    code, out = cli(m, "incident", "close", iid, "--root-cause", "again")
    assert code == 2 and out == "incident INC-0001 is already closed"
    code, out = cli(m, "incident", "list", "--status", "closed", "--json")
    assert [r["id"] for r in json.loads(out)] == [iid]

    code, out = cli(m, "incident", "report", iid)  # markdown on stdout
    assert code == 0 and out.startswith("# Incident INC-0001")
    assert (
        "v3's exporter dropped rows over 1000" in out and "written next to the report with `--out FILE`" in out
    )
    assert "### Monitoring enhancements\n\n- Per-version error rate on the board" in out
    assert "### Process improvements" in out and "| 1 | add a golden schedule test | ana | done |" in out
    assert "| 2 | alert on DLQ arrivals in prod | unassigned | open |" in out
    assert "Incident open for" in out

    md_path = tmp_path / "reports" / "INC-0001.md"
    code, out = cli(m, "incident", "report", iid, "--out", str(md_path))
    assert code == 0, out
    png = md_path.with_name("INC-0001-chart.png")
    assert md_path.exists() and png.exists() and png.stat().st_size > 5 * 1024
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "![error rate and canary weight of r3](INC-0001-chart.png)" in md_path.read_text()
    assert f"--out {md_path}" in md_path.read_text()

    html_path = tmp_path / "INC-0001.html"
    code, out = cli(m, "incident", "report", iid, "--format", "html", "--out", str(html_path))
    assert code == 0, out
    page = html_path.read_text()
    assert page.startswith("<!DOCTYPE html>") and page.rstrip().endswith("</html>")
    assert re.search(r'<img src="data:image/png;base64,[A-Za-z0-9+/=]{5000,}"', page)
    for h in (
        "Summary",
        "Impact",
        "Communication",
        "Contacts",
        "Timeline",
        "Alarm evidence",
        "Root cause",
        "Action items",
        "Lessons learned",
    ):
        assert f"<h2>{h}</h2>" in page
    assert page.count("<table>") >= 6 and "<title>Incident INC-0001: d-0001 rolled back" in page
    assert "<td><strong>ALARM</strong></td>" in page and "<p>v3's exporter dropped rows over 1000</p>" in page


def test_hostile_text_is_escaped_in_markdown_and_html(rolled_back: dict[str, Any]) -> None:
    with Store.for_env(rolled_back["state"]) as store:
        ir.add_note(store, rolled_back["incident"], "saw <script>alert(1)</script> | in *logs* [x](y)", "eve")
        view = ir.load(store, rolled_back["incident"], ENV)
    page = ir.render_html(view, ir.render_chart(view))
    assert "<script>" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    notes_table = page.split("<h2>Notes</h2>")[1].split("</table>")[0]
    assert notes_table.count("<td>") == 3  # the | did not split the cell
    assert "<em>" not in notes_table and "<a " not in notes_table and "*logs* [x](y)" in notes_table
    md = ir.render_markdown(view)
    assert "saw \\<script>alert(1)\\</script> \\| in \\*logs\\* \\[x\\](y)" in md


def test_incident_without_deployment_renders(env_dir: tuple[Path, Path], t0: float, tmp_path: Path) -> None:
    manifest, state = env_dir
    with Store.for_env(state) as store:
        iid = build_emergency_incident(store, t0)
        manual = store.open_incident(
            ENV,
            "manual rollback: bad config",
            severity="warning",
            opened_at=t0 + 60,
            trigger={"kind": "manual", "reason": "bad config"},
            evidence=["operator ana rolled back: bad config"],
        )
        view = ir.load(store, iid, ENV)
    assert ir.render_chart(view) is None
    md = ir.render_markdown(view)
    assert "Emergency stop in **staging**" in md and "No deployment is attached" in md
    assert ": wrong schedules reported by customers." in md and "Rollback decided" not in md
    assert "No measurements of the bad version" in md and "No chart" in md
    assert "API throttled to 0" in md and "`incident_opened`" in md  # the opening is on the timeline too
    assert "No alarm evidence" in md

    out = tmp_path / "emergency.html"
    code, text = cli(manifest, "incident", "report", iid, "-o", str(out))  # -o: --out's old name
    assert code == 0, text
    assert out.read_text().startswith("<!DOCTYPE html>") and not list(tmp_path.glob("emergency-chart.png"))
    code, text = cli(manifest, "incident", "report", manual.id)
    assert code == 0 and "operator ana rolled back: bad config" in text and "Manual rollback" in text
    code, text = cli(manifest, "incident", "show", manual.id, "--json")
    assert json.loads(text)["deployment"] is None


def test_a_rollback_incident_with_list_evidence_still_charts_its_weights(
    env_dir: tuple[Path, Path], t0: float
) -> None:
    """Incidents written before impact was measured: evidence is a list; weights come from the step events."""
    _, state = env_dir
    with Store.for_env(state) as store:
        d = store.create_deployment(ENV, rel(4), rel(5), CANARY, now=t0)
        store.add_event("step_reached", "step 1/2", deployment_id=d.id, ts=t0 + 2, data={"weight": 10.0})
        store.transition(d.id, "RolledBack", reason="operator", rollback_decided_at=t0 + 5)
        store.update(d.id, rollback_completed_at=t0 + 5.02)
        store.add_event("rolled_back", "rolled back", deployment_id=d.id, ts=t0 + 5.02)
        inc = store.open_incident(
            ENV,
            "d rolled back",
            deployment_id=d.id,
            trigger={"kind": "manual", "reason": "x"},
            evidence=["stopped by ana"],
        )
        view = ir.load(store, inc.id, ENV)
    assert view.weights == [(t0, 0.0), (t0 + 2, 10.0), (t0 + 5.02, 0.0)]
    assert view.detection_ms == pytest.approx(3000) and view.restore_ms == pytest.approx(20)
    png = ir.render_chart(view)
    assert png is not None and len(png) > 5 * 1024
    md = ir.render_markdown(view)
    assert (
        "- stopped by ana" in md and "3,000 ms" in md and "deployment's metrics were not captured" not in md
    )


def test_user_errors_exit_2_with_one_line(rolled_back: dict[str, Any]) -> None:
    m = rolled_back["manifest"]
    r = backout(m, "incident", "show", "INC-0042")
    assert r.returncode == 2 and r.stdout == ""
    assert (
        r.stderr.strip() == "error: no incident 'INC-0042' in staging (list them with: backout incident list "
        "--env staging)"
    )
    assert backout(m, "incident", "close", "1", "--root-cause", "exporter bug").returncode == 0
    r = backout(m, "incident", "close", "1", "--root-cause", "exporter bug")
    assert r.returncode == 2 and r.stderr.strip() == "error: incident INC-0001 is already closed"
    r = backout(m, "incident", "list", "--status", "pending")
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1
    r = backout(m, "incident", "report", "1", "--format", "pdf")
    assert r.returncode == 2 and "md or html" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    r = backout(
        m, "incident", "list", "--env", "prod", "--json"
    )  # never started: nothing, and nothing created
    assert r.returncode == 0 and json.loads(r.stdout) == []
    assert not (rolled_back["state"].parent / "prod").exists()
