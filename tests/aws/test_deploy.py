"""Publish → canary weights on the live aliases → an error metric in the wrapper's shape → the real
Deployer rolls back; emergency stop and resume; verify; all against moto's Lambda, API Gateway, SQS,
DynamoDB, S3 and CloudWatch."""

from __future__ import annotations

import threading
import time
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from aws.conftest import Stack, client
from aws.emf import emf_document, put_emf
from backout.control import states as st
from backout.control.deployer import Deployer
from backout.control.notify import Notifier
from backout.control.store import Store
from backout.control.strategies import Step, Strategy
from backout.manifest import load_manifest
from backout.platforms import open_platform
from backout.runbooks import emergency
from backout.runbooks.context import RunbookContext
from backout.runbooks.verify import verify


class Plane:
    """The control plane in-process over the AWS platform: manifest, platform, store, Deployer."""

    def __init__(self, stack: Stack, **manifest: Any) -> None:
        self.stack = stack
        self.manifest = load_manifest(stack.write_manifest(**manifest))
        self.platform = open_platform(self.manifest, "staging", stack.root / "state")
        self.store = Store(stack.root / "state" / "control.db")
        self.notifier = Notifier([])
        self.deployer = Deployer(self.manifest, "staging", self.platform, self.store, self.notifier)
        self.ctx = RunbookContext(self.manifest, "staging", self.platform, self.store, self.deployer, self.notifier)

    def first_release(self) -> Any:
        """r1 published, every live alias on it (the stack's AutoPublishAlias would have made them)."""
        r1 = self.platform.publish(self.stack.root / "src", description="first")
        lam = client(self.stack.url, "lambda")
        for fn, real in self.stack.functions.items():
            lam.create_alias(FunctionName=real, Name="live", FunctionVersion=r1.version(fn))
        return r1

    def close(self) -> None:
        self.deployer.close()
        self.notifier.close()


def wait(predicate: Any, timeout: float = 60.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        got = predicate()
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def test_publish_canary_error_metric_rollback(stack: Stack) -> None:
    plane = Plane(stack)
    try:
        p, lam = plane.platform, client(stack.url, "lambda")
        r1 = plane.first_release()
        assert plane.platform.publish(stack.root / "src").id == r1.id, "same content → the same release"
        r2 = p.publish(stack.source("src2", "r2"), description="second")
        assert r2.id == r1.id + 1 and r2.versions == {stack.api: "2", stack.worker: "2"}
        assert [r.id for r in p.releases()] == [r1.id, r2.id]
        desc = lam.get_function_configuration(FunctionName=stack.functions[stack.api], Qualifier="2")["Description"]
        assert desc.startswith(f"backout r{r2.id} ") and desc.endswith("second"), desc
        # each version's configuration, as list_versions_by_function reports it, without backout's own names
        cfg = r2.configuration[stack.worker]
        assert (cfg.timeout, cfg.memory) == (30.0, 256) and not any(k.startswith("BACKOUT_") for k in cfg.environment)
        bigger = p.publish(stack.source("src2", "r2"), configuration={stack.worker: replace(cfg, memory=512)})
        assert bigger.id == r2.id + 1, "a configuration-only change is a release"
        assert (bigger.configuration[stack.worker].memory, p.releases()[1].configuration[stack.worker].memory) == (
            512, 256)

        strategy = Strategy("T", (Step(10, 60.0), Step(100, 0.0)))
        d = plane.deployer.create(release=r2.id, strategy_obj=strategy, created_by="test")
        wait(lambda: plane.store.get(d.id).current_step == 0 and lam.get_alias(
            FunctionName=stack.functions[stack.worker], Name="live").get("RoutingConfig", {}).get(
            "AdditionalVersionWeights"), what="the canary step")
        alias = lam.get_alias(FunctionName=stack.functions[stack.worker], Name="live")
        assert alias["FunctionVersion"] == "1" and alias["RoutingConfig"]["AdditionalVersionWeights"] == {"2": 0.1}

        # 10 invocations of the canary, 5 of them failing, as the wrapper reports them; stamped in a whole
        # second after the step began (CloudWatch keeps 1 s datapoints, the alarm's window starts there)
        at = max(time.time(), plane.store.get(d.id).step_started_at + 1.5)
        sent = put_emf(client(stack.url, "cloudwatch"),
                       [emf_document(stack.worker, "2", error=i % 2 == 0, ts=at) for i in range(10)])
        assert sent == 60  # 3 metrics × 2 dimension sets × 10 invocations

        d = wait(lambda: (x := plane.store.get(d.id)).status == st.ROLLED_BACK and x.rollback_completed_at and x,
                 what="the rollback")
        for real in stack.functions.values():
            a = lam.get_alias(FunctionName=real, Name="live")
            assert a["FunctionVersion"] == "1" and not a.get("RoutingConfig", {}).get("AdditionalVersionWeights")
        inc = plane.store.incident_for_deployment(d.id)
        assert inc is not None and inc.status == "open"
        evidence = " ".join(inc.evidence["alarms"])
        assert f"error-rate:{stack.worker}" in d.reason
        assert "error rate 50.0 % (5/10) > 10 %" in evidence and f"{stack.worker} v2" in evidence, evidence
    finally:
        plane.close()


def test_emergency_stop_blocks_the_stage_and_pauses_mappings_resume_restores_them(stack: Stack) -> None:
    plane = Plane(stack)
    try:
        p, lam, apig = plane.platform, client(stack.url, "lambda"), client(stack.url, "apigateway")
        plane.first_release()
        stack.map_worker()
        p.set_throttle(50, 20)
        assert p.get_processing() is True
        out = emergency.emergency_stop(plane.ctx, "bad data", "tester")
        assert all(s["ok"] for s in out["steps"]), out["steps"]
        settings = apig.get_stage(restApiId=stack.api_id, stageName="staging")["methodSettings"]["*/*"]
        assert (settings["throttlingRateLimit"], settings["throttlingBurstLimit"]) == (0.0, 0)
        assert lam.get_event_source_mapping(UUID=stack.mapping)["State"] == "Disabled"
        assert p.get_processing() is False
        assert out["snapshot"] in {b.id for b in p.backups()}
        # moto serves no REST API stage, so verify's API check fails here: resume is forced (recorded as such)
        res = emergency.resume(plane.ctx, verify(plane.ctx), force=True, who="tester")
        assert res["resumed"] is True
        settings = apig.get_stage(restApiId=stack.api_id, stageName="staging")["methodSettings"]["*/*"]
        assert (settings["throttlingRateLimit"], settings["throttlingBurstLimit"]) == (50.0, 20)
        assert lam.get_event_source_mapping(UUID=stack.mapping)["State"] == "Enabled"
        assert p.get_throttle().rate == 50.0 and p.get_processing() is True
    finally:
        plane.close()


class _Health(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        body = b'{"status": "healthy"}' if self.path.endswith("/health") else b"{}"
        self.send_response(200 if self.path.endswith("/health") else 404)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


def test_verify_against_the_emulated_resources(stack: Stack, tmp_path: Path) -> None:
    # moto gap: its server mode serves no REST API stage (execute-api), so the stage's URL is a real
    # HTTP server on 127.0.0.1 answering GET /health; everything else is moto's
    http = ThreadingHTTPServer(("127.0.0.1", 0), _Health)
    threading.Thread(target=http.serve_forever, daemon=True).start()
    try:
        plane = Plane(stack, api_url=f"http://127.0.0.1:{http.server_address[1]}/staging")
        try:
            r1 = plane.first_release()
            stack.map_worker()
            report = verify(plane.ctx)
            assert report.ok, report.summary()
            names = {c.name for c in report.checks}
            assert {"API health", f"{stack.api} v{r1.version(stack.api)}", "table jobs", "bucket files",
                    "queue processing", "queue processing-dlq", "all alarms", f"{stack.worker}:live"} <= names
            # a message left in the DLQ and a dropped table fail verify, each by its name
            plane.platform.send_message("processing-dlq", '{"job_id": "j1"}')
            client(stack.url, "dynamodb").delete_table(TableName=stack.table)
            bad = verify(plane.ctx)
            assert [c.name for c in bad.failures] == ["table jobs", "queue processing-dlq"], bad.summary()
            assert "1 visible" in bad.failures[1].detail
        finally:
            plane.close()
    finally:
        http.shutdown()


def test_dlq_redrive_falls_back_to_receive_send_delete(stack: Stack) -> None:
    plane = Plane(stack)
    try:
        p = plane.platform
        for i in range(3):
            p.send_message("processing-dlq", f"m{i}")
        attrs = p.queue_attributes("processing")
        assert (attrs.dead_letter_queue, attrs.max_receive_count) == ("processing-dlq", 3)
        # moto has no start_message_move_task: the fallback moves the messages itself
        task = p.start_redrive("processing-dlq")
        assert (task.status, task.moved, task.destination) == ("COMPLETED", 3, "processing")
        assert p.queue_attributes("processing").visible == 3 and p.queue_attributes("processing-dlq").visible == 0
        assert [t.id for t in p.redrive_status("processing-dlq")] == [task.id]
    finally:
        plane.close()


def test_peek_delete_tagged_and_purge(stack: Stack) -> None:
    """`queue peek` leaves the messages in the queue; a drill's tagged messages go and the service's stay;
    purge empties the queue. On the DLQ: every peek counts a receive, as on SQS, so on a queue with a
    redrive policy a few peeks would move the messages on (moto does that too)."""
    plane = Plane(stack)
    try:
        p, q = plane.platform, "processing-dlq"
        ours = [p.send_message(q, f"job{i}") for i in range(3)]
        drill = [p.send_message(q, f"drill{i}", {"backout-drill": "d1"}) for i in range(2)]
        peeked = p.peek_messages(q, limit=10)
        assert sorted(m.id for m in peeked) == sorted(ours + drill)
        assert {m.body: m.attributes for m in peeked}["drill0"] == {"backout-drill": "d1"}
        assert p.queue_attributes(q).visible == 5  # peeking consumed nothing
        assert p.delete_tagged(q, "backout-drill", "d1") == 2
        assert sorted(m.body for m in p.peek_messages(q)) == ["job0", "job1", "job2"]
        assert p.purge_queue(q) == 3
        assert p.queue_attributes(q).visible == 0
    finally:
        plane.close()


@pytest.mark.parametrize("n", [3])
def test_rollback_updates_every_alias_in_parallel(stack: Stack, n: int) -> None:
    """`Traffic.route` hands every alias to the platform at once (`set_weights_many`)."""
    plane = Plane(stack)
    try:
        r1 = plane.first_release()
        r2 = plane.platform.publish(stack.source("src2", "r2"))
        plane.deployer.traffic.route(dict(r1.versions), dict(r2.versions), 25)
        assert {fn: plane.platform.get_weights(fn).versions for fn in plane.platform.functions()} == {
            fn: {"1": 75.0, "2": 25.0} for fn in stack.functions}
        plane.deployer.traffic.route(dict(r1.versions), dict(r2.versions), 0)
        live = plane.deployer.traffic.live_release()
        assert live is not None and live.id == r1.id
    finally:
        plane.close()
