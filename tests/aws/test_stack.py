"""`backout stack status|cancel` against a CloudFormation stack on moto, and an environment's
resources read from the stack's outputs.

The stack is one plain resource (a queue) whose outputs also name resources created directly: what
backout reads is `describe_stacks`, not how the resources came to be. (moto's CloudFormation costs
seconds to load however small the template; the server loads it ahead, see conftest.)"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from aws.conftest import REGION, Stack, cli, client, zip_of
from backout.manifest import load_manifest
from backout.platforms import open_platform


def test_stack_status_and_resources_from_its_outputs(moto_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    stack = Stack(moto_url, tmp_path)
    role = client(moto_url, "iam").create_role(RoleName=f"role-{stack.tag}", AssumeRolePolicyDocument="{}")
    lam = client(moto_url, "lambda")
    for fn in (stack.api, stack.worker):  # created directly; the stack's outputs name them
        stack.functions[fn] = f"sda-{fn.replace('_', '-')}"
        lam.create_function(FunctionName=stack.functions[fn], Runtime="python3.11", Role=role["Role"]["Arn"],
                            Handler="handler.handler", Code={"ZipFile": zip_of("def handler(e, c):\n    return e\n")})
    processing = client(moto_url, "sqs").create_queue(QueueName=f"{stack.tag}-processing")["QueueUrl"]
    api_id = client(moto_url, "apigateway").create_rest_api(name=f"sda-{stack.tag}")["id"]
    template = {
        "Resources": {"Dlq": {"Type": "AWS::SQS::Queue", "Properties": {"QueueName": f"{stack.tag}-processing-dlq"}}},
        "Outputs": {
            "BackoutQueueProcessing": {"Value": processing},
            "BackoutQueueProcessingDlq": {"Value": {"Ref": "Dlq"}},
            "BackoutTableJobs": {"Value": f"{stack.tag}-jobs"},
            "BackoutBucketFiles": {"Value": f"{stack.tag}-files"},
            "BackoutEnvironment": {"Value": "prod"},
            "BackoutApiId": {"Value": api_id},
            "BackoutApiStage": {"Value": "prod"},
            **{f"BackoutFunction{fn.split('_')[0].capitalize()}{stack.tag.capitalize()}": {"Value": real}
               for fn, real in stack.functions.items()},
        },
    }
    name = f"sda-{stack.tag}"
    client(moto_url, "cloudformation").create_stack(StackName=name, TemplateBody=json.dumps(template))
    head = stack.manifest_text(env="prod").partition("[environments.prod.aws]")[0]
    stack.source("src", "r1")
    path = tmp_path / "backout.toml"
    path.write_text(head + f'[environments.prod.aws]\nregion = "{REGION}"\nendpoint_url = "{moto_url}"\n'
                    f'stack = "{name}"\n')

    code, out, err = cli(capsys, monkeypatch, path, "stack", "status", "--env", "prod", "--json")
    assert code == 0, err
    s = json.loads(out)
    assert s["status"] == "CREATE_COMPLETE" and s["name"] == name and s["last_updated"] > 0
    assert s["outputs"]["BackoutTableJobs"] == f"{stack.tag}-jobs"
    assert s["outputs"]["BackoutQueueProcessingDlq"].endswith(f"/{stack.tag}-processing-dlq")

    platform = open_platform(load_manifest(path), "prod", tmp_path / "state")
    r = platform.resources()  # type: ignore[attr-defined]
    assert r.functions == stack.functions and (r.api_id, r.stage) == (api_id, "prod")
    assert r.tables == {"jobs": f"{stack.tag}-jobs"} and r.buckets == {"files": f"{stack.tag}-files"}
    assert r.environment == "prod" and r.queues["processing"] == processing
    # the names work: the queue the stack made, and a function the outputs name
    assert platform.queue_attributes("processing-dlq").visible == 0
    assert platform.invoke(stack.worker, "$LATEST", {"ping": 1}).payload == {"ping": 1}

    code, out, err = cli(capsys, monkeypatch, path, "stack", "cancel", "--env", "prod")
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "CREATE_COMPLETE: cancel applies only while an update is in progress" in err

    # a stack that does not exist stops `backout up` with one line
    path.write_text(path.read_text().replace(f'stack = "{name}"', 'stack = "missing"'))
    code, out, err = cli(capsys, monkeypatch, path, "up", "--env", "prod")
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "CloudFormation stack 'missing' in us-east-1: Stack with id missing does not exist" in err
