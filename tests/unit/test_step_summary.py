"""The CI job summary (`GITHUB_STEP_SUMMARY`) written from the control API's own answers: a rollback decided
by an alarm (its value against the threshold, the decision, the timeline, the incident), a manual rollback
with its verify, and a summary file that cannot be written (one warning, never a failed command). The drill's
summary is checked end to end with the CI example (tests/integration/test_ci_example.py)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from backout.cli import step_summary
from fakes import ControlPlane, new_source, raising


class Api(ControlPlane):
    """The control API over a FakePlatform, as the CLI reaches it."""

    def call(self, method: str, path: str, body: Any = None) -> Any:
        r = self.client.request(method, path, headers=self.auth, json=body)
        assert r.status_code == 200, r.text
        return r.json()

    def settle(self, deployment_id: str) -> dict[str, Any]:
        """The view once the deployment ended (and a rollback's incident is open), as `deploy` waits for it."""
        deadline = time.monotonic() + 30
        while True:
            view = self.call("GET", f"/deployments/{deployment_id}")
            d = view["deployment"]
            if d["status"] in ("Succeeded", "Stopped", "Failed") or view["incident"] is not None:
                return view
            assert time.monotonic() < deadline, f"{deployment_id} still {d['status']}"
            time.sleep(0.02)


@pytest.fixture
def api(tmp_path: Path, fast_evaluations: None) -> Iterator[Api]:
    with Api(tmp_path) as a:
        yield a


def test_a_rollback_by_an_alarm_shows_the_value_against_the_threshold_the_decision_and_the_incident(
        api: Api) -> None:
    api.call("POST", "/publish", {"source": str(new_source(api.root, "v2", ["worker"]))})
    api.fake.handle("worker", raising(), version="12")
    d = api.call("POST", "/deployments", {"release": 2, "strategy": "Hold", "description": "v2"})["deployment"]
    deadline = time.monotonic() + 10
    while api.call("GET", f"/deployments/{d['id']}")["deployment"]["current_step"] != 0:
        assert time.monotonic() < deadline, "the deployment never reached its canary step"
        time.sleep(0.02)
    api.fake.traffic("worker", 40)  # 20 on the canary, all failing
    api.fake.clock.advance(1)
    view = api.settle(d["id"])
    assert view["deployment"]["status"] == "RolledBack"
    text = step_summary.deployment(view, "staging")
    assert text.startswith(f"### ↩️ backout deploy: `{d['id']}` RolledBack in staging")
    assert "r1 (repair v21, worker v11) → r2 (api v1, repair v21, worker v12) with Hold" in text
    assert "— v2" in text
    assert "**Decision**: rolled back (alarm): alarm error-rate:worker in ALARM: error rate 95.2 %" in text
    assert "| error-rate:worker | **ALARM** | 95.24 | > 10 |" in text
    assert "<details><summary>Timeline (" in text
    assert "| `rolled_back` | **rolled back to r1 (repair v21, worker v11) in" in text
    inc = view["incident"]["id"]
    assert f"`backout incident report {inc} --env staging -o {inc}.md`" in text
    # the alarms' last values are also in the record: the same table when the supervisor no longer holds them
    assert "| error-rate:worker | **ALARM** | 95.24 | > 10 |" in step_summary.deployment({**view, "alarms": {}},
                                                                                         "staging")


def test_a_manual_rollback_shows_how_it_went_and_its_verify(api: Api) -> None:
    api.call("POST", "/publish", {"source": str(new_source(api.root, "v2", ["worker"]))})
    api.settle(api.call("POST", "/deployments", {"release": 2, "strategy": "Fast"})["deployment"]["id"])
    r = api.call("POST", "/rollback", {"reason": "wrong totals", "who": "alice"})
    text = step_summary.rollback(r, api.call("GET", f"/deployments/{r['deployment']}"), "staging")
    assert text.startswith("### ↩️ backout rollback: r2 (api v1, repair v21, worker v12) → r1 (repair v21, "
                           "worker v11) in staging")
    assert "verify passed" in text and "**Verify** (validation after rollback)" in text
    assert "**Decision**: rolled back by hand (alice): wrong totals" in text
    assert f"backout incident show {r['incident']} --env staging" in text


def test_the_summary_is_appended_only_when_asked_and_a_file_that_cannot_be_written_is_one_warning(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    summary = tmp_path / "summary.md"
    monkeypatch.delenv(step_summary.ENV_VAR, raising=False)
    step_summary.append(lambda: "### not asked for")
    assert not summary.exists()
    monkeypatch.setenv(step_summary.ENV_VAR, str(summary))
    step_summary.append(lambda: "### one")
    step_summary.append(lambda: "### two\n")
    assert summary.read_text() == "### one\n\n### two\n\n"  # appended: earlier steps' sections are kept
    capsys.readouterr()
    for broken in (str(tmp_path), str(tmp_path / "no" / "such" / "dir.md")):
        monkeypatch.setenv(step_summary.ENV_VAR, broken)
        step_summary.append(lambda: "### lost")
        err = capsys.readouterr().err
        assert err.startswith(f"warning: step summary not written to {broken}: ") and err.count("\n") == 1

    def unreachable() -> str:
        raise ConnectionRefusedError(111, "Connection refused")

    monkeypatch.setenv(step_summary.ENV_VAR, str(summary))
    step_summary.append(unreachable)
    assert "step summary not written" in capsys.readouterr().err and summary.read_text().count("###") == 2
