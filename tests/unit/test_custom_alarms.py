"""Alarms on any metric (`[environments.X.alarms.NAME]`): they join the procedure's own, roll back naming
exactly themselves with their evidence, watch only the new version through `{version}`, follow CloudWatch's
treat-missing-data semantics, and a bad one is a one-line manifest error (exit 2)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from backout.cli import context
from backout.cli.main import run
from backout.control import states as st
from backout.control.alarms import ALARM, INSUFFICIENT_DATA, OK, AlarmSet, custom_rules, default_rules, evaluate
from fakes import World, write_manifest

BAD_RECORDS = """
[environments.staging.alarms.bad-records]
namespace = "SVC"
metric = "BadRecords"
dimensions = {{ FunctionName = "{{function}}", ExecutedVersion = "{{version}}" }}
function = "worker"
statistic = "Sum"
threshold = 0
period = "10s"
treat_missing_data = "{tmd}"
"""


def test_a_custom_alarm_rolls_back_named_with_its_evidence_and_watches_only_the_new_version(
    tmp_path: Path, fast_evaluations: None
) -> None:
    w = World(tmp_path, staging=BAD_RECORDS.format(tmd="notBreaching"))
    try:
        r1, r2 = w.fake.releases()[0], w.release("api", "worker")
        d = w.deploy(r2)
        w.wait_step(d.id, 0)
        rules = {r.name: r for r in default_rules(w.manifest, w.env, dict(d.target_versions), 0.0)}
        assert "error-rate:worker" in rules, "the procedure's alarms stay"
        assert dict(rules["bad-records"].metric.dimensions) == {"FunctionName": "worker", "ExecutedVersion": "12"}
        # the stable version's bad records are not the canary's
        w.fake.record("SVC", "BadRecords", {"FunctionName": "worker", "ExecutedVersion": "11"}, 3)
        w.clock.advance(1)
        w.nudge(d.id)
        w.wait(lambda: w.store.alarm_evaluations(d.id, "bad-records"), what="bad-records evaluated")
        assert w.store.get(d.id).active and w.store.alarm_evaluations(d.id, "bad-records")[-1].state == OK
        w.fake.record("SVC", "BadRecords", {"FunctionName": "worker", "ExecutedVersion": "12"}, 2)
        w.clock.advance(1)
        w.nudge(d.id)
        done = w.finish(d.id)
        assert done.status == st.ROLLED_BACK
        data = w.event(d.id, "rolled_back").data
        assert [a["alarm"] for a in data["alarms"]] == ["bad-records"]
        sentence = ("SVC BadRecords Sum 2 > 0 over 2 s on FunctionName=worker, ExecutedVersion=12")
        assert data["evidence"] == [sentence] and data["reason"] == f"alarm bad-records in ALARM: {sentence}"
        a = data["alarms"][0]
        assert (a["value"], a["threshold"], a["window_seconds"], a["state"]) == (2.0, 0.0, 2.0, ALARM)
        assert w.fake.live_versions() == w.live(r1)
    finally:
        w.close()


def test_a_placeholder_without_function_is_one_alarm_per_function(tmp_path: Path) -> None:
    extra = BAD_RECORDS.format(tmd="missing").replace('function = "worker"\n', "")
    extra += """
[environments.staging.alarms.backlog]
namespace = "AWS/SQS"
metric = "ApproximateNumberOfMessagesVisible"
dimensions = { QueueName = "jobs", Resource = "worker:{alias}" }
statistic = "Maximum"
threshold = 100
comparison = "GreaterThanOrEqualToThreshold"
period = "1m"
evaluation_periods = 3
datapoints_to_alarm = 2
"""
    w = World(tmp_path, staging=extra)
    try:
        rules = {r.name: r for r in custom_rules(w.manifest, "staging", {"api": "2", "worker": "12"}, 0.0)}
        assert sorted(rules) == ["backlog", "bad-records:api", "bad-records:worker"]
        assert dict(rules["bad-records:api"].metric.dimensions) == {"FunctionName": "api", "ExecutedVersion": "2"}
        b = rules["backlog"]
        assert dict(b.metric.dimensions) == {"QueueName": "jobs", "Resource": "worker:live"}
        assert (b.period, b.evaluation_periods, b.m, b.comparison) == (60.0, 3, 2, "GreaterThanOrEqualToThreshold")
        assert custom_rules(w.manifest, "prod", {"api": "2"}, 0.0) == []
    finally:
        w.close()


@pytest.mark.parametrize(("tmd", "no_data", "ignore_keeps"), [
    ("missing", INSUFFICIENT_DATA, None),
    ("notBreaching", OK, None),
    ("breaching", ALARM, None),
    ("ignore", INSUFFICIENT_DATA, ALARM),
])
def test_treat_missing_data(tmp_path: Path, tmd: str, no_data: str, ignore_keeps: str | None) -> None:
    w = World(tmp_path, staging=BAD_RECORDS.format(tmd=tmd))
    try:
        start = w.clock.now()
        (rule,) = custom_rules(w.manifest, "staging", {"worker": "12"}, start)
        w.clock.advance(30)
        assert evaluate(rule, w.fake, w.clock.now()).state == no_data  # nothing recorded at all
        w.fake.record("SVC", "BadRecords", {"FunctionName": "worker", "ExecutedVersion": "12"}, 1)
        w.clock.advance(1)
        alarms = AlarmSet([rule])
        assert [c.state for c in alarms.evaluate(w.fake, w.clock.now())] == [ALARM]
        w.clock.advance(40)  # the breaching datapoint is behind even the look-back (2 periods more): no data
        changes = alarms.evaluate(w.fake, w.clock.now())
        after = alarms.current["bad-records"].state
        assert after == (ignore_keeps or no_data) and [c.state for c in changes] == ([] if after == ALARM else [after])
    finally:
        w.close()


@pytest.mark.parametrize(("line", "expected"), [
    ('period = "45s"', "environments.staging.alarms.bad-records.period: '45s': CloudWatch periods are 1s, 5s, 10s, "
                       "30s or a multiple of 60s"),
    ('comparison = "Above"', "environments.staging.alarms.bad-records.comparison: Input should be "
                             "'GreaterThanThreshold', 'GreaterThanOrEqualToThreshold'"),
    ('statistic = "Median"', "environments.staging.alarms.bad-records.statistic: String should match pattern"),
    ("evaluation_periods = 2\ndatapoints_to_alarm = 3", "datapoints_to_alarm (3) exceeds evaluation_periods (2)"),
    ('function = "nope"', "environments.staging.alarms.bad-records.function: no function named 'nope'"),
])
def test_a_bad_alarm_is_one_line_and_exit_2(tmp_path: Path, line: str, expected: str,
                                            monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
                                            ) -> None:
    path = write_manifest(tmp_path, staging=BAD_RECORDS.format(tmd="missing")).path
    key = line.split(" =")[0]
    kept = "\n".join(x for x in path.read_text().splitlines() if not x.startswith(f"{key} ") or "alarms" in x)
    path.write_text(kept.replace("[environments.staging.alarms.bad-records]\n",
                                            f"[environments.staging.alarms.bad-records]\n{line}\n"))
    monkeypatch.setattr(sys, "argv", ["backout", "--manifest", str(path), "status"])
    try:
        with pytest.raises(SystemExit) as exc:
            run()
    finally:
        context.SETTINGS._manifest = None
    err = capsys.readouterr().err
    assert exc.value.code == 2 and expected in err and len(err.strip().splitlines()) == 1, err
