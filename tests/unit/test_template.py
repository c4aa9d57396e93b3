"""infrastructure/template.yaml (SAM) for the SDA: cfn-lint clean offline, and in agreement with
backout.toml (functions, routes, queues, timeouts), with the handler wrapper's and the SDA's
environment, with least privilege and with the outputs contract that `stack = "NAME"` reads."""

from __future__ import annotations

import re
import socket
from functools import cache
from pathlib import Path
from typing import Any

import pytest

from backout.manifest import Manifest, load_manifest

REPO = Path(__file__).resolve().parents[2]
TEMPLATE = REPO / "infrastructure" / "template.yaml"
SQS_VISIBILITY_FACTOR = 6  # Lambda's advice for queues behind an event source mapping


def camel(name: str) -> str:
    """The outputs contract's CamelName: `dlq_processor` → `DlqProcessor`, `processing-dlq` → `ProcessingDlq`."""
    return "".join(part.capitalize() for part in re.split(r"[_-]", name) if part)


@cache
def template() -> dict[str, Any]:
    from cfnlint.decode import cfn_yaml  # intrinsic functions (!Ref, !GetAtt, !Sub) as CloudFormation's JSON

    return cfn_yaml.load(str(TEMPLATE))


@cache
def manifest() -> Manifest:
    return load_manifest(REPO / "backout.toml")


def resources(kind: str) -> dict[str, dict[str, Any]]:
    return {k: v for k, v in template()["Resources"].items() if v["Type"] == kind}


def function(name: str) -> dict[str, Any]:
    """The backout function's properties, SAM's Globals merged in as the transform does."""
    props = template()["Resources"][f"{camel(name)}Function"]["Properties"]
    globals_ = template()["Globals"]["Function"]
    merged = {**globals_, **props}
    own = props.get("Environment", {}).get("Variables", {})
    merged["Environment"] = {"Variables": {**globals_["Environment"]["Variables"], **own}}
    return merged


def env(name: str) -> dict[str, Any]:
    return function(name)["Environment"]["Variables"]


def test_cfn_lint_is_clean_offline(monkeypatch: pytest.MonkeyPatch) -> None:
    from cfnlint.api import ManualArgs, lint_file

    def no_network(self: socket.socket, address: Any) -> None:
        raise AssertionError(f"cfn-lint tried to reach {address}: it must run offline")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    matches = lint_file(TEMPLATE, config=ManualArgs(regions=["us-east-1"]))
    assert [str(m) for m in matches] == []


def test_every_manifest_function_is_a_function_of_the_template() -> None:
    m = manifest()
    by_backout_name = {p["Properties"]["Environment"]["Variables"]["BACKOUT_FUNCTION"]: logical
                       for logical, p in resources("AWS::Serverless::Function").items() if logical != GUARD}
    assert by_backout_name == {fn: f"{camel(fn)}Function" for fn in m.functions}
    for fn, spec in m.functions.items():
        props = function(fn)
        assert props["Handler"] == spec.handler, fn
        assert props["Timeout"] == spec.timeout, fn
        assert props["MemorySize"] == spec.memory, fn
        assert props["ReservedConcurrentExecutions"] == spec.reserved_concurrency, fn
        assert props["AutoPublishAlias"] == "live", fn  # backout moves the live alias
        assert props["Role"] == {"Fn::GetAtt": [f"{camel(fn)}Role", "Arn"]}, fn  # its own role, nothing SAM adds
        assert "Policies" not in props and "DeploymentPreference" not in props, fn
        name = props["FunctionName"]["Fn::Sub"]
        log_group = template()["Resources"][props["LoggingConfig"]["LogGroup"]["Ref"]]
        assert log_group["Properties"]["LogGroupName"] == {"Fn::Sub": f"/aws/lambda/{name}"}


GUARD = "GuardFunction"  # backout's own function in the stack, not one of the service's


def test_the_guard_and_the_shared_state_table() -> None:
    """The guard runs every minute on the state table backout's shared store and the guard itself share;
    it can move the service's aliases and nothing else."""
    from backout_lambda import state_table

    guard = template()["Resources"][GUARD]["Properties"]
    assert guard["Handler"] == "backout_lambda.guard.handler"
    assert [e["Properties"]["Schedule"] for e in guard["Events"].values() if e["Type"] == "Schedule"] == [
        "rate(1 minute)"]
    assert guard["Environment"]["Variables"]["BACKOUT_STATE_TABLE"] == {"Ref": "StateTable"}
    table = template()["Resources"]["StateTable"]["Properties"]
    assert {k: table[k] for k in state_table.SCHEMA} == state_table.SCHEMA  # what backout and the guard read
    assert table["PointInTimeRecoverySpecification"] == {"PointInTimeRecoveryEnabled": True}
    statements = template()["Resources"]["GuardRole"]["Properties"]["Policies"][0]["PolicyDocument"]["Statement"]
    aliases = next(s for s in statements if isinstance(s, dict) and s.get("Sid") == "Aliases")
    assert aliases["Resource"] == [{"Fn::GetAtt": [f"{camel(fn)}Function", "Arn"]} for fn in manifest().functions]


def test_every_route_of_the_manifest_and_no_other() -> None:
    m = manifest()
    wanted = {(fn, e.method.upper(), e.path) for fn, spec in m.functions.items() for e in spec.http_events}
    found = set()
    for fn in m.functions:
        for event in function(fn).get("Events", {}).values():
            if event["Type"] == "Api":
                assert event["Properties"]["RestApiId"] == {"Ref": "Api"}
                found.add((fn, event["Properties"]["Method"].upper(), event["Properties"]["Path"]))
    assert found == wanted
    assert ("api", "GET", "/health") in found
    api = template()["Resources"]["Api"]["Properties"]
    assert "multipart~1form-data" in api["BinaryMediaTypes"]  # the upload reaches the function intact
    assert api["StageName"] == {"Ref": "Stage"}
    assert api["Name"] == m.service.name  # AWS/ApiGateway's {ApiName, Stage} = the wrapper's {ApiName, Stage}
    # the stage's default throttling exists, so the emergency stop's `/*/*/throttling/*` patch has a target
    assert {"ResourcePath": "/*", "HttpMethod": "*"}.items() <= api["MethodSettings"][0].items()


def test_every_queue_its_dlq_its_consumers_and_visibility() -> None:
    m = manifest()
    queues = resources("AWS::SQS::Queue")
    assert set(queues) == {f"{camel(q)}Queue" for q in m.queues}
    consumers: dict[str, list[float]] = {q: [] for q in m.queues}
    for fn, spec in m.functions.items():
        sqs_events = [e["Properties"] for e in function(fn).get("Events", {}).values() if e["Type"] == "SQS"]
        assert [e["Queue"] for e in sqs_events] == [
            {"Fn::GetAtt": [f"{camel(e.queue)}Queue", "Arn"]} for e in spec.queue_events
        ], fn
        for event, props in zip(spec.queue_events, sqs_events, strict=True):
            assert props["BatchSize"] == event.batch_size, fn
            assert props["FunctionResponseTypes"] == ["ReportBatchItemFailures"], fn
            consumers[event.queue].append(spec.timeout)
    for name, spec in m.queues.items():
        props = queues[f"{camel(name)}Queue"]["Properties"]
        assert props["MessageRetentionPeriod"] == spec.retention, name
        visibility = props["VisibilityTimeout"]
        assert visibility >= spec.visibility_timeout, name
        assert all(visibility >= SQS_VISIBILITY_FACTOR * t for t in consumers[name]), (name, consumers[name])
        if spec.dead_letter_queue:
            assert props["RedrivePolicy"] == {
                "deadLetterTargetArn": {"Fn::GetAtt": [f"{camel(spec.dead_letter_queue)}Queue", "Arn"]},
                "maxReceiveCount": spec.max_receive_count,
            }
        else:
            assert "RedrivePolicy" not in props
    worker = queues["ProcessingQueue"]["Properties"]
    assert (worker["RedrivePolicy"]["maxReceiveCount"], worker["VisibilityTimeout"]) == (3, 720)


def test_the_handler_wrappers_environment() -> None:
    m = manifest()
    for fn, spec in m.functions.items():
        variables = env(fn)
        assert variables["BACKOUT_SERVICE"] == m.service.name
        assert variables["BACKOUT_ENV"] == {"Ref": "Stage"}
        assert variables["BACKOUT_FUNCTION"] == fn
        dlqs = {(m.queues[e.queue].dead_letter_queue, m.queues[e.queue].max_receive_count) for e in spec.queue_events
                if m.queues[e.queue].dead_letter_queue}
        if dlqs:
            ((dlq, count),) = dlqs
            assert variables["BACKOUT_MAX_RECEIVE_COUNT"] == str(count), fn
            assert variables["BACKOUT_DLQ_NAME"] == dlq, fn  # backout's name, as its DeadLetterArrivals query
        else:
            assert "BACKOUT_DLQ_NAME" not in variables and "BACKOUT_MAX_RECEIVE_COUNT" not in variables, fn
    assert env("worker")["BACKOUT_MAX_RECEIVE_COUNT"] == "3"


# The functions whose code enqueues jobs (sda/api.py submits, sda/repair.py re-enqueues): locally the
# platform gives every function every queue's URL; the template gives it only to these (least privilege).
SENDERS = {"api", "repair"}


def test_the_sdas_environment_uses_the_names_its_config_reads() -> None:
    config_source = (REPO / "src" / "sda" / "config.py").read_text()
    read = set(re.findall(r'env\.get\("([A-Z0-9_]+)"', config_source))
    own = {"BACKOUT_SERVICE", "BACKOUT_ENV", "BACKOUT_FUNCTION", "BACKOUT_MAX_RECEIVE_COUNT", "BACKOUT_DLQ_NAME"}
    for fn, spec in manifest().functions.items():
        variables = env(fn)
        sda_names = {k for k in variables if not k.startswith("POWERTOOLS_")} - own
        assert sda_names <= read, f"{fn}: {sorted(sda_names - read)} are not read by sda/config.py"
        assert variables["STORAGE_MODE"] == "aws"
        assert variables["SDA_JOBS_TABLE"] == {"Ref": "JobsTable"}
        assert variables["SDA_FILES_BUCKET"] == {"Ref": "FilesBucket"}
        sends = fn in SENDERS
        assert (variables.get("PROCESSING_QUEUE_URL") == {"Ref": "ProcessingQueue"}) == sends, fn
        assert variables["POWERTOOLS_SERVICE_NAME"] == spec.environment["POWERTOOLS_SERVICE_NAME"], fn


def test_the_jobs_table_and_the_files_bucket() -> None:
    from sda.storage.aws import INDEXES, PK

    table = template()["Resources"]["JobsTable"]["Properties"]
    assert table["PointInTimeRecoverySpecification"] == {"PointInTimeRecoveryEnabled": True}
    assert table["KeySchema"] == [{"AttributeName": PK, "KeyType": "HASH"}]
    assert {g["IndexName"]: [k["AttributeName"] for k in g["KeySchema"]] for g in table["GlobalSecondaryIndexes"]} == {
        name: [attr, "created_at"] for name, attr in INDEXES.items()
    }
    bucket = template()["Resources"]["FilesBucket"]["Properties"]
    assert bucket["VersioningConfiguration"] == {"Status": "Enabled"}
    assert all(bucket["PublicAccessBlockConfiguration"].values())


def test_least_privilege() -> None:
    roles = resources("AWS::IAM::Role")
    assert set(roles) == {f"{camel(fn)}Role" for fn in manifest().functions} | {"GuardRole"}
    for logical, role in roles.items():
        for policy in role["Properties"]["Policies"]:
            for statement in policy["PolicyDocument"]["Statement"]:
                if "Fn::If" in statement:  # an optional statement (the guard's SNS topic): check its "then"
                    statement = statement["Fn::If"][1]
                assert statement["Effect"] == "Allow"
                actions = statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]]
                assert all(":" in a and "*" not in a for a in actions), (logical, actions)
                targets = statement["Resource"] if isinstance(statement["Resource"], list) else [statement["Resource"]]
                assert "*" not in targets and all(t != {"Fn::Sub": "*"} for t in targets), (logical, statement)
    # only the functions that enqueue may send; only the consumers may receive
    def grants(fn: str, action: str) -> bool:
        statements = roles[f"{camel(fn)}Role"]["Properties"]["Policies"][0]["PolicyDocument"]["Statement"]
        return any(action in (s["Action"] if isinstance(s["Action"], list) else [s["Action"]]) for s in statements)

    assert [fn for fn in manifest().functions if grants(fn, "sqs:SendMessage")] == ["api", "repair"]
    assert [fn for fn in manifest().functions if grants(fn, "sqs:ReceiveMessage")] == ["worker", "dlq_processor"]


def test_the_outputs_contract() -> None:
    m = manifest()
    wanted = {
        "BackoutApiId": {"Ref": "Api"},
        "BackoutApiStage": {"Ref": "Stage"},
        "BackoutApiUrl": {"Fn::Sub": "https://${Api}.execute-api.${AWS::Region}.${AWS::URLSuffix}/${Stage}"},
        "BackoutTableJobs": {"Ref": "JobsTable"},
        "BackoutBucketFiles": {"Ref": "FilesBucket"},
        "BackoutEnvironment": {"Ref": "Stage"},
        "BackoutStateTable": {"Ref": "StateTable"},
        **{f"BackoutFunction{camel(fn)}": {"Ref": f"{camel(fn)}Function"} for fn in m.functions},
        **{f"BackoutQueue{camel(q)}": {"Ref": f"{camel(q)}Queue"} for q in m.queues},  # Ref of a queue: its URL
    }
    assert {k: v["Value"] for k, v in template()["Outputs"].items()} == wanted
    assert {"BackoutFunctionDlqProcessor", "BackoutQueueProcessingDlq"} <= set(wanted)
    assert template()["Parameters"]["Stage"]["Type"] == "String"
