"""Publish → canary weights on every live alias → an error metric in the wrapper's shape → the real
Deployer rolls back → the jobs the bad release wrote are repaired from a side table; emergency stop
and resume; verify; DLQ redrive — all against moto's Lambda, API Gateway, SQS, DynamoDB, S3 and
CloudWatch. Each test builds one stack and walks through the steps that share it."""

from __future__ import annotations

import json
import threading
import time
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from aws.conftest import EndpointSession, Stack, client
from aws.emf import emf_document, put_emf
from backout.control import states as st
from backout.control.deployer import Deployer
from backout.control.notify import Notifier
from backout.control.store import Store
from backout.control.strategies import Step, Strategy
from backout.errors import UsageError
from backout.manifest import load_manifest
from backout.platforms import open_platform
from backout.platforms.base import InvokeResult
from backout.runbooks import emergency
from backout.runbooks.backups import service_diff
from backout.runbooks.context import RunbookContext
from backout.runbooks.repair import repair
from backout.runbooks.verify import verify
from sda.jobs import iso, new_job, new_job_id
from sda.storage.aws import AwsStorage


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


# --- the SDA's jobs, written as its worker writes them -----------------------------------------------------------
def submit(storage: Any, client_name: str) -> dict[str, Any]:
    job = new_job(new_job_id(), client_name, "Site plan")
    storage.create_job(job)
    return job


def process(storage: Any, job: dict[str, Any], worker: str, version: str, schedule: bytes) -> dict[str, Any]:
    """What the worker's `version` leaves behind: the job completed by it, and its schedule file."""
    storage.put_file(job, "schedule.xlsx", schedule)
    storage.put_file(job, "checkpoints/analysis.json", b'{"doors": %d}' % len(schedule))
    return storage.update_job(job["job_id"], {
        "status": "completed", "summary": {"doors": len(schedule)}, "output_files": {"excel": "schedule.xlsx"},
        "processed_by": {"version": version, "function": worker, "at": iso()}})


def repair_function_in_process(plane: Plane, monkeypatch: pytest.MonkeyPatch) -> None:
    """moto runs no function code (that needs Docker), so an invocation of the repair function runs
    the SDA's handler here, at the version its live alias serves, with the environment its Lambda
    function has on AWS; every table, bucket and queue it reaches is moto's. Every other function
    is invoked through moto as before."""
    from sda import repair as sda_repair
    from sda.events import LambdaContext

    stack, platform = plane.stack, plane.platform
    monkeypatch.setenv("AWS_ENDPOINT_URL", stack.url)  # what boto3 inside the handler reads
    monkeypatch.setenv("STORAGE_MODE", "aws")
    monkeypatch.setenv("SDA_JOBS_TABLE", stack.table)
    monkeypatch.setenv("SDA_FILES_BUCKET", stack.bucket)
    monkeypatch.setenv("PROCESSING_QUEUE_URL", stack.queues["processing"])
    monkeypatch.setenv("BACKOUT_FUNCTION", stack.repair)
    moto_invoke = platform.invoke

    def invoke(fn: str, version: str | None, event: dict[str, Any]) -> InvokeResult:
        if fn != stack.repair:
            return moto_invoke(fn, version, event)
        version = version or platform.get_weights(fn).stable
        monkeypatch.setenv("AWS_LAMBDA_FUNCTION_VERSION", version)
        context = LambdaContext(function_name=stack.functions[fn], function_version=version, timeout_s=900)
        try:  # through JSON both ways, as Lambda's payloads are
            payload = json.loads(json.dumps(sda_repair.handler(json.loads(json.dumps(event)), context)))
        except Exception as e:  # noqa: BLE001 - Lambda's shape of an unhandled error
            return InvokeResult(fn, version, "", {"errorType": type(e).__name__, "errorMessage": str(e)}, "Unhandled")
        return InvokeResult(fn, version, context.aws_request_id, payload)

    monkeypatch.setattr(platform, "invoke", invoke)


def test_canary_rolled_back_by_its_error_metric_and_its_jobs_repaired_from_a_side_table(
        moto_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    stack = Stack(moto_url, tmp_path).create(repair=True)
    plane = Plane(stack)
    try:
        p, lam, storage = plane.platform, client(stack.url, "lambda"), stack.storage
        r1 = plane.first_release()
        assert plane.platform.publish(stack.root / "src").id == r1.id, "same content → the same release"
        r2 = p.publish(stack.source("src2", "r2"), description="second")
        assert r2.id == r1.id + 1 and r2.versions == {fn: "2" for fn in stack.functions}
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

        # before the deployment: a job the stable worker completed, and one still queued
        done = process(storage, submit(storage, "St Mary's"), stack.worker, "1", b"schedule by v1")
        queued = submit(storage, "Acme")

        strategy = Strategy("T", (Step(10, 60.0), Step(100, 0.0)))
        d = plane.deployer.create(release=r2.id, strategy_obj=strategy, created_by="test")
        # every live alias moves (Traffic.route → the platform's parallel update_alias)
        canary = {fn: {"1": 90.0, "2": 10.0} for fn in stack.functions}
        wait(lambda: plane.store.get(d.id).current_step == 0 and {
            fn: p.get_weights(fn).versions for fn in p.functions()} == canary, what="the canary step")
        alias = lam.get_alias(FunctionName=stack.functions[stack.worker], Name="live")
        assert alias["FunctionVersion"] == "1" and alias["RoutingConfig"]["AdditionalVersionWeights"] == {"2": 0.1}

        # the canary's share of the work: the bad worker v2 redoes the completed job, finishes the queued
        # one and a new one; the stable v1 finishes another new one
        redone = process(storage, done, stack.worker, "2", b"bad")
        late_bad = process(storage, queued, stack.worker, "2", b"bad too")
        new_bad = process(storage, submit(storage, "Beta"), stack.worker, "2", b"bad three")
        new_good = process(storage, submit(storage, "Gamma"), stack.worker, "1", b"schedule by v1 after")

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
        live = plane.deployer.traffic.live_release()
        assert live is not None and live.id == r1.id
        inc = plane.store.incident_for_deployment(d.id)
        assert inc is not None and inc.status == "open"
        evidence = " ".join(inc.evidence["alarms"])
        assert f"error-rate:{stack.worker}" in d.reason
        assert "error rate 50.0 % (5/10) > 10 %" in evidence and f"{stack.worker} v2" in evidence, evidence

        # --- repair: the Deployer's backup from before the canary, restored beside the live table -----------
        repair_function_in_process(plane, monkeypatch)
        snapshot = plane.store.snapshots("staging", deployment_id=d.id)[0].platform_snapshot_id
        diff = service_diff(plane.manifest, p, snapshot)
        assert diff == {"only_current": 2, "only_snapshot": 0, "changed": 2, "jobs_now": 4, "jobs_in_snapshot": 2}
        bad_ids = sorted(j["job_id"] for j in (redone, late_bad, new_bad))
        dry = repair(plane.ctx, d.id, dry_run=True, who="tester")
        assert (dry["bad_release"], dry["snapshot"], dry["jobs"]) == (r2.id, snapshot, bad_ids)

        out = repair(plane.ctx, d.id, dry_run=False, who="tester")
        assert out["restored"] == [done["job_id"]] and out["missing"] == []
        assert out["reset"] == out["requeued"] == sorted([queued["job_id"], new_bad["job_id"]])
        # the completed job is back as the backup holds it, with its file as it was before the canary
        assert storage.get_job(done["job_id"]) == done
        assert storage.get_file(done, "schedule.xlsx") == b"schedule by v1"
        assert storage.get_file(done, "checkpoints/analysis.json") == b'{"doors": 14}'
        # the others are queued again (from the backup's record if it has one), the repair in their history,
        # and their messages are on the processing queue
        for job, was in ((late_bad, ("queued", None)), (new_bad, ("completed", "2"))):
            now = storage.get_job(job["job_id"])
            assert (now["status"], now["processed_by"], now["summary"]) == ("queued", None, None)
            last = now["repairs"][-1]
            assert (last["previous_status"], (last["previous_processed_by"] or {}).get("version")) == was
        msgs = client(stack.url, "sqs").receive_message(QueueUrl=stack.queues["processing"], MaxNumberOfMessages=10)
        assert sorted(json.loads(m["Body"])["job_id"] for m in msgs["Messages"]) == out["requeued"]
        # what only the stable version did is untouched; the live table is still the live table
        assert storage.get_job(new_good["job_id"]) == new_good
        assert storage.get_file(new_good, "schedule.xlsx") == b"schedule by v1 after"
        side = json.loads(p.restore_to_side(snapshot))["tables"]["jobs"]
        assert side == f"{stack.table}-side-{snapshot}" and p.resources().tables == {"jobs": stack.table}
        assert AwsStorage(side, stack.bucket, EndpointSession(stack.url)).get_job(done["job_id"]) == done
        assert repair(plane.ctx, d.id, dry_run=True, who="tester")["jobs"] == []  # nothing left to repair
        notes = plane.store.get_incident(inc.id).notes
        assert any(f"repaired 3 job(s) processed by r{r2.id}" in n["text"] for n in notes), notes
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


def test_verify_emergency_stop_and_resume_and_dlq_redrive(stack: Stack) -> None:
    # moto gap: its server mode serves no REST API stage (execute-api), so the stage's URL is a real
    # HTTP server on 127.0.0.1 answering GET /health; everything else is moto's
    http = ThreadingHTTPServer(("127.0.0.1", 0), _Health)
    threading.Thread(target=http.serve_forever, daemon=True).start()
    plane = Plane(stack, api_url=f"http://127.0.0.1:{http.server_address[1]}/staging")
    try:
        p, lam, apig = plane.platform, client(stack.url, "lambda"), client(stack.url, "apigateway")
        r1 = plane.first_release()
        stack.map_worker()
        report = verify(plane.ctx)
        assert report.ok, report.summary()
        assert {"API health", f"{stack.api} v{r1.version(stack.api)}", "table jobs", "bucket files",
                "queue processing", "queue processing-dlq", "all alarms", f"{stack.worker}:live"} <= {
            c.name for c in report.checks}

        # emergency stop: the stage throttled to 0, the worker's mapping disabled, a backup taken
        p.set_throttle(50, 20)
        assert p.get_processing() is True
        out = emergency.emergency_stop(plane.ctx, "bad data", "tester")
        assert all(s["ok"] for s in out["steps"]), out["steps"]
        settings = apig.get_stage(restApiId=stack.api_id, stageName="staging")["methodSettings"]["*/*"]
        assert (settings["throttlingRateLimit"], settings["throttlingBurstLimit"]) == (0.0, 0)
        assert lam.get_event_source_mapping(UUID=stack.mapping)["State"] == "Disabled"
        assert p.get_processing() is False
        assert out["snapshot"] in {b.id for b in p.backups()}
        # with the stage blocked verify asks the API function itself for /health, and moto's stub answers
        # with the event, not a health response: resume is forced (recorded as such)
        res = emergency.resume(plane.ctx, verify(plane.ctx), force=True, who="tester")
        assert res["resumed"] is True
        settings = apig.get_stage(restApiId=stack.api_id, stageName="staging")["methodSettings"]["*/*"]
        assert (settings["throttlingRateLimit"], settings["throttlingBurstLimit"]) == (50.0, 20)
        assert lam.get_event_source_mapping(UUID=stack.mapping)["State"] == "Enabled"
        assert p.get_throttle().rate == 50.0 and p.get_processing() is True

        # messages left in the DLQ and a dropped table fail verify, each by its name
        for i in range(3):
            p.send_message("processing-dlq", json.dumps({"job_id": f"j{i}"}))
        client(stack.url, "dynamodb").delete_table(TableName=stack.table)
        bad = verify(plane.ctx)
        assert [c.name for c in bad.failures] == ["table jobs", "queue processing-dlq"], bad.summary()
        assert "3 visible" in bad.failures[1].detail

        # redrive, processing paused (else the mapping's poller takes them at once): moto has no
        # start_message_move_task, so the fallback moves the messages itself
        p.set_processing(False)
        attrs = p.queue_attributes("processing")
        assert (attrs.dead_letter_queue, attrs.max_receive_count) == ("processing-dlq", 3)
        task = p.start_redrive("processing-dlq")
        assert (task.status, task.moved, task.destination) == ("COMPLETED", 3, "processing")
        assert p.queue_attributes("processing").visible == 3 and p.queue_attributes("processing-dlq").visible == 0
        assert [t.id for t in p.redrive_status("processing-dlq")] == [task.id]
    finally:
        plane.close()
        http.shutdown()


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


def test_backups_beyond_backups_keep_are_deleted_from_dynamodb(stack: Stack) -> None:
    plane = Plane(stack, extra_env="backups_keep = 2")
    try:
        p, ddb = plane.platform, client(stack.url, "dynamodb")
        taken = [p.backup(f"b{i}") for i in range(3)]
        assert [b.id for b in p.backups()] == [b.id for b in taken[1:]]
        gone = taken[0].detail["tables"]["jobs"]
        assert gone not in {s["BackupArn"] for s in ddb.list_backups(TableName=stack.table)["BackupSummaries"]}
        with pytest.raises(UsageError, match="no backup"):
            p.restore_to_side(taken[0].id)
    finally:
        plane.close()
