"""Pre- and post-traffic hooks over a FakePlatform: what each kind checks, with which version numbers,
and the evidence a failure leaves."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from backout.control.hooks import HookContext, HookResult, run_hook, run_hooks
from backout.control.probes import is_probe
from backout.manifest import HookSpec, load_manifest
from backout.platforms.base import Release
from fakes import Call, FakeClock, FakePlatform, failing, hook_answer, new_source, raising, slow, status, write_manifest


@pytest.fixture
def fake(tmp_path: Path) -> Iterator[FakePlatform]:
    # the post-traffic checks read metrics up to the wall clock's now: the fake clock starts behind it
    f = FakePlatform(write_manifest(tmp_path, staging='duration_p99_limits = { worker = 500 }\n'
                                    '[[smoke]]\nhttp = "GET /health"'), clock=FakeClock(int(time.time()) - 30))
    yield f
    f.close()


@pytest.fixture
def confirming(tmp_path: Path) -> Iterator[FakePlatform]:
    """A staging whose alarms wait for their judges (confirm_with_judge), as prod's do."""
    f = FakePlatform(write_manifest(tmp_path, staging="confirm_with_judge = true"),
                     clock=FakeClock(int(time.time()) - 30))
    yield f
    f.close()


def ctx_for(fake: FakePlatform, target: Release, since: float | None = None,
            alone_since: float | None = None) -> HookContext:
    stable = fake.releases()[0]
    return HookContext(fake.manifest, "staging", fake, "d-0007", dict(stable.versions), dict(target.versions),
                       fake.clock.now() if since is None else since, target.id, alone_since=alone_since)


def release2(fake: FakePlatform, root: Path) -> Release:
    return fake.publish(new_source(root, "v2", ["api", "worker"]))


def test_pre_traffic_checks_probe_every_new_version_by_its_own_number(fake: FakePlatform, tmp_path: Path) -> None:
    r2 = release2(fake, tmp_path)
    r = run_hook("pre_traffic", HookSpec(builtin="checks"), ctx_for(fake, r2))
    assert r.ok, r.output
    assert [c["name"] for c in r.checks] == ["invoke api v2", "invoke worker v12", "invoke repair v21", "table jobs",
                                             "queue jobs", "queue jobs-dlq"]
    probes = {(i.function, i.version): i.event for i in fake.invocations if is_probe(i.event)}
    assert set(probes) == {("api", "2"), ("worker", "12")}  # repair has no event of its own: not invoked
    assert (probes[("api", "2")]["httpMethod"], probes[("api", "2")]["path"]) == ("GET", "/health")
    assert probes[("worker", "12")]["Records"][0]["eventSourceARN"].endswith(":jobs")
    assert r.checks[2] == {"name": "invoke repair v21", "ok": True, "invoked": False,
                           "detail": "not invoked: no HTTP or queue event and no test_event"}


def test_pre_traffic_checks_fail_naming_the_version_what_was_sent_and_how_to_declare_an_event(
    fake: FakePlatform, tmp_path: Path
) -> None:
    r2 = release2(fake, tmp_path)
    fake.handle("worker", raising("KeyError: 'bucket'", test_events=True), version="12")
    r = run_hook("pre_traffic", HookSpec(builtin="checks"), ctx_for(fake, r2))
    assert not r.ok
    assert ("FAILED invoke worker v12: RuntimeError: KeyError: 'bucket' — sent an SQS batch of one message from jobs "
            '(body {"backout_probe": true}, attribute backout-probe); to send worker another event, declare it in '
            'the manifest: [functions.worker] test_event = { … } (or test_event = "events/worker.json")') in r.output
    assert "ok invoke api v2: v2 answered 200 in 5 ms" in r.output


def test_an_api_answering_5xx_to_its_health_route_fails_the_check(fake: FakePlatform, tmp_path: Path) -> None:
    r2 = release2(fake, tmp_path)
    fake.handle("api", status(503), version="2")
    r = run_hook("pre_traffic", HookSpec(builtin="checks"), ctx_for(fake, r2))
    assert not r.ok and "FAILED invoke api v2: answered 503 — sent GET /health (an API Gateway REST proxy event)" \
        in r.output


def aws_api(c: Call) -> dict[str, Any]:
    """An API handler written from AWS's documentation alone: it indexes the proxy event's keys."""
    event = c.event
    method, resource = event["httpMethod"], event["resource"]
    assert event["requestContext"]["requestId"] and isinstance(event["headers"], dict)
    if (method, resource) == ("GET", "/health"):
        return {"statusCode": 200, "headers": {"Content-Type": "application/json"}, "body": '{"status": "healthy"}'}
    item = event["pathParameters"]["id"]
    return {"statusCode": 404, "body": json.dumps({"message": f"no item {item}"})}


def aws_consumer(c: Call) -> dict[str, Any]:
    """A queue handler as AWS documents one: powertools' BatchProcessor, partial batch failures; a message
    it does not know is rejected through batchItemFailures."""
    from aws_lambda_powertools.utilities.batch import BatchProcessor, EventType, process_partial_response

    def record(r: Any) -> None:
        body = json.loads(r.body)
        if "job" not in body:
            raise ValueError(f"unknown message {r.message_id}")

    processor = BatchProcessor(event_type=EventType.SQS, raise_on_entire_batch_failure=False)
    return dict(process_partial_response(c.event, record, processor))


def aws_repair(c: Call) -> dict[str, Any]:
    return {"repaired": c.event["repair"]}  # KeyError on anything but its own requests


def test_a_handler_written_to_aws_event_shapes_alone_passes_the_default_pre_traffic_check(
    fake: FakePlatform, tmp_path: Path
) -> None:
    fake.handle("api", aws_api)
    fake.handle("worker", aws_consumer)
    fake.handle("repair", aws_repair)
    r = run_hook("pre_traffic", fake.manifest.hooks.pre_traffic[0], ctx_for(fake, release2(fake, tmp_path)))
    assert r.ok, r.output
    worker = next(c for c in r.checks if c["name"] == "invoke worker v12")
    assert worker["detail"].startswith("v12 rejected the marked message in ")
    # the probe is the same shape as the gateway's own events: the handler answers real requests too
    assert fake.request("GET", "/items/7")[0] == 404


def test_a_declared_test_event_is_sent_as_given_inline_or_from_a_file(tmp_path: Path) -> None:
    (tmp_path / "events").mkdir()
    (tmp_path / "events" / "repair.json").write_text(json.dumps({"repair": "affected", "versions": {}}))
    manifest = write_manifest(tmp_path)
    text = manifest.path.read_text().replace('[functions.repair]\nhandler = "repair.handler"',
                                             '[functions.repair]\nhandler = "repair.handler"\n'
                                             'test_event = "events/repair.json"')
    text = text.replace('[functions.worker]\n', '[functions.worker]\ntest_event = { Records = [] }\n')
    manifest.path.write_text(text)
    fake = FakePlatform(load_manifest(manifest.path))
    try:
        fake.handle("repair", aws_repair)
        r = run_hook("pre_traffic", HookSpec(builtin="checks"), ctx_for(fake, release2(fake, tmp_path)))
        assert r.ok, r.output
        sent = {i.function: i.event for i in fake.invocations}
        assert sent["repair"] == {"repair": "affected", "versions": {}}
        assert sent["worker"] == {"Records": []}
    finally:
        fake.close()


def test_pre_traffic_checks_fail_on_an_unusable_table(fake: FakePlatform, tmp_path: Path) -> None:
    fake.break_table("jobs")
    r = run_hook("pre_traffic", HookSpec(builtin="checks"), ctx_for(fake, release2(fake, tmp_path)))
    assert not r.ok and "FAILED table jobs: ResourceNotFoundException: table not found" in r.output


def test_pre_traffic_checks_retry_a_throttled_invocation_until_it_answers(fake: FakePlatform, tmp_path: Path) -> None:
    fake.throttle_next["worker"] = 2
    r = run_hook("pre_traffic", HookSpec(builtin="checks", timeout=5), ctx_for(fake, release2(fake, tmp_path)))
    assert r.ok and "ok invoke worker v12" in r.output
    assert fake.throttle_next["worker"] == 0


def test_post_traffic_checks_pass_for_a_healthy_new_version(fake: FakePlatform, tmp_path: Path) -> None:
    r2 = release2(fake, tmp_path)
    for _ in range(10):
        fake.invoke("worker", "12", {"n": 1})
    r = run_hook("post_traffic", HookSpec(builtin="checks"), ctx_for(fake, r2))
    assert r.ok, r.output
    names = [c["name"] for c in r.checks]
    assert names == ["api error rate", "worker error rate", "worker average duration", "repair error rate",
                     "DLQ jobs-dlq"]
    assert "no invocations yet" in r.checks[0]["detail"]


def test_post_traffic_checks_fail_on_the_new_versions_error_rate(fake: FakePlatform, tmp_path: Path) -> None:
    r2 = release2(fake, tmp_path)
    fake.handle("worker", raising(), version="12")
    for i in range(20):
        fake.invoke("worker", "12" if i % 2 else "11", {"n": i})  # the stable version's calls do not count
    r = run_hook("post_traffic", HookSpec(builtin="checks"), ctx_for(fake, r2))
    assert not r.ok
    check = next(c for c in r.checks if c["name"] == "worker error rate")
    assert check == {"name": "worker error rate", "ok": False, "detail": "100.0 % (10/10) vs 10 %"}


def test_post_traffic_checks_fail_on_a_slow_new_version(fake: FakePlatform, tmp_path: Path) -> None:
    r2 = release2(fake, tmp_path)
    fake.handle("worker", slow(900), version="12")
    for _ in range(4):
        fake.invoke("worker", "12", {"n": 1})
    r = run_hook("post_traffic", HookSpec(builtin="checks"), ctx_for(fake, r2))
    check = next(c for c in r.checks if c["name"] == "worker average duration")
    assert check == {"name": "worker average duration", "ok": False, "detail": "900 ms vs limit 500 ms"}


def test_post_traffic_checks_fail_on_dlq_arrivals_the_new_version_received_last(
    fake: FakePlatform, tmp_path: Path
) -> None:
    """Two messages reach the DLQ after r2 took all traffic: one the stable worker (11) had failed on
    every receive before (a late failure, not r2's), one the new worker (12) failed. Only 12's counts."""
    r2 = release2(fake, tmp_path)
    fake.handle("worker", raising())
    fake.send_message("jobs", json.dumps({"job": "stable's"}))
    for _ in range(2):  # max_receive_count 2: the stable version fails it on both receives
        fake.pump()
        fake.clock.advance(1)
    since = fake.clock.now()
    fake.set_weights("worker", "12")  # 100 % on the new version
    fake.send_message("jobs", json.dumps({"job": "new's"}))
    for _ in range(3):
        fake.pump()
        fake.clock.advance(1)
    assert fake.messages("jobs-dlq") == ['{"job": "stable\'s"}', '{"job": "new\'s"}']
    r = run_hook("post_traffic", HookSpec(builtin="checks"), ctx_for(fake, r2, since=since))
    check = next(c for c in r.checks if c["name"] == "DLQ jobs-dlq")
    assert check == {"name": "DLQ jobs-dlq", "ok": False, "detail": "1 arrival(s) since r2 took traffic"}


def test_under_confirmation_what_no_judge_compared_is_held_to_the_threshold(
    confirming: FakePlatform, tmp_path: Path
) -> None:
    """confirm_with_judge: the judges compared the split traffic, so that part answers to the ceiling (50 %);
    the new version alone (AllAtOnce, or after it took all the traffic) answers to the threshold (10 %),
    from `min_invocations` (20) on, as its alarm acting alone would."""
    fake = confirming
    r2 = release2(fake, tmp_path)
    fake.handle("worker", failing(0.3), version="12")
    since = fake.clock.now()
    for i in range(40):  # AllAtOnce: 40 on the new version, 12 failing
        fake.invoke("worker", "12", {"n": i})
    r = run_hook("post_traffic", HookSpec(builtin="checks"), ctx_for(fake, r2, since, alone_since=float("-inf")))
    check = next(c for c in r.checks if c["name"] == "worker error rate")
    assert not r.ok and check == {"name": "worker error rate", "ok": False, "detail": (
        "30.0 % (12/40) vs 10 % (no stable traffic to compare with: no step split the traffic)")}

    fake.clock.advance(1)
    for i in range(40):  # then a canary step: the stable version serves too
        fake.invoke("worker", "11", {"n": i})
    fake.clock.advance(1)
    switch = fake.clock.now()
    for i in range(10):  # 100 %: 3 of 10 fail, fewer invocations than the threshold needs
        fake.invoke("worker", "12", {"n": i})
    r = run_hook("post_traffic", HookSpec(builtin="checks"), ctx_for(fake, r2, since, alone_since=switch))
    check = next(c for c in r.checks if c["name"] == "worker error rate")
    assert r.ok and check["detail"] == (
        "30.0 % (15/50) vs 50 % (the ceiling: confirm_with_judge); since the new version took all the traffic: "
        "at 100 %, no stable traffic to compare with: 10 invocations, fewer than 20 to hold to 10 %")
    for i in range(20):
        fake.invoke("worker", "12", {"n": i})
    r = run_hook("post_traffic", HookSpec(builtin="checks"), ctx_for(fake, r2, since, alone_since=switch))
    check = next(c for c in r.checks if c["name"] == "worker error rate")
    assert not r.ok and check["detail"].endswith("since the new version took all the traffic: 30.0 % (9/30) vs 10 % "
                                                 "(at 100 %, no stable traffic to compare with)")


def test_under_confirmation_dlq_arrivals_fail_the_check_only_when_nothing_was_compared(
    confirming: FakePlatform, tmp_path: Path
) -> None:
    fake = confirming
    r2 = release2(fake, tmp_path)
    fake.handle("worker", raising(), version="12")
    since = fake.clock.now()
    fake.set_weights("worker", "12")
    fake.send_message("jobs", json.dumps({"job": "new's"}))
    for _ in range(3):  # received twice by the new version, failing each time, then moved to the DLQ
        fake.pump()
        fake.clock.advance(1)
    r = run_hook("post_traffic", HookSpec(builtin="checks"), ctx_for(fake, r2, since, alone_since=float("-inf")))
    check = next(c for c in r.checks if c["name"] == "DLQ jobs-dlq")
    assert check == {"name": "DLQ jobs-dlq", "ok": False, "detail": "1 arrival(s) since r2 took traffic (no stable "
                     "traffic to compare with: no step split the traffic)"}
    fake.invoke("worker", "11", {"n": 1})  # a canary step where the stable version served: the judges' to decide
    r = run_hook("post_traffic", HookSpec(builtin="checks"), ctx_for(fake, r2, since, alone_since=fake.clock.now()))
    check = next(c for c in r.checks if c["name"] == "DLQ jobs-dlq")
    assert check == {"name": "DLQ jobs-dlq", "ok": True, "detail": "1 arrival(s) since r2 took traffic "
                     "(confirm_with_judge: left to the judges)"}


def test_function_hook_passes_on_succeeded_and_gets_the_deployment(fake: FakePlatform, tmp_path: Path) -> None:
    r2 = release2(fake, tmp_path)
    seen: list[dict] = []

    def handler(c):  # noqa: ANN001, ANN202 - a handler as a test writes one
        seen.append(c.event)
        return {"status": "Succeeded"}

    fake.handle("checker", handler)
    r = run_hook("pre_traffic", HookSpec(function="checker"), ctx_for(fake, r2))
    assert r.ok and r.name == "function:checker"
    assert seen[0]["DeploymentId"] == "d-0007"
    assert seen[0]["backout"]["target_versions"] == {"api": "2", "worker": "12", "repair": "21"}
    assert seen[0]["backout"]["target_release"] == 2
    # a hook function outside the deployment runs on its live alias
    assert [i.via_alias for i in fake.invocations if i.function == "checker"] == [True]


def test_function_hook_fails_on_failed_or_on_an_error(fake: FakePlatform, tmp_path: Path) -> None:
    ctx = ctx_for(fake, release2(fake, tmp_path))
    fake.handle("checker", hook_answer("Failed"))
    r = run_hook("post_traffic", HookSpec(function="checker"), ctx)
    assert not r.ok and r.output == "checker returned {'status': 'Failed', 'deployment': 'd-0007'}"
    fake.handle("checker", raising("assertion failed: schema", test_events=True))
    r = run_hook("post_traffic", HookSpec(function="checker"), ctx)
    assert not r.ok and r.output == "RuntimeError: assertion failed: schema"


def test_command_hook_passes_on_exit_0_with_the_deployment_in_its_environment(
    fake: FakePlatform, tmp_path: Path
) -> None:
    cmd = f'"{sys.executable}" -c "import os; print(os.environ[\'BACKOUT_TARGET_VERSIONS\'])"'
    r = run_hook("post_traffic", HookSpec(command=cmd), ctx_for(fake, release2(fake, tmp_path)))
    assert r.ok and r.output == 'exit 0: {"api": "2", "worker": "12", "repair": "21"}'


def test_command_hook_fails_on_a_non_zero_exit_and_on_a_timeout(fake: FakePlatform, tmp_path: Path) -> None:
    ctx = ctx_for(fake, release2(fake, tmp_path))
    r = run_hook("post_traffic", HookSpec(command=f'"{sys.executable}" -c "raise SystemExit(3)"'), ctx)
    assert not r.ok and r.output.startswith("exit 3")
    r = run_hook("post_traffic", HookSpec(command=f'"{sys.executable}" -c "import time; time.sleep(5)"',
                                          timeout=0.3), ctx)
    assert not r.ok and r.output.startswith("timed out after 0.3 s")


def test_http_hook_goes_through_the_gateway(fake: FakePlatform, tmp_path: Path) -> None:
    ctx = ctx_for(fake, release2(fake, tmp_path))
    r = run_hook("post_traffic", HookSpec(http="GET /health"), ctx)
    assert r.ok and r.output.startswith(f"GET {fake.endpoint()}/health → 200")
    fake.handle("api", status(503))
    r = run_hook("post_traffic", HookSpec(http="GET /health"), ctx)
    assert not r.ok and "→ 503" in r.output


def test_smoke_hook_runs_the_manifests_smoke_tests_through_the_gateway(fake: FakePlatform, tmp_path: Path) -> None:
    ctx = ctx_for(fake, release2(fake, tmp_path))
    r = run_hook("post_traffic", HookSpec(builtin="smoke"), ctx)
    assert r.ok and r.output == "ok GET /health: GET /health → 200"
    fake.set_throttle(0, 0)
    r = run_hook("post_traffic", HookSpec(builtin="smoke", timeout=2), ctx)  # asks again until its timeout
    assert not r.ok and "→ 429 (expected 200)" in r.output


def test_hooks_stop_at_the_first_failure(fake: FakePlatform, tmp_path: Path) -> None:
    fake.handle("checker", hook_answer("Failed"))
    hooks = [HookSpec(builtin="checks"), HookSpec(function="checker"), HookSpec(http="GET /health")]
    results = run_hooks("pre_traffic", hooks, ctx_for(fake, release2(fake, tmp_path)))
    assert [(r.name, r.ok) for r in results] == [("builtin:checks", True), ("function:checker", False)]


def test_each_result_is_heard_as_it_comes_and_a_no_ends_the_phase(fake: FakePlatform, tmp_path: Path) -> None:
    """The deployer records each hook as it returns, and a deployment rolled back meanwhile stops its phase."""
    heard: list[str] = []

    def on_result(r: HookResult) -> bool:
        heard.append(r.name)
        return len(heard) < 2

    hooks = [HookSpec(builtin="checks"), HookSpec(http="GET /health"), HookSpec(builtin="smoke")]
    results = run_hooks("pre_traffic", hooks, ctx_for(fake, release2(fake, tmp_path)), on_result=on_result)
    assert [(r.name, r.ok) for r in results] == [("builtin:checks", True), ("http:GET /health", True)]
    assert heard == ["builtin:checks", "http:GET /health"]
