"""The control API (FastAPI TestClient over `build_app(Controller(...), token)`) on a FakePlatform:
the bearer token, the one mapping of UsageError → 400 and OperationFailed → 409, the alias refused
during a deployment, and every router reached."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fakes import ControlPlane, new_source

TOKEN = "s3cret"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


class Api(ControlPlane):
    """The control plane with calls that send the token and check the status."""

    def __init__(self, root: Path, env: str = "staging") -> None:
        super().__init__(root, env, TOKEN)

    def get(self, path: str, status: int = 200, **kw: Any) -> Any:
        r = self.client.get(path, headers=AUTH, **kw)
        assert r.status_code == status, r.text
        return r.json()

    def post(self, path: str, body: Any = None, status: int = 200) -> Any:
        r = self.client.post(path, headers=AUTH, json={} if body is None else body)
        assert r.status_code == status, r.text
        return r.json()

    def put(self, path: str, body: Any, status: int = 200) -> Any:
        r = self.client.put(path, headers=AUTH, json=body)
        assert r.status_code == status, r.text
        return r.json()

    def finish(self, deployment_id: str) -> dict[str, Any]:
        t = self.controller.deployer._threads.get(deployment_id)
        if t is not None:
            t.join(5)
        return self.get(f"/deployments/{deployment_id}")


@pytest.fixture
def api(tmp_path: Path, fast_evaluations: None) -> Iterator[Api]:
    with Api(tmp_path) as a:
        yield a


def test_every_route_but_healthz_needs_the_bearer_token(api: Api) -> None:
    assert api.client.get("/healthz").json() == {"ok": True, "env": "staging"}
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}):
        r = api.client.get("/status", headers=headers)
        assert r.status_code == 401 and "bearer token" in r.json()["detail"]
    assert api.client.post("/emergency-stop", json={"reason": "x"}).status_code == 401
    assert api.fake.get_throttle().rate == 10000.0, "an unauthenticated stop did nothing"
    assert api.get("/status")["env"] == "staging"


def test_usage_errors_are_400_with_the_one_line_message(api: Api) -> None:
    assert api.get("/deployments/d-0042", 400) == {
        "error": "no deployment 'd-0042' (list them with: backout deployments)"}
    assert api.get("/aliases/nope", 400)["error"].startswith("no function named 'nope'")
    bad = {"namespace": "AWS/Lambda", "metric": "Errors", "start": 0, "end": 60, "period": 7}
    assert api.post("/metrics/query", bad, 400)["error"].startswith("metric period 7 s: CloudWatch accepts")
    assert api.post("/deployments", {"strategy": "Canary10percent5minutes"}, 400)["error"].startswith(
        "unknown strategy 'Canary10percent5minutes' (did you mean Canary10Percent5Minutes?)")


def test_operation_failed_is_409(api: Api) -> None:
    api.post("/emergency-stop", {"reason": "corruption", "who": "alice"})
    api.fake.break_table("jobs")
    err = api.post("/resume", {"who": "alice"}, 409)["error"]
    assert err.startswith("not resuming: verify FAILED: table jobs: ResourceNotFoundException")
    assert api.post("/resume", {"who": "alice", "force": True})["forced"] is True


def test_alias_is_refused_during_a_deployment_and_allowed_after_it(api: Api) -> None:
    api.post("/publish", {"source": str(new_source(api.root, "v2", ["worker"]))})
    d = api.post("/deployments", {"release": 2, "strategy": "Hold", "created_by": "ci"})["deployment"]
    assert d["status"] == "PreTraffic" and d["target_versions"]["worker"] == "12"
    err = api.put("/aliases/worker", {"stable": "11"}, 400)["error"]
    assert err.startswith("deployment d-0001 is already active in staging")
    api.post(f"/deployments/{d['id']}/stop", {"rollback": True, "reason": "enough", "who": "alice"})
    got = api.put("/aliases/worker", {"stable": "11", "canary": "12", "weight": 10, "who": "alice"})
    assert got == {"function": "worker", "stable": "11", "canary": "12", "canary_weight": 10.0}


def test_platform_router(api: Api) -> None:
    view = api.get("/platform")
    assert view["functions"]["worker"]["weights"] == {"11": 100.0} and view["throttle"]["blocked"] is False
    assert view["gateway_url"].startswith("http://127.0.0.1:")
    r2 = api.post("/publish", {"source": str(new_source(api.root, "v2", ["worker"])), "description": "fix"})
    assert r2["id"] == 2 and r2["versions"] == {"api": "1", "worker": "12", "repair": "21"}
    assert [r["id"] for r in api.get("/releases")] == [1, 2]
    assert api.get("/aliases/worker") == {"function": "worker", "stable": "11", "canary": None, "canary_weight": 0.0}
    inv = api.post("/invoke/worker", {"version": "12", "payload": {"test": True}})
    assert inv["version"] == "12" and inv["error"] is None
    api.fake.send_message("jobs-dlq", "{}")
    assert {q["name"] for q in api.get("/queues")} == {"jobs", "jobs-dlq"}
    assert api.get("/queues/jobs-dlq")["visible"] == 1
    assert api.get("/queues/nope", 400)["error"].startswith("no queue named 'nope'")
    task = api.post("/queues/jobs-dlq/redrive")
    assert (task["status"], task["moved"], task["destination"]) == ("COMPLETED", 1, "jobs")
    assert [t["id"] for t in api.get("/queues/jobs-dlq/redrives")] == [task["id"]]
    assert api.post("/throttle", {"rate": 5, "burst": 2, "who": "ops"}) == {"rate": 5.0, "burst": 2}
    assert api.post("/processing", {"enabled": False}) == {"enabled": False}
    assert api.controller.store.switches("staging") == {"throttle": {"rate": 5.0, "burst": 2}, "processing": False}
    assert api.get("/health") == {"ok": True, "checks": [{"name": "table jobs", "ok": True,
                                                          "detail": "ACTIVE, 0 item(s)", "latency_ms": 0.1}]}
    stopped: list[bool] = []
    api.controller.on_shutdown = lambda: stopped.append(True)
    assert api.post("/shutdown") == {"stopping": True} and stopped == [True]


def test_telemetry_router(api: Api) -> None:
    api.fake.traffic("worker", 4, at=api.fake.clock.now() - 1)
    now = api.fake.clock.now()
    q = {"namespace": "AWS/Lambda", "metric": "Invocations", "dimensions": {"FunctionName": "worker"},
         "start": now - 60, "end": now + 1, "period": 60, "statistic": "Sum"}
    (point,) = api.post("/metrics/query", q)
    assert point["value"] == 4.0 and point["timestamp"] % 60 == 0
    calls = api.fake.metrics_calls
    assert [[p["value"] for p in s] for s in api.post("/metrics/query", [q, {**q, "metric": "Errors"}])] == [
        [4.0], [0.0]]
    assert api.fake.metrics_calls == calls + 1, "a list of queries is one batched call"
    s = api.get("/metrics/summary/worker", params={"since": 60})
    assert s["Invocations"] == 4.0 and s["error_rate_pct"] == 0.0
    # a platform without figures of its own (as aws): /metrics has the control plane's families only
    text = api.client.get("/metrics", headers=AUTH).text
    assert "backout_deployment_phase" in text and "backout_aws_lambda" not in text


def test_deployments_router(api: Api) -> None:
    api.post("/publish", {"source": str(new_source(api.root, "v2", ["worker"]))})
    view = api.post("/deployments", {"release": 2, "strategy": "Fast", "description": "v2"})
    d = api.finish(view["deployment"]["id"])
    assert d["deployment"]["status"] == "Succeeded"
    assert d["deployment"]["target"] == "r2 (api v1, repair v21, worker v12)"
    assert d["incident"] is None and d["events"][-1]["kind"] == "succeeded"
    last = d["events"][-2]["id"]
    assert [e["kind"] for e in api.get(f"/deployments/{d['deployment']['id']}",
                                       params={"after_event": last})["events"]] == ["succeeded"]
    assert [x["id"] for x in api.get("/deployments")] == ["d-0001"]
    assert api.post("/deployments/d-0001/stop", {}, 400)["error"] == "deployment d-0001 is already Succeeded"
    assert api.post("/deployments/d-0001/approve", {}, 400)["error"].endswith("not waiting for approval")


def test_approve_route_releases_a_deployment_waiting_in_prod(tmp_path: Path, fast_evaluations: None) -> None:
    a = Api(tmp_path, env="prod")
    try:
        a.post("/publish", {"source": str(new_source(a.root, "v2", ["worker"]))})
        d = a.post("/deployments", {"release": 2, "strategy": "Fast"})["deployment"]
        assert d["status"] == "AwaitingApproval"
        a.post(f"/deployments/{d['id']}/approve", {"who": "carol"})
        assert a.finish(d["id"])["deployment"]["status"] == "Succeeded"
    finally:
        a.close()


def test_runbooks_router(api: Api) -> None:
    assert api.post("/verify")["ok"] is True
    api.post("/publish", {"source": str(new_source(api.root, "v2", ["worker"]))})
    api.finish(api.post("/deployments", {"release": 2, "strategy": "Fast"})["deployment"]["id"])
    out = api.post("/rollback", {"reason": "wrong output", "who": "alice"})
    assert (out["mode"], out["from"], out["to"], out["verify"]["ok"]) == ("rollback", 2, 1, True)
    assert api.post("/rollback", {"reason": ""}, 400)["error"].startswith("--reason is required")
    snap = api.post("/backups", {"label": "by hand"})
    assert [b["id"] for b in api.get("/backups")] == ["snap-0001", snap["id"]]  # the deployment's, then this
    assert "to restore anyway add --yes" in api.post(f"/backups/{snap['id']}/restore", {}, 400)["error"]
    assert api.post(f"/backups/{snap['id']}/restore", {"yes": True, "who": "alice"})["restored"] == snap["id"]
    rep = api.post("/repair", {"deployment": out["deployment"], "dry_run": True})
    assert (rep["bad_release"], rep["jobs"]) == (2, [])
    stop = api.post("/emergency-stop", {"reason": "corruption", "who": "alice"})
    assert api.get("/status")["api"]["blocked"] is True
    assert api.post("/resume", {"who": "alice"})["incidents"] == [stop["incident"]]
    assert api.get("/drills") == []
    assert api.post("/drills", {"fault": "meltdown"}, 400)["error"].startswith("--fault 'meltdown'")



def test_metric_summary_separates_versions_excludes_probes_and_names_units(api: Api) -> None:
    api.post("/publish", {"source": str(new_source(api.root, "v2", ["worker"]))})
    api.put("/aliases/worker", {"stable": "11", "canary": "12", "weight": 50, "who": "ops"})
    api.fake.traffic("worker", 10, at=api.fake.clock.now() - 1)  # 5 each, through the live alias
    for v in ("11", "12"):  # what the pre-traffic check and verify do: invoke a version directly
        api.post("/invoke/worker", {"version": v, "payload": {"test": True}})
    s = api.get("/metrics/summary/worker", params={"since": 60})
    assert s["Invocations"] == 10.0
    assert {v: m["Invocations"] for v, m in s["versions"].items()} == {"11": 5.0, "12": 5.0}
    assert s["units"]["Duration.p99"] == "ms" and s["units"]["error_rate_pct"] == "%"
    assert api.get("/metrics/summary/worker", params={"since": 60, "version": "12"})["Invocations"] == 5.0
