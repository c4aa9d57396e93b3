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
from types import SimpleNamespace
from typing import Any

import pytest
import yaml
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.parser import text_string_to_metric_families

from backout.control.alarms import CanaryEvidence, Evaluation
from backout.control.lease import Lease
from backout.control.store import AlarmEvaluation, Deployment, Event
from backout.platforms.base import Throttle
from backout.platforms.local.gateway import Gateway
from backout.platforms.local.metrics import MetricStore
from backout.runbooks.incidents.chart import gapped, rate_points
from backout.server.app import build_app
from backout.server.dashboard.charts import ChartData, svg, weight_steps
from backout.server.dashboard.state import alarms as alarm_rows
from backout.server.metrics import ControlPlaneCollector, _PlatformCollector, lease_age
from fakes import ControlPlane, new_source
from support import wait_for

TOKEN = "s3cret-token"
COOKIE = "backout_session_staging"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
DOCS = Path(__file__).resolve().parents[2] / "docs" / "observability"


class Ui(ControlPlane):
    """The control plane with a browser-like client (cookies kept, redirects not followed)."""

    def __init__(self, root: Path) -> None:
        super().__init__(root, token=TOKEN, follow_redirects=False)

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


@pytest.fixture
def ui(tmp_path: Path, fast_evaluations: None) -> Iterator[Ui]:
    with Ui(tmp_path) as u:
        yield u


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
    for hostile in ("²", "r٣", "9" * 5000):  # isdigit() takes them, int() does not (it was a 500)
        line = ui.act("rollback", 400, csrf=csrf, to=hostile)
        assert "--to must be a release number" in line and "9" * 100 not in line, hostile
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
    assert _value(fams, "backout_supervisor_memory_bytes", part="rss") > _value(
        fams, "backout_supervisor_memory_bytes", part="python_in_use") > 0
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
    # the environment picker lists environments before their first deployment too
    (picker,) = [v for v in dashboard["templating"]["list"] if v["name"] == "env"]
    family = re.fullmatch(r"label_values\((\w+), env\)", picker["definition"]).group(1)  # type: ignore[union-attr]
    assert not ui.controller.store.deployments("staging") and _value(ui.metrics(), family, env="staging") >= 0
    queries = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    queries += [a["expr"] for a in dashboard["annotations"]["list"]]
    queries += [v["definition"] for v in dashboard["templating"]["list"] if "definition" in v]
    rules = yaml.safe_load((DOCS / "alerts.yml").read_text())["groups"][0]["rules"]
    queries += [r["expr"] for r in rules]
    # the gateway's histogram carries env on /metrics (`with_env`): no panel or alert mixes environments
    for q in queries:
        if "backout_gateway_" in q:
            assert all('env="$env"' in sel for sel in re.findall(r"backout_gateway_\w+(\{[^}]*\})?", q)) \
                or "by (env, le)" in q, q
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


def test_the_platforms_families_get_the_env_label_the_control_plane_families_have(tmp_path: Path) -> None:
    gw = Gateway([], lambda fn, ev: None, MetricStore(tmp_path / "m.db"), "svc", "staging", 1024,  # type: ignore[arg-type]
                 Throttle(10.0, 10))
    gw._record(200, "3", 12.0)
    gw._record(503, "4", 40.0)
    before = {f.name: f for f in text_string_to_metric_families(generate_latest(gw.registry).decode())}
    x = GaugeMetricFamily("x", "set by the platform", labels=["env"])
    x.add_metric(["prod"], 1.0)
    reg = CollectorRegistry(auto_describe=False)
    reg.register(_PlatformCollector(SimpleNamespace(metric_families=lambda: [*gw.registry.collect(), x]),  # type: ignore[arg-type]
                                    "staging"))
    after = {f.name: f for f in text_string_to_metric_families(generate_latest(reg).decode())}
    latency = after["backout_gateway_request_duration_seconds"]
    assert latency.type == "histogram" and {s.labels["env"] for s in latency.samples} == {"staging"}
    strip = [(s.name, {k: v for k, v in s.labels.items() if k != "env"}, s.value) for s in latency.samples]
    assert strip == [(s.name, s.labels, s.value) for s in before["backout_gateway_request_duration_seconds"].samples]
    assert after["x"].samples[0].labels == {"env": "prod"}, "a label the platform set is kept"


def _stub_controller(active: Deployment | None, leases: Any = None, live: Any = None, **store: Any) -> Any:
    """What `lease_age` and the alarm readers use of a Controller: the store, the deployer's lease and
    live alarms (a shared store's driver may be another process, which no test can start here)."""
    return SimpleNamespace(
        env="staging", live_alarms=lambda: live or {},
        store=SimpleNamespace(active_deployment=lambda env: active, **store),
        deployer=SimpleNamespace(leases=leases, live={}))


def test_lease_age_is_the_time_since_the_lease_was_renewed_whoever_holds_it() -> None:
    d = _deployment(status="InProgress", created_at=300.0, step_started_at=400.0, finished_at=None)
    leases = SimpleNamespace(expiry_seconds=60.0, lease=lambda did: Lease(did, "other-host:7:ab12cd34", 1055.0, 3))
    # another process renewed it 5 s ago: this one never evaluated an alarm of it (the step began 600 s ago)
    assert lease_age(_stub_controller(d, leases), 1000.0) == 5.0
    released = SimpleNamespace(expiry_seconds=60.0, lease=lambda did: Lease(did, "other-host:7:ab12cd34", 1000.0, 3))
    assert lease_age(_stub_controller(d, released), 1000.0) == 60.0, "released: as old as an expired one"
    assert lease_age(_stub_controller(d), 1000.0) == 600.0, "one machine, no lease: since the step began"
    assert lease_age(_stub_controller(None, leases), 1000.0) is None


def test_alarm_families_come_from_the_stored_states_when_another_process_drives() -> None:
    d = _deployment(status="InProgress", finished_at=None)
    stored = [AlarmEvaluation(1, d.id, "error-rate:api", 10.0, "OK", 0.0, 10.0, "GreaterThanThreshold", 60.0, ""),
              AlarmEvaluation(2, d.id, "latency-p99:api", 11.0, "INSUFFICIENT_DATA", None, 1.5,
                              "GreaterThanThreshold", 60.0, ""),
              AlarmEvaluation(3, d.id, "error-rate:api", 20.0, "ALARM", 40.0, 10.0, "GreaterThanThreshold", 60.0,
                              "")]
    c = _stub_controller(d, alarm_evaluations=lambda did: stored)
    state, value, threshold = ControlPlaneCollector(c)._alarms("staging")
    on = {(s.labels["alarm"], s.labels["state"]) for s in state.samples if s.value == 1.0}
    assert on == {("error-rate:api", "ALARM"), ("latency-p99:api", "INSUFFICIENT_DATA")}
    assert {s.labels["alarm"]: s.value for s in threshold.samples} == {"error-rate:api": 10.0,
                                                                       "latency-p99:api": 1.5}
    assert not value.samples, "a stored value is that of the last state change: not served as the newest"


def _fired(alarm: str, detail: str, judge: str | None) -> dict[str, Any]:
    ev = None if judge is None else CanaryEvidence(judge, 900.0, 700.0, 3.1, 1.9, 5.3, 41, 802, 120, 7210, 160)
    e = Evaluation(alarm, "ALARM", 40.0, 10.0, "GreaterThanThreshold", 60.0, detail, 20.0, evidence=ev)
    return e.as_dict()


def test_after_a_rollback_each_alarm_row_shows_its_own_evidence() -> None:
    d = _deployment()
    details = {"error-rate:api": "error rate 40 % (8/20) > 10 %", "latency-p99:api": "p99 2.4 s > 1.5 s",
               "error-rate:worker": "error rate 30 % (3/10) > 10 %"}
    stored = [AlarmEvaluation(i, d.id, name, 20.0, "ALARM", 40.0, 10.0, "GreaterThanThreshold", 60.0, detail)
              for i, (name, detail) in enumerate(details.items())]
    firing = [_fired("error-rate:api", details["error-rate:api"], "errors-judge:api"),
              _fired("latency-p99:api", details["latency-p99:api"], "latency-judge:api"),
              _fired("error-rate:worker", details["error-rate:worker"], None)]
    inc = SimpleNamespace(trigger={"kind": "alarm", "alarms": firing},
                          evidence={"alarms": [f["detail"] for f in firing]})
    c = _stub_controller(None, alarm_evaluations=lambda did: stored, incident_for_deployment=lambda did: inc)
    rows = {r["alarm"]: r for r in alarm_rows(c, d)}
    assert rows["error-rate:api"]["evidence"].startswith("errors-judge:api: e-value 900 ≥ 700, ratio 3.1")
    assert rows["latency-p99:api"]["evidence"].startswith("latency-judge:api: e-value")
    assert rows["error-rate:worker"]["evidence"] is None, "no judge, and it fired with the detail shown above"
    # before the incident is written, the `rolled_back` event holds the same firing data
    ev = Event(9, d.id, None, 1050.1, "rolled_back", "critical", "", {"trigger": "alarm", "alarms": firing})
    c = _stub_controller(None, alarm_evaluations=lambda did: stored, incident_for_deployment=lambda did: None,
                         events=lambda deployment_id: [ev])
    rows = {r["alarm"]: r for r in alarm_rows(c, d)}
    assert rows["latency-p99:api"]["evidence"].startswith("latency-judge:api")


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
