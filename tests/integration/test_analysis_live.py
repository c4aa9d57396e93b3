"""The judges live (issue 10): the SDA on the local platform under load, one `prod` supervisor, two
deployments — a healthy canary with background errors succeeds, a 3× regression rolls back by its judge.

Two forms. The short one (`make test`) fits the suite's time budget: rates and weights chosen so that
each decides within seconds and neither can be decided by anything else: 50 req/s of `GET /health`
(open loop: only the `api` function takes traffic), every version of every function fails 8 % of its
invocations (`BACKOUT_FAULT=errors=0.08` in prod's `environment`), canary at 50 % (prod's strategy
shortened to one 50 % step). The faithful one (`@pytest.mark.long`, `make test-long`) is the issue's
own case, described at its test.

* healthy: the new version fails 8 % too. prod's thresholds (error rate > 5 %, API 5xx > 5 per 5 min)
  fire on it — the API 5xx count within the 10 s hold with P ≈ 1 − 7e-5 — and, prod confirming with its
  judges, wait: the deployment succeeds.
* regression: the new version fails 24 % (`--set-env BACKOUT_FAULT=errors=0.24`). Its errors judge sees
  ≈ 8 failures a second, 3 of 4 on the canary where the share is ½, and decides in ≈ 10 s (8 judges, the
  DLQ judge among them, share α = 0.01: it rejects at e ≥ 800); the error-rate and API 5xx alarms are in
  ALARM by then and roll back with it, confirmed. The ceiling (> 50 % with at least `min_invocations`,
  raised here to 50) cannot fire at 24 %: P(≥ 26 of 50) < 1e-4. The API's 5xx judge sees only 5xx that
  are not the function's errors (none here), the latency judge the slowest request of each second (the
  fault adds none).
"""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from support import SDA_SOURCE, RunningEnv, sda_manifest, wait_for

pytestmark = pytest.mark.slow

RATE = 50.0
STRATEGIES = """
[strategies.Canary50Percent10Seconds]
steps = [{ weight = 50, hold = "10s" }, { weight = 100 }]

[strategies.Canary50Percent60Seconds]
steps = [{ weight = 50, hold = "60s" }, { weight = 100 }]
"""
TERMINAL = {"Succeeded", "RolledBack", "Stopped", "Failed"}


class Load:
    """Open-loop `GET /health` at `rate` (RATE) from a background thread."""

    def __init__(self, base_url: str, rate: float = RATE) -> None:
        self.base_url = base_url
        self.rate = rate
        self.stop = threading.Event()
        self.statuses: list[int] = []
        self.thread = threading.Thread(target=self._run, daemon=True, name="load")

    def __enter__(self) -> Load:
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop.set()
        self.thread.join(timeout=30)

    def _run(self) -> None:
        limits = httpx.Limits(max_connections=32, max_keepalive_connections=32)
        with httpx.Client(base_url=self.base_url, timeout=30, limits=limits) as c, ThreadPoolExecutor(16) as pool:
            t0, i = time.monotonic(), 0
            while not self.stop.is_set():
                delay = t0 + i / self.rate - time.monotonic()
                if delay > 0 and self.stop.wait(delay):
                    break
                pool.submit(self._one, c)
                i += 1

    def _one(self, c: httpx.Client) -> None:
        try:
            self.statuses.append(c.get("/health").status_code)
        except httpx.HTTPError:
            self.statuses.append(0)


def running_prod(tmp: Path, strategies: str, env_extra: str) -> RunningEnv:
    """A `prod` supervisor of the SDA whose code is a copy (so a deployment has something new to ship)."""
    text = sda_manifest(tmp / "state", extra=strategies, env_extra=env_extra)
    post = text[text.index("post_traffic = ["):text.index("]\n", text.index("post_traffic = [")) + 2]
    text = text.replace(post, 'post_traffic = [{ builtin = "checks" }]\n')  # no smoke through background errors
    code = tmp / "code"
    shutil.copytree(SDA_SOURCE / "sda", code / "sda", ignore=shutil.ignore_patterns("__pycache__"))
    init = code / "sda" / "__init__.py"
    init.write_text(init.read_text().replace('__version__ = "', '__version__ = "live-', 1))
    manifest = tmp / "backout.toml"
    manifest.write_text(text)
    env = RunningEnv(manifest, "prod")
    env.code = code  # type: ignore[attr-defined]
    return env


@pytest.fixture(scope="module")
def prod(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningEnv]:
    env = running_prod(tmp_path_factory.mktemp("analysis"), STRATEGIES,
                       'min_invocations = 50\nenvironment = { BACKOUT_FAULT = "errors=0.08" }')
    try:
        yield env
    finally:
        env.stop()


def deploy(env: RunningEnv, *args: str, timeout: float = 120) -> dict[str, Any]:
    """`backout deploy … --no-wait`, approved (prod asks for it), followed to its end through the API."""
    d = env.cli_json("deploy", str(env.code), *args, "--no-wait")["deployment"]  # type: ignore[attr-defined]
    env.api("POST", f"/deployments/{d['id']}/approve", json={"who": "test"})

    def done() -> dict[str, Any] | None:
        v = env.api("GET", f"/deployments/{d['id']}")
        s = v["deployment"]
        ended = s["status"] in TERMINAL and (s["status"] != "RolledBack" or v["incident"] is not None)
        return v if ended else None

    return wait_for(done, timeout=timeout, interval=0.25, what=f"{d['id']} to end")


def test_healthy_canary_with_background_errors_succeeds_and_a_3x_regression_rolls_back_by_its_judge(
        prod: RunningEnv) -> None:
    with Load(prod.gateway_url) as load:
        time.sleep(1.0)  # the stable version warms up under the load
        healthy = deploy(prod, "--strategy", "Canary50Percent10Seconds")
        regression = deploy(prod, "--strategy", "Canary50Percent60Seconds",
                            "--set-env", "BACKOUT_FAULT=errors=0.24")
    assert load.statuses.count(502) > 0 and 0 not in load.statuses

    d = healthy["deployment"]
    assert d["status"] == "Succeeded", d["reason"]
    events = healthy["events"]
    pre = next(e for e in events if e["kind"] == "preflight")
    assert pre["severity"] == "warning" and "api-5xx: " in pre["message"]
    waited = [e for e in events if e["kind"] == "alarm_state" and e["data"]["alarm"] == "api-5xx"
              and e["data"]["state"] == "ALARM"]
    assert waited and waited[0]["severity"] == "warning"
    assert waited[0]["message"].endswith("— waits for errors-judge:api to confirm (confirm_with_judge)")
    assert not [e for e in events if e["kind"] == "alarm_state" and e["data"]["alarm"].endswith("-judge:api")
                and e["data"]["state"] == "ALARM"]

    d = regression["deployment"]
    assert d["status"] == "RolledBack", d
    rolled = next(e for e in regression["events"] if e["kind"] == "rolled_back")["data"]
    assert rolled["trigger"] == "judge"
    assert [a["alarm"] for a in rolled["alarms"]] == ["errors-judge:api", "error-rate:api", "api-5xx"]
    judge, alarm, _ = rolled["alarms"]
    ev = judge["evidence"]
    assert ev["e_value"] >= ev["threshold"] == pytest.approx(800.0) and ev["ratio"] > 1.0  # 8 judges share α
    # rates, not counts: the stable version's seconds before the shift count too, and the judge decides early
    assert ev["canary_events"] / ev["canary_requests"] > ev["stable_events"] / ev["stable_requests"] > 0
    assert alarm["evidence"] == ev
    assert d["reason"].startswith("alarm errors-judge:api in ALARM: errors on api v")
    assert regression["incident"]["trigger"]["kind"] == "judge"
    shown = prod.cli("deployment", "show", d["id"], check=True).stdout
    assert shown.startswith(f"{d['id']} RolledBack") and "decided on:" in shown and "errors-judge:api" in shown
    assert "e-value" in shown


# --- the issue's own case (make test-long) -------------------------------------------------------------------
LONG_RATE = 100.0


@pytest.fixture(scope="module")
def prod_1_percent(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningEnv]:
    """prod as the repository defines it (its thresholds, `min_invocations`, α, judges), every version of
    every function failing 1 % of its invocations."""
    env = running_prod(tmp_path_factory.mktemp("analysis-long"), "",
                       'environment = { BACKOUT_FAULT = "errors=0.01" }')
    try:
        yield env
    finally:
        env.stop()


def _at(events: list[dict[str, Any]], kind: str) -> float:
    return next(e["ts"] for e in events if e["kind"] == kind)


@pytest.mark.long
@pytest.mark.timeout(1500)
def test_issue_case_1_percent_background_in_prod_canary_10_percent_healthy_succeeds_3x_rolls_back_by_its_judge(
        prod_1_percent: RunningEnv) -> None:
    """The issue's case: 1 % background errors in both versions; prod's `Canary10Percent10Minutes`
    shortened to `Canary10Percent5Minutes` (10 % for 5 minutes, then 100 %), at 100 req/s of `GET /health`
    (10 canary requests a second).

    * healthy (1 %): prod's thresholds fire on it (API 5xx > 5 per 5 min: ≈ 30 expected in the hold) and
      wait for the judges; it succeeds unless a judge errs (α = 0.01 over the whole deployment).
    * 3× (3 %): the errors judge (8 judges share α: e ≥ 800) needs ≈ 740 canary requests (median; p99
      ≈ 1,930, 193 s, by `bench/detection.py`'s simulation at this rate and threshold): well inside the
      hold. The ceiling (50 %) cannot fire at 3 %."""
    env = prod_1_percent
    with Load(env.gateway_url, LONG_RATE) as load:
        time.sleep(2.0)  # the stable version warms up under the load
        healthy = deploy(env, "--strategy", "Canary10Percent5Minutes", timeout=600)
        regression = deploy(env, "--strategy", "Canary10Percent5Minutes", "--set-env",
                            "BACKOUT_FAULT=errors=0.03", timeout=600)
    assert load.statuses.count(502) > 0 and 0 not in load.statuses

    d = healthy["deployment"]
    assert d["status"] == "Succeeded", d["reason"]
    events = healthy["events"]
    waited = [e for e in events if e["kind"] == "alarm_state" and e["data"]["state"] == "ALARM"
              and e["data"]["alarm"] in ("api-5xx", "error-rate:api")]
    assert waited and all(e["severity"] == "warning" and "— waits for " in e["message"] for e in waited)
    print(f"\nhealthy: {d['status']}; {waited[0]['ts'] - _at(events, 'step_reached'):.0f} s into the 10 % step: "
          f"{waited[0]['message']}")

    d = regression["deployment"]
    assert d["status"] == "RolledBack", d
    rolled = next(e for e in regression["events"] if e["kind"] == "rolled_back")
    data = rolled["data"]
    assert data["trigger"] == "judge" and data["alarms"][0]["alarm"] == "errors-judge:api"
    ev = data["alarms"][0]["evidence"]
    assert ev["e_value"] >= ev["threshold"] == pytest.approx(800.0)  # 8 judges share α = 0.01
    assert ev["canary_events"] / ev["canary_requests"] > ev["stable_events"] / ev["stable_requests"] > 0
    assert regression["incident"]["trigger"]["kind"] == "judge"
    after = data["decided_at"] - _at(regression["events"], "step_reached")
    print(f"3×: rolled back by errors-judge:api {after:.1f} s into the 10 % step, with "
          f"{[a['alarm'] for a in data['alarms'][1:]]} confirmed: {data['evidence'][0]}")
