"""The web dashboard (`/ui`) and the control-plane metrics on `/metrics`, over a FakePlatform with FastAPI's
TestClient: sign-in and its cookie, CSRF, actions that ask for confirmation and then go through the
controller, the live stream's sections, the Prometheus families (parsed with prometheus_client's parser),
the Grafana dashboard and alert rules checked against them, and charts that leave gaps where no request was.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from fastapi.testclient import TestClient
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from backout.control.store import Deployment, Event
from backout.platforms.base import Throttle
from backout.platforms.local.gateway import Gateway
from backout.platforms.local.metrics import MetricStore
from backout.runbooks.incidents.chart import gapped, rate_points
from backout.server.app import build_app
from backout.server.controller import Controller
from backout.server.dashboard.charts import ChartData, svg, weight_steps
from fakes import FakeClock, FakePlatform, new_source, write_manifest
from support import wait_for

TOKEN = "s3cret-token"
COOKIE = "backout_session_staging"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
DOCS = Path(__file__).resolve().parents[2] / "docs" / "observability"


class Ui:
    """A controller over a FakePlatform and a browser-like client (cookies kept, redirects not followed)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.manifest = write_manifest(root)
        self.fake = FakePlatform(self.manifest, "staging", clock=FakeClock())
        self.controller = Controller(self.manifest, "staging", self.fake, root / "state" / "staging")
        self.controller.deployer.clock = self.fake.clock.now
        self.app = build_app(self.controller, TOKEN)
        self.client = TestClient(self.app, follow_redirects=False)

    def login(self, who: str = "dana") -> str:
        r = self.client.post("/ui/login", data={"who": who, "token": TOKEN})
        assert r.status_code == 303, r.text
        return self.csrf()

    def csrf(self) -> str:
        page = self.client.get("/ui/")
        assert page.status_code == 200, page.text
        return re.search(r'name="csrf" value="([0-9a-f]+)"', page.text).group(1)  # type: ignore[union-attr]

    def act(self, action: str, status: int = 200, **form: str) -> str:
        r = self.client.post(f"/ui/actions/{action}", data=form)
        assert r.status_code == status, r.text
        return r.text

    def metrics(self) -> dict[str, Any]:
        r = self.client.get("/metrics", headers=AUTH)
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
        return {f.name: f for f in text_string_to_metric_families(r.text)}

    def close(self) -> None:
        self.client.close()
        self.controller.close()
        self.fake.close()


@pytest.fixture
def ui(tmp_path: Path, fast_evaluations: None) -> Iterator[Ui]:
    u = Ui(tmp_path)
    yield u
    u.close()


def _value(families: dict[str, Any], name: str, **labels: str) -> float:
    fam = families[name]
    got = [s.value for s in fam.samples if all(s.labels.get(k) == v for k, v in labels.items())
           and s.name == labels.pop("_sample", s.name)]
    assert len(got) == 1, (name, labels, fam.samples)
    return got[0]


# --- sign-in ---
def test_the_dashboard_needs_the_token_through_the_form_and_keeps_it_out_of_urls_and_cookies(ui: Ui) -> None:
    for path in ("/ui/", f"/ui/?token={TOKEN}", "/ui/incidents/1"):
        r = ui.client.get(path, headers=AUTH)  # neither the API's bearer header nor a query string signs in
        assert (r.status_code, r.headers["location"]) == (303, "/ui/login")
    assert ui.client.get("/ui/stream").status_code == 401
    login = ui.client.get("/ui/login")
    assert login.status_code == 200 and 'type="password"' in login.text and 'method="post"' in login.text
    wrong = ui.client.post("/ui/login", data={"who": "dana", "token": "guess"})
    assert wrong.status_code == 401 and "wrong token" in wrong.text
    assert COOKIE not in wrong.headers.get("set-cookie", "")
    nameless = ui.client.post("/ui/login", data={"who": " ", "token": TOKEN})
    assert nameless.status_code == 401 and "your name is needed" in nameless.text
    r = ui.client.post("/ui/login", data={"who": "dana", "token": TOKEN})
    cookie = r.headers["set-cookie"]
    assert r.status_code == 303 and r.headers["location"] == "/ui/"
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Path=/ui" in cookie
    assert TOKEN not in cookie and TOKEN not in r.headers["location"]
    page = ui.client.get("/ui/")
    assert page.status_code == 200 and "signed in as dana" in page.text and TOKEN not in page.text
    assert 'name="viewport"' in page.text and "/ui/static/dashboard.js" in page.text
    assert ui.client.get("/ui/static/dashboard.js").text.count("EventSource") >= 1
    # a forged cookie (another token's signature) is no session
    ui.client.cookies.set(COOKIE, cookie.split(";")[0].split("=", 1)[1][:-4] + "0000", path="/ui")
    assert ui.client.get("/ui/").status_code == 303


# --- actions ---
def test_actions_refuse_a_form_without_this_sessions_csrf_token(ui: Ui) -> None:
    with TestClient(ui.app, follow_redirects=False) as other:  # another browser: same token, another session
        other.post("/ui/login", data={"who": "mallory", "token": TOKEN})
        foreign = re.search(r'name="csrf" value="([0-9a-f]+)"', other.get("/ui/").text).group(1)  # type: ignore[union-attr]
    csrf = ui.login()
    assert foreign != csrf
    for form in ({}, {"csrf": "0" * 64}, {"csrf": foreign}):
        text = ui.act("emergency-stop", 403, reason="x", confirmed="1", **form)
        assert "CSRF token missing or wrong" in text
    assert ui.fake.get_throttle().rate == 10000.0 and ui.fake.get_processing() is True, "nothing was changed"
    assert ui.client.post("/ui/logout", data={}).status_code == 403
    r = ui.client.post("/ui/logout", data={"csrf": csrf})
    assert r.status_code == 303 and "Max-Age=0" in r.headers["set-cookie"]


def test_emergency_stop_and_resume_confirm_first_and_go_through_the_controller(ui: Ui) -> None:
    csrf = ui.login("dana")
    confirm = ui.act("emergency-stop", csrf=csrf, reason="corrupted jobs")
    assert "Confirm: Emergency stop" in confirm and "the API is blocked" in confirm
    assert 'name="confirmed" value="1"' in confirm and 'value="corrupted jobs"' in confirm
    assert ui.fake.get_throttle().rate == 10000.0, "the first POST only asks"
    assert "needs a reason" in ui.act("emergency-stop", 400, csrf=csrf, reason=" ")
    done = ui.act("emergency-stop", csrf=csrf, reason="corrupted jobs", confirmed="1")
    assert "Emergency stop: done" in done and "INC-0001" in done
    assert ui.fake.get_throttle().rate == 0 and ui.fake.get_processing() is False
    inc = ui.controller.store.get_incident("INC-0001")
    assert inc.trigger["who"] == "dana" and inc.trigger["reason"] == "corrupted jobs"

    confirm = ui.act("resume", csrf=csrf)
    assert 'id="verify-summary"' in confirm and "verify passed" in confirm, "resume shows verify's result first"
    assert ui.fake.get_throttle().rate == 0
    done = ui.act("resume", csrf=csrf, confirmed="1")
    assert "Resume: done" in done and "verify passed" in done
    assert ui.fake.get_throttle().rate == 10000.0 and ui.fake.get_processing() is True
    resumed = [e for e in ui.controller.store.events(incident_id="INC-0001") if e.kind == "resumed"]
    assert len(resumed) == 1 and "resumed by dana" in resumed[0].message


def test_rollback_to_a_release_approve_and_stop_from_the_page(ui: Ui) -> None:
    csrf = ui.login("erin")
    ui.controller.platform.publish(new_source(ui.root, "v2", ["worker"]), None, "v2")
    assert "no deployment is active" in ui.act("approve", 400, csrf=csrf)
    assert "no deployment is active" in ui.act("stop", 400, csrf=csrf, rollback="1")
    assert "--to must be a release number" in ui.act("rollback", 400, csrf=csrf, to="latest")
    confirm = ui.act("rollback", csrf=csrf, to="2", reason="r1 writes bad schedules")
    assert "moves to release r2 at once" in confirm
    assert ui.fake.get_weights("worker").versions == {"11": 100.0}
    done = ui.act("rollback", csrf=csrf, to="2", reason="r1 writes bad schedules", confirmed="1")
    assert "Roll back: done" in done and "verify passed" in done
    assert ui.fake.get_weights("worker").versions == {"12": 100.0}
    last = ui.controller.store.deployments("staging", limit=1)[0]
    assert (last.target_release, last.created_by, last.reason) == (2, "erin", "r1 writes bad schedules")
    families = ui.metrics()
    assert _value(families, "backout_rollbacks", env="staging", reason="manual") == 1.0
    hist = families["backout_rollback_decision_to_stable_seconds"]
    count = [s.value for s in hist.samples if s.name.endswith("_count")]
    assert count == [1.0]


# --- live sections ---
def test_the_stream_sends_every_section_rendered_and_the_page_shows_status(ui: Ui) -> None:
    ui.login("<b>x</b>")
    ui.controller.emergency_stop("disk full <script>alert(1)</script>", "ops")
    page = ui.client.get("/ui/").text  # what operators typed is escaped
    assert "<script>alert(1)</script>" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "<b>x</b>" not in page and "&lt;b&gt;x&lt;/b&gt;" in page
    r = ui.client.get("/ui/stream", params={"once": 1})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    events = [b for b in r.text.split("\n\n") if b.startswith("event: sections")]
    assert len(events) == 1
    sections = json.loads(events[0].split("data: ", 1)[1])
    assert set(sections) == {"environments", "warnings", "deployment", "alarms", "functions", "queues", "incidents",
                             "drills"}
    assert "API blocked (throttle 0)" in sections["warnings"] and "no passing rollback drill" in sections["warnings"]
    assert 'id="api-state" class="bad"' in sections["queues"] and "jobs-dlq (DLQ)" in sections["queues"]
    assert "INC-0001" in sections["incidents"] and "/ui/incidents/INC-0001" in sections["incidents"]
    assert "prod (local, not running here)" in sections["environments"]
    report = ui.client.get("/ui/incidents/INC-0001")
    assert report.status_code == 200 and "emergency stop: disk full" in report.text and "<script>" not in report.text
    assert ui.client.get("/ui/incidents/INC-0099").status_code == 404
    ui.app.state.stopping.set()  # what the supervisor does first when asked to stop: open streams end
    r = ui.client.get("/ui/stream")  # no `once`: without the event this stream would last its minute
    assert r.status_code == 200 and r.text == "retry: 1000\n\n"


# --- metrics ---
def test_metrics_export_the_control_plane_with_a_registry_per_app(ui: Ui) -> None:
    with TestClient(build_app(ui.controller, TOKEN)) as second:  # a second app registers a collector of its own
        assert "backout_deployment_phase" in second.get("/metrics", headers=AUTH).text
    ui.controller.emergency_stop("db locked", "ops", keep_api=True)
    ui.controller.emergency_stop("db locked again", "ops")
    fams = ui.metrics()
    assert _value(fams, "backout_emergency_stops", env="staging", reason="keep_api") == 1.0
    assert _value(fams, "backout_emergency_stops", env="staging", reason="full") == 1.0
    assert _value(fams, "backout_api_blocked", env="staging") == 1.0
    assert _value(fams, "backout_processing_enabled", env="staging") == 0.0
    assert _value(fams, "backout_open_incidents", env="staging") == 2.0
    assert _value(fams, "backout_canary_weight_percent", function="worker", version="11") == 100.0
    assert _value(fams, "backout_queue_messages", queue="jobs-dlq", dlq="true", state="visible") == 0.0
    assert fams["backout_rollbacks"].type == "counter" and fams["backout_drill_rollback_seconds"].type == "histogram"


def test_a_deployment_in_the_page_and_the_metrics_then_stopped_from_the_page(ui: Ui) -> None:
    csrf = ui.login("frank")
    ui.controller.platform.publish(new_source(ui.root, "v2", ["worker"]), None, "v2")
    d = ui.controller.deployer.create(strategy="Hold", release=2, created_by="frank")  # holds at 50 % (FakeClock)
    wait_for(lambda: ui.controller.live_alarms() or None, timeout=20, what="the first evaluation of the alarms")
    fams = ui.metrics()
    assert _value(fams, "backout_deployment_phase", phase="InProgress") == 1.0
    assert _value(fams, "backout_deployment_phase", phase="Succeeded") == 0.0
    assert _value(fams, "backout_deployment_info", deployment=d.id) == 1.0
    assert (_value(fams, "backout_deployment_step"), _value(fams, "backout_deployment_steps")) == (1.0, 2.0)
    assert _value(fams, "backout_deployment_weight_percent") == 50.0
    assert _value(fams, "backout_canary_weight_percent", function="worker", version="12", role="canary") == 50.0
    assert 0.0 <= _value(fams, "backout_deployment_lease_age_seconds") < 60.0
    alarms = ui.controller.live_alarms()
    name, e = sorted(alarms.items())[0]
    assert _value(fams, "backout_alarm_state", alarm=name, state=e.state) == 1.0
    assert sum(s.value for s in fams["backout_alarm_state"].samples if s.labels["alarm"] == name) == 1.0
    assert _value(fams, "backout_alarm_threshold", alarm=name) == e.threshold

    page = ui.client.get("/ui/").text
    assert f'id="deployment-id">{d.id}' in page and 'id="deployment-status">InProgress' in page
    assert f'data-alarm="{name}"' in page and 'class="chart"' in page and 'data-weight="50"' in page

    confirm = ui.act("stop", csrf=csrf, rollback="1", reason="wrong colour")
    assert f"{d.id} ({d.stable} → {d.target}, 50 % on the target) stops" in confirm
    assert "goes back to 100 % stable" in confirm
    assert ui.controller.store.get(d.id).status == "InProgress", "the first POST only asks"
    done = ui.act("stop", csrf=csrf, rollback="1", reason="wrong colour", confirmed="1")
    assert "Stop the deployment: done" in done
    assert ui.controller.store.get(d.id).status == "RolledBack"
    assert ui.fake.get_weights("worker").versions == {"11": 100.0}
    fams = ui.metrics()
    assert _value(fams, "backout_rollbacks", reason="manual") == 1.0
    assert _value(fams, "backout_deployment_weight_percent") == 0.0
    assert not fams["backout_deployment_lease_age_seconds"].samples, "nothing active: no lease"
    page = ui.client.get("/ui/").text
    assert 'id="deployment-status">RolledBack' in page and 'data-weight="0"' in page
    assert 'id="deployment-weight">0<' in page
    assert f'data-alarm="{name}"' in page, "after the deployment, its last evaluations stay on the page"


def _exported_names(text: str) -> set[str]:
    """Every series name an exposition can hold: counters' `_total`, histograms' `_bucket`/`_sum`/`_count`."""
    names: set[str] = set()
    for f in text_string_to_metric_families(text):
        names.add(f.name)
        names.update(s.name for s in f.samples)
        if f.type == "counter":
            names.add(f"{f.name}_total")
        if f.type == "histogram":
            names.update(f"{f.name}{sfx}" for sfx in ("_bucket", "_sum", "_count"))
    return names


def test_grafana_dashboard_and_alert_rules_query_only_exported_metrics(ui: Ui, tmp_path: Path) -> None:
    exported = _exported_names(ui.client.get("/metrics", headers=AUTH).text)
    # the local platform's gateway serves its latency histogram on the same /metrics
    gw = Gateway([], lambda fn, ev: None, MetricStore(tmp_path / "m.db"), "svc", "staging", 1024,  # type: ignore[arg-type]
                 Throttle(10.0, 10))
    gw._record(200, "3", 12.0)
    exported |= _exported_names(generate_latest(gw.registry).decode())
    assert "backout_gateway_request_duration_seconds_bucket" in exported

    dashboard = json.loads((DOCS / "grafana-dashboard.json").read_text())
    queries = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    queries += [a["expr"] for a in dashboard["annotations"]["list"]]
    queries += [v["definition"] for v in dashboard["templating"]["list"] if "definition" in v]
    rules = yaml.safe_load((DOCS / "alerts.yml").read_text())["groups"][0]["rules"]
    queries += [r["expr"] for r in rules]
    assert len(dashboard["panels"]) >= 10 and len(rules) >= 8
    used: set[str] = set()
    for q in queries:
        names = set(re.findall(r"\bbackout_[a-z0-9_]+", q))
        assert names, f"no backout metric in {q!r}"
        assert names <= exported, f"{q!r} names {sorted(names - exported)}, which /metrics does not export"
        used |= names
    assert {"backout_deployment_phase", "backout_canary_weight_percent", "backout_alarm_state",
            "backout_rollbacks_total", "backout_emergency_stops_total", "backout_deployment_lease_age_seconds",
            "backout_rollback_decision_to_stable_seconds_bucket", "backout_drill_rollback_seconds_bucket",
            "backout_gateway_request_duration_seconds_bucket"} <= used
    assert all({"alert", "expr", "labels", "annotations"} <= set(r) for r in rules)


# --- charts ---
def test_rate_points_exist_only_for_seconds_with_traffic_and_lines_break_at_gaps() -> None:
    per_second = [[100, 4, 0], [101, 4, 0], [131, 5, 2], [132, 5, 3]]  # 29 s without a request in between
    pts = rate_points(per_second, 100, 140, rolling=1)
    assert pts == [(101.0, 0.0), (102.0, 0.0), (132.0, 40.0), (133.0, 60.0)]
    xs, ys = gapped(pts)
    assert len(xs) == 5 and math.isnan(ys[2]) and 102.0 < xs[2] < 132.0
    assert gapped([]) == ([], [])


def _deployment(**kw: Any) -> Deployment:
    base = dict(id="d-0001", env="staging", stable_release=1, target_release=2, strategy="Fast", steps=(),
                status="RolledBack", current_step=1, current_weight=0.0, step_started_at=None, created_at=1000.0,
                finished_at=1060.0, description="", reason="alarm", created_by="", rollback_decided_at=1050.0,
                rollback_completed_at=1050.1)
    return Deployment(**{**base, **kw})  # type: ignore[arg-type]


def test_the_dashboard_chart_draws_steps_and_measured_dots_only() -> None:
    d = _deployment()
    events = [Event(1, d.id, None, 1010.0, "step_reached", "info", "", {"weight": 40.0}),
              Event(2, d.id, None, 1050.1, "rolled_back", "critical", "", {})]
    steps = weight_steps(d, events)
    assert steps == [(1000.0, 0.0), (1010.0, 40.0), (1050.1, 0.0)]
    # the record says RolledBack before the deployer has written its event: the chart is at 0 % already
    assert weight_steps(d, events[:1]) == [(1000.0, 0.0), (1010.0, 40.0), (1050.1, 0.0)]
    errors = [(1012.0, 0.0), (1013.0, 0.0), (1045.0, 50.0)]  # traffic in 1011, 1012 and 1044 only
    out = svg(ChartData(1000.0, 1060.0, steps, errors, threshold=5.0), "d-0001 <r2>")
    assert 'data-weight="0"' in out and 'data-weights="0 40 0"' in out and 'data-error-points="3"' in out
    assert out.count("<circle") == 3, "one dot per measured second"
    assert out.count('class="errors"') == 1, "a line only joins the two consecutive seconds, none across the gap"
    assert 'class="threshold"' in out and "&lt;r2&gt;" in out
    weight = re.search(r'class="weight" points="([^"]+)"', out).group(1).split()  # type: ignore[union-attr]
    ys = [float(p.split(",")[1]) for p in weight]
    assert all(ys[i] == ys[i - 1] or weight[i].split(",")[0] == weight[i - 1].split(",")[0]
               for i in range(1, len(ys))), "only horizontal and vertical segments: steps, never a slope"
