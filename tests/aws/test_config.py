"""`backout stack status|cancel` against a CloudFormation stack on moto, resources read from its
outputs, and every configuration error of an aws environment as one line and exit code 2."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from aws.conftest import REGION, Stack, client
from backout.manifest import load_manifest
from backout.platforms import open_platform


def cli(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, manifest: Path,
        *args: str) -> tuple[int, str, str]:
    """`backout --manifest M ARGS…` in this process through the console entry point (its exit codes)."""
    from backout.cli import main

    monkeypatch.setattr(sys, "argv", ["backout", "--manifest", str(manifest), *args])
    try:
        main.run()
        code = 0
    except SystemExit as e:
        code = int(e.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


TEMPLATE = {
    "Resources": {
        "Processing": {"Type": "AWS::SQS::Queue", "Properties": {"QueueName": "{tag}-processing"}},
        "Dlq": {"Type": "AWS::SQS::Queue", "Properties": {"QueueName": "{tag}-processing-dlq"}},
        "Jobs": {"Type": "AWS::DynamoDB::Table", "Properties": {
            "TableName": "{tag}-jobs", "BillingMode": "PAY_PER_REQUEST",
            "KeySchema": [{"AttributeName": "job_id", "KeyType": "HASH"}],
            "AttributeDefinitions": [{"AttributeName": "job_id", "AttributeType": "S"}]}},
        "Files": {"Type": "AWS::S3::Bucket", "Properties": {"BucketName": "{tag}-files"}},
    },
    "Outputs": {
        "BackoutQueueProcessing": {"Value": {"Ref": "Processing"}},
        "BackoutQueueProcessingDlq": {"Value": {"Ref": "Dlq"}},
        "BackoutTableJobs": {"Value": {"Ref": "Jobs"}},
        "BackoutBucketFiles": {"Value": {"Ref": "Files"}},
        "BackoutEnvironment": {"Value": "prod"},
    },
}


def stack_manifest(stack: Stack, name: str, with_functions: bool) -> Path:
    """The stack `name` from plain resources (queues, table, bucket), plus the function and API outputs
    pointing at the test's Lambda functions and REST API when `with_functions`."""
    tpl = json.loads(json.dumps(TEMPLATE).replace("{tag}", stack.tag))
    if with_functions:
        for fn, real in stack.functions.items():
            tpl["Outputs"][f"BackoutFunction{fn.split('_')[0].capitalize()}{stack.tag.capitalize()}"] = {"Value": real}
        tpl["Outputs"]["BackoutApiId"] = {"Value": stack.api_id}
        tpl["Outputs"]["BackoutApiStage"] = {"Value": "staging"}
    client(stack.url, "cloudformation").create_stack(StackName=name, TemplateBody=json.dumps(tpl))
    text = stack.manifest_text(env="prod")
    head, _, _ = text.partition("[environments.prod.aws]")
    path = stack.root / "backout.toml"
    stack.source("src", "r1")
    path.write_text(head + f'[environments.prod.aws]\nregion = "{REGION}"\nendpoint_url = "{stack.url}"\n'
                    f'stack = "{name}"\n')
    return path


def test_stack_status_and_resources_from_its_outputs(stack: Stack, capsys: pytest.CaptureFixture[str],
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    path = stack_manifest(stack, f"sda-{stack.tag}", with_functions=True)
    code, out, err = cli(capsys, monkeypatch, path, "stack", "status", "--env", "prod", "--json")
    assert code == 0, err
    s = json.loads(out)
    assert s["status"] == "CREATE_COMPLETE" and s["name"] == f"sda-{stack.tag}"
    assert s["outputs"]["BackoutTableJobs"] == f"{stack.tag}-jobs" and s["last_updated"] > 0

    platform = open_platform(load_manifest(path), "prod", stack.root / "state")
    r = platform.resources()  # type: ignore[attr-defined]
    assert r.functions == stack.functions and r.tables == {"jobs": f"{stack.tag}-jobs"}
    assert r.buckets == {"files": f"{stack.tag}-files"} and r.environment == "prod"
    assert r.queues["processing-dlq"].endswith(f"/{stack.tag}-processing-dlq")
    assert platform.queue_attributes("processing").visible == 0

    code, out, err = cli(capsys, monkeypatch, path, "stack", "cancel", "--env", "prod")
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "CREATE_COMPLETE: cancel applies only while an update is in progress" in err


def _explicit(stack: Stack) -> str:
    return stack.manifest_text()


@pytest.mark.parametrize("edit,args,message", [
    (lambda t, s: t.replace('region = "us-east-1"\n', ""), ["stack", "status"], "aws.region: Field required"),
    (lambda t, s: t.replace("[environments.staging.aws]", '[environments.staging.aws]\nstack = "x"'),
     ["stack", "status"], "give either stack or explicit names"),
    (lambda t, s: t.replace('platform = "aws"', 'platform = "local"'), ["stack", "status"],
     'an "aws" table needs platform'),
    (lambda t, s: t, ["stack", "status"], "names its resources explicitly: there is no stack"),
    (lambda t, s: t.replace(f'{s.worker} = "', 'nope = "'), ["up"], "functions: no function named 'nope'"),
    (lambda t, s: t.replace(s.functions[s.api], "no-such-function"), ["up"], "no-such-function"),
    (lambda t, s: t.replace('queues = {', 'queues = { "processing" = "no-such-queue", "x" = "y", ')
     .replace('"processing" = "http', '"ignored" = "http'), ["up"], "queues"),
    (lambda t, s: t + 'alarms = ["no-such-alarm"]\n', ["up"], "no CloudWatch alarm named no-such-alarm"),
    (lambda t, s: t.replace('region = "us-east-1"', 'region = "us-east-1"\nstack = "missing"')
     .split("functions = {")[0], ["up"], "CloudFormation stack 'missing'"),
])
def test_every_configuration_error_is_one_line_and_exit_2(names: Stack, capsys: pytest.CaptureFixture[str],
                                                        monkeypatch: pytest.MonkeyPatch, edit, args, message) -> None:
    stack = names
    stack.source("src", "r1")
    path = stack.root / "backout.toml"
    path.write_text(edit(_explicit(stack), stack))
    code, out, err = cli(capsys, monkeypatch, path, *args, "--env", "staging")
    assert code == 2, (out, err)
    assert len(err.strip().splitlines()) == 1 and message in err, err
