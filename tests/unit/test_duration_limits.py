"""Duration limits as the manifest loader reads them (issue 14, point 1): strings with a unit
everywhere a duration is configured, plain numbers in the unit each field always documented, one
unit inside (seconds), and the alarm and the post-traffic hook comparing the same milliseconds."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from backout.control.alarms import ALARM, OK, default_rules, evaluate
from backout.control.hooks import HookContext, run_hook
from backout.manifest import HookSpec, ManifestError, load_manifest
from fakes import FakeClock, FakePlatform, new_source, slow, write_manifest

LIMITS = """
[functions.api]
handler = "app.api"
events = [{ http = "GET /items/{id}" }]
duration_p99_limit = "3s"
[functions.worker]
handler = "app.worker"
timeout = "2m"
events = [{ queue = "jobs", retry_after = "1500ms" }]
duration_p99_limit = 900
[queues.jobs]
visibility_timeout = "2m"
[environments.staging]
gateway_port = 0
control_port = 0
duration_p99_limits = { worker = "750ms" }
queue_age_limits = { jobs = "5m" }
[environments.prod]
gateway_port = 0
control_port = 0
duration_p99_limits = { api = 250.5 }
queue_age_limits = { jobs = 90 }
"""


def load(tmp_path: Path, text: str = LIMITS) -> object:
    p = tmp_path / "backout.toml"
    p.write_text('[service]\nname = "svc"\n' + text)
    return load_manifest(p)


def test_durations_are_strings_with_units_or_numbers_in_the_documented_unit_held_in_seconds(tmp_path: Path) -> None:
    m = load(tmp_path)
    assert m.functions["api"].duration_p99_limit == 3.0  # "3s"
    assert m.functions["worker"].duration_p99_limit == 0.9  # a plain number is milliseconds there
    assert m.functions["worker"].timeout == 120.0 and m.functions["worker"].queue_events[0].retry_after == 1.5
    assert m.environments["staging"].duration_p99_limits == {"worker": 0.75}
    assert m.environments["staging"].queue_age_limits == {"jobs": 300.0}
    assert m.environments["prod"].queue_age_limits == {"jobs": 90.0}  # a plain number is seconds there
    # the function's own limit, overridden per environment
    assert m.duration_p99_limits("staging") == {"api": 3.0, "worker": 0.75}
    assert m.duration_p99_limits("prod") == {"api": 0.2505, "worker": 0.9}


def test_the_alarm_threshold_is_the_limit_in_the_metrics_milliseconds(tmp_path: Path) -> None:
    m = load(tmp_path)
    rules = {r.name: r for r in default_rules(m, "staging", {"api": "4", "worker": "9"}, 0.0)}
    assert (rules["duration-p99:api"].threshold, rules["duration-p99:api"].unit) == (3000.0, "ms")
    assert rules["duration-p99:worker"].threshold == 750.0
    assert rules["queue-age:jobs"].threshold == 300.0
    prod = {r.name: r for r in default_rules(m, "prod", {"api": "4", "worker": "9"}, 0.0)}
    assert prod["duration-p99:api"].threshold == 250.5 and prod["duration-p99:worker"].threshold == 900.0


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ('duration_p99_limit = "3 seconds"', "functions.api.duration_p99_limit: '3 seconds' is not a duration"),
        ("duration_p99_limit = -5", "functions.api.duration_p99_limit: must not be negative"),
    ],
)
def test_a_bad_duration_is_one_line_naming_the_key(tmp_path: Path, line: str, expected: str) -> None:
    with pytest.raises(ManifestError) as e:
        load(tmp_path, LIMITS.replace('duration_p99_limit = "3s"', line))
    assert expected in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize(("limit", "state"), [('"750ms"', OK), ("750", OK), ('"0.5s"', ALARM), ("500", ALARM)])
def test_alarm_and_post_traffic_hook_agree_on_a_limit_given_either_way(tmp_path: Path, limit: str,
                                                                      state: str) -> None:
    """A new worker version taking 600 ms: within a 750 ms limit, over a 500 ms one, whichever way the
    limit is written — the alarm (p99) and the hook (average) decide alike."""
    m = write_manifest(tmp_path, staging=f"duration_p99_limits = {{ worker = {limit} }}")
    fake = FakePlatform(m, clock=FakeClock(int(time.time()) - 30))
    try:
        stable = fake.releases()[0]
        r2 = fake.publish(new_source(tmp_path, "v2", ["worker"]))
        fake.handle("worker", slow(600), version=r2.version("worker"))
        start = fake.clock.now()
        for _ in range(25):
            fake.invoke("worker", r2.version("worker"), {"n": 1})
        fake.clock.advance(1)
        rule = next(r for r in default_rules(m, "staging", dict(r2.versions), start) if r.kind == "duration_p99")
        assert evaluate(rule, fake, now=fake.clock.now()).state == state
        ctx = HookContext(m, "staging", fake, "d-0001", dict(stable.versions), dict(r2.versions), start, r2.id)
        check = next(c for c in run_hook("post_traffic", HookSpec(builtin="checks"), ctx).checks
                     if c["name"] == "worker average duration")
        assert check["ok"] is (state == OK)
        assert check["detail"] == f"600 ms vs limit {750 if state == OK else 500} ms"
    finally:
        fake.close()
