"""`backout init --from-sam`: the repository's own SAM template and a template of another shape (an HTTP API,
two queue consumers in their own code directories, Globals, a layer, a hook, alarms, intrinsics that cannot
be resolved, a custom resource, conditions) become manifests that backout's loader accepts, with a
`# not translated:` comment where each gap is."""

from __future__ import annotations

import sys
import tomllib
from pathlib import Path

import pytest

from backout.cli import context
from backout.cli.main import run
from backout.cli.sam_import import from_sam, write_manifest
from backout.manifest import load_manifest

REPO = Path(__file__).resolve().parents[2]

SHOP = """\
AWSTemplateFormatVersion: "2010-09-09"
Transform: AWS::Serverless-2016-10-31
Description: shop - an HTTP API, two queue consumers, a pre-traffic hook
Parameters:
  Env:
    Type: String
    Default: staging
  TableName:
    Type: String
Conditions:
  IsProd: !Equals [!Ref Env, prod]
Globals:
  Function:
    Runtime: python3.12
    Timeout: 15
    MemorySize: 512
    AutoPublishAlias: live
    Layers:
      - !Ref SharedLayer
    DeploymentPreference:
      Type: Linear10PercentEvery1Minute
      Alarms:
        - !Ref OrdersErrorsAlarm
        - !Ref WebLatencyAlarm
        - !Ref OrdersBacklogAlarm
        - !Ref ErrorRateMathAlarm
        - !Ref OrdersTableFailuresAlarm
        - !Ref SomeoneElsesAlarm
      Hooks:
        PreTraffic: !Ref PreTrafficCheckFunction
    Environment:
      Variables:
        STAGE: !Ref Env
        LOG_LEVEL: INFO
  HttpApi:
    CorsConfiguration:
      AllowOrigins: ["*"]
Resources:
  ShopApi:
    Type: AWS::Serverless::HttpApi
    Properties:
      StageName: !Ref Env
  WebFunction:
    Type: AWS::Serverless::Function
    Properties:
      CodeUri: functions/web/
      Handler: app.handler
      Environment:
        Variables:
          ORDERS_TABLE: !Ref TableName
          REGION_NAME: !Sub "${AWS::Region}"
          ORDERS_QUEUE_URL: !Ref OrdersQueue
          API_PREFIX: !Sub "/${Env}/v1"
      Events:
        ListOrders:
          Type: HttpApi
          Properties: { ApiId: !Ref ShopApi, Path: /orders, Method: GET }
        CreateOrder:
          Type: HttpApi
          Properties: { ApiId: !Ref ShopApi, Path: /orders, Method: post }
        Health:
          Type: HttpApi
          Properties: { ApiId: !Ref ShopApi, Path: /health, Method: get }
        Nightly:
          Type: Schedule
          Properties: { Schedule: rate(1 day) }
  OrdersConsumerFunction:
    Type: AWS::Serverless::Function
    Properties:
      CodeUri: functions/consumers/
      Handler: orders.handler
      ReservedConcurrentExecutions: 3
      Events:
        Orders:
          Type: SQS
          Properties:
            Queue: !GetAtt OrdersQueue.Arn
            BatchSize: 5
            MaximumBatchingWindowInSeconds: 2
  EmailsConsumerFunction:
    Type: AWS::Serverless::Function
    Properties:
      CodeUri: functions/consumers/
      Handler: emails.handler
      Timeout: 60
      DeploymentPreference:
        Type: Canary10Percent5Minutes
      Events:
        Emails:
          Type: SQS
          Properties: { Queue: !GetAtt EmailsQueue.Arn, BatchSize: 10, Enabled: false }
  PreTrafficCheckFunction:
    Type: AWS::Serverless::Function
    Properties:
      CodeUri: functions/hooks/
      Handler: pre_traffic.handler
      FunctionName: !Sub "CodeDeployHook_shop-pre-traffic-${Env}"
      Policies:
        - Statement: [{ Effect: Allow, Action: codedeploy:PutLifecycleEventHookExecutionStatus, Resource: "*" }]
  OrdersQueue:
    Type: AWS::SQS::Queue
    Properties:
      VisibilityTimeout: 90
      RedrivePolicy:
        deadLetterTargetArn: !GetAtt OrdersDLQ.Arn
        maxReceiveCount: 5
  OrdersDLQ:
    Type: AWS::SQS::Queue
    Properties:
      MessageRetentionPeriod: 1209600
  EmailsQueue:
    Type: AWS::SQS::Queue
    Properties:
      VisibilityTimeout: 360  # not below its consumer's timeout: AWS refuses that mapping
      RedrivePolicy:
        deadLetterTargetArn: !ImportValue shared-dead-letters-arn
        maxReceiveCount: 2
  SharedLayer:
    Type: AWS::Serverless::LayerVersion
    Properties:
      ContentUri: layers/shared/
  OrdersErrorsAlarm:
    Type: AWS::CloudWatch::Alarm
    Properties:
      Namespace: AWS/Lambda
      MetricName: Errors
      Dimensions:
        - Name: Resource
          Value: !Sub "${OrdersConsumerFunction}:live"
        - Name: FunctionName
          Value: !Ref OrdersConsumerFunction
      Statistic: Sum
      Period: 60
      EvaluationPeriods: 2
      Threshold: 1
      ComparisonOperator: GreaterThanOrEqualToThreshold
  WebLatencyAlarm:
    Type: AWS::CloudWatch::Alarm
    Properties:
      AlarmName: !Sub "shop-web-latency-${Env}"
      Namespace: AWS/Lambda
      MetricName: Duration
      Dimensions:
        - { Name: Resource, Value: !Sub "${WebFunction}:live" }
        - { Name: FunctionName, Value: !Ref WebFunction }
        - { Name: ExecutedVersion, Value: !GetAtt WebFunction.Version.Version }
      ExtendedStatistic: p99
      Period: 60
      EvaluationPeriods: 3
      DatapointsToAlarm: 2
      TreatMissingData: notBreaching
      Threshold: 800
      ComparisonOperator: GreaterThanThreshold
  OrdersBacklogAlarm:
    Type: AWS::CloudWatch::Alarm
    Properties:
      Namespace: AWS/SQS
      MetricName: ApproximateAgeOfOldestMessage
      Dimensions: [{ Name: QueueName, Value: !GetAtt OrdersQueue.QueueName }]
      Statistic: Maximum
      Period: 300
      EvaluationPeriods: 1
      Threshold: 600
      ComparisonOperator: GreaterThanThreshold
  ErrorRateMathAlarm:
    Type: AWS::CloudWatch::Alarm
    Properties:
      Metrics:
        - { Id: rate, Expression: "errors / invocations * 100" }
      EvaluationPeriods: 1
      Threshold: 5
      ComparisonOperator: GreaterThanThreshold
  OrdersTableFailuresAlarm:
    Type: AWS::CloudWatch::Alarm
    Properties:
      Namespace: Shop
      MetricName: WriteFailures
      Dimensions: [{ Name: TableName, Value: !ImportValue orders-table-name }]
      Statistic: Sum
      Period: 60
      Threshold: 0
      ComparisonOperator: GreaterThanThreshold
  SeedOrders:
    Type: Custom::Seed
    Properties:
      ServiceToken: !ImportValue seeder-arn
  AuditBucket:
    Type: AWS::S3::Bucket
    Condition: IsProd
"""


def section(text: str, header: str) -> str:
    """The lines of one `[table]` up to the next table header."""
    start = text.index(f"\n{header}\n")
    end = text.find("\n[", start + len(header) + 2)
    return text[start:end if end >= 0 else None]


@pytest.fixture
def shop(tmp_path: Path) -> tuple[Path, Path]:
    template = tmp_path / "shop" / "template.yaml"
    template.parent.mkdir()
    template.write_text(SHOP)
    return template, tmp_path / "shop" / "backout.toml"


def test_the_repositorys_own_template_becomes_the_manifest_it_deploys(tmp_path: Path) -> None:
    out = write_manifest(REPO / "infrastructure" / "template.yaml", tmp_path / "backout.toml")
    m = load_manifest(out)
    mine = load_manifest(REPO / "backout.toml")
    assert m.service.name == "security-assistant"
    assert m.source_dir == (REPO / "src").resolve()
    assert list(m.functions) == list(mine.functions)
    for name, f in m.functions.items():
        theirs = mine.functions[name]
        assert (f.handler, f.memory, f.reserved_concurrency) == (theirs.handler, theirs.memory,
                                                                  theirs.reserved_concurrency)
        assert [e.http for e in f.http_events] == [e.http for e in theirs.http_events]
        assert [(e.queue, e.batch_size) for e in f.queue_events] == [(e.queue, e.batch_size)
                                                                     for e in theirs.queue_events]
    assert m.functions["worker"].timeout == 120 and m.functions["api"].timeout == 30
    assert m.functions["api"].environment["POWERTOOLS_SERVICE_NAME"] == "sda-api"
    assert "BACKOUT_FUNCTION" not in m.functions["api"].environment  # backout sets it per function
    assert list(m.queues) == ["processing", "processing-dlq"]
    q = m.queues["processing"]
    assert (q.dead_letter_queue, q.max_receive_count, q.visibility_timeout, q.retention) == (
        "processing-dlq", 3, 720, 4 * 86400)
    assert m.queues["processing-dlq"].retention == 14 * 86400
    # the stage parameter is each environment's own name; the API's throttle is the stage's
    assert m.environments["staging"].environment == {"ENVIRONMENT": "staging"}
    assert m.environments["prod"].environment == {"ENVIRONMENT": "prod"}
    assert m.environments["prod"].require_approval and m.environments["staging"].throttle_burst == 5000
    text = out.read_text()
    api = section(text, "[functions.api.environment]")
    assert "# not translated: SDA_JOBS_TABLE = !Ref JobsTable" in api
    assert "# PROCESSING_QUEUE_URL (!Ref ProcessingQueue): backout sets it to the URL of queue processing" in api
    assert "JobsTable (AWS::DynamoDB::Table)" in text.split("[service]")[0]
    # no DeploymentPreference: backout's own alarms alone (its CloudWatch alarms are the stack's, not a deployment's)
    assert all(e.alarms == {} for e in m.environments.values()) and "DeploymentPreference.Alarms" not in text
    assert "alarms." not in text


def test_a_template_of_another_shape_loads_with_every_gap_commented(shop: tuple[Path, Path]) -> None:
    template, out = shop
    write_manifest(template, out)
    m = load_manifest(out)
    text = out.read_text()
    assert m.service.source == "functions" and m.service.packages == ["consumers", "hooks", "web"]
    assert {n: f.handler for n, f in m.functions.items()} == {
        "web": "web.app.handler", "orders_consumer": "consumers.orders.handler",
        "emails_consumer": "consumers.emails.handler", "pre_traffic_check": "hooks.pre_traffic.handler"}
    web, orders, emails = m.functions["web"], m.functions["orders_consumer"], m.functions["emails_consumer"]
    assert [e.http for e in web.http_events] == ["GET /orders", "POST /orders", "GET /health"]
    assert (web.timeout, web.memory, emails.timeout, orders.reserved_concurrency) == (15, 512, 60, 3)
    assert web.environment == {"LOG_LEVEL": "INFO", "API_PREFIX": "/staging/v1"}
    assert [(e.queue, e.batch_size, e.enabled) for e in orders.queue_events] == [("orders", 5, True)]
    assert [(e.queue, e.batch_size, e.enabled) for e in emails.queue_events] == [("emails", 10, False)]
    assert (m.queues["orders"].dead_letter_queue, m.queues["orders"].max_receive_count) == ("orders-dlq", 5)
    assert m.queues["orders"].visibility_timeout == 90 and m.queues["emails"].dead_letter_queue is None
    # the hook: a function of the service that is not deployed with it, run before traffic
    assert not m.functions["pre_traffic_check"].deploy and m.functions["web"].deploy
    assert [h.function for h in m.hooks.pre_traffic] == [None, "pre_traffic_check"]
    # most functions' DeploymentPreference Type; the other one said
    assert {e.strategy for e in m.environments.values()} == {"Linear10PercentEvery1Minute"}
    assert "# not translated: per-function DeploymentPreference Types (Canary10Percent5Minutes for " \
           "emails_consumer)" in text
    assert (m.environments["staging"].environment, m.environments["prod"].environment) == (
        {"STAGE": "staging"}, {"STAGE": "prod"})
    # every gap where it is
    web_text = section(text, "[functions.web]")
    assert "# not translated: Layers !Ref SharedLayer" in web_text
    assert "# not translated: event Nightly of type Schedule" in web_text
    assert "events of type HttpApi (ListOrders …): backout's gateway sends REST proxy events" in web_text
    env_text = section(text, "[functions.web.environment]")
    assert "# not translated: ORDERS_TABLE = !Ref TableName" in env_text
    assert "# not translated: REGION_NAME = !Sub '${AWS::Region}'" in env_text
    assert "ORDERS_QUEUE_URL (!Ref OrdersQueue): backout sets it" in env_text
    assert "API_PREFIX: from parameter Env's default" in env_text
    assert "# not translated: event Orders: MaximumBatchingWindowInSeconds" in section(
        text, "[functions.orders_consumer]")
    assert "# not translated: RedrivePolicy to !ImportValue \"shared-dead-letters-arn\"" in section(
        text, "[queues.emails]")
    head = text.split("[service]")[0]
    assert "# not translated: custom resource SeedOrders (Custom::Seed)" in head
    assert "# not translated: Conditions (IsProd)" in head and "# not translated: Globals of HttpApi" in head
    assert "Env = 'staging'" in head
    # the template's deployment alarms are every environment's, their functions and queues by backout's names
    for env in m.environments.values():
        assert {n: a.model_dump(exclude_defaults=True) for n, a in env.alarms.items()} == {
            "orders-errors": {"namespace": "AWS/Lambda", "metric": "Errors", "function": "orders_consumer",
                              "dimensions": {"Resource": "{function}:{alias}", "FunctionName": "{function}"},
                              "threshold": 1.0, "comparison": "GreaterThanOrEqualToThreshold",
                              "evaluation_periods": 2},
            "web-latency": {"namespace": "AWS/Lambda", "metric": "Duration", "function": "web",
                            "dimensions": {"Resource": "{function}:{alias}", "FunctionName": "{function}",
                                           "ExecutedVersion": "{version}"},
                            "statistic": "p99", "threshold": 800.0, "evaluation_periods": 3,
                            "datapoints_to_alarm": 2, "treat_missing_data": "notBreaching"},
            "orders-backlog": {"namespace": "AWS/SQS", "metric": "ApproximateAgeOfOldestMessage",
                               "dimensions": {"QueueName": "orders"}, "statistic": "Maximum", "threshold": 600.0,
                               "period": 300.0}}
    prod_alarms = text.split("\n[environments.prod.alarms.orders-errors]")[1]
    assert "# DeploymentPreference.Alarms: WebLatencyAlarm (!Sub 'shop-web-latency-${Env}')" in prod_alarms
    assert "it watches every version of the function, as the template's alarm did" in prod_alarms
    # the others stay comments saying what they watched and why they are not translated
    alarms = text.split("DeploymentPreference.Alarms")[1].split("\n[environments")[0]
    assert "OrdersErrorsAlarm → [environments.*.alarms.orders-errors]" in alarms
    alarms = " ".join(line.strip("# ") for line in alarms.splitlines())  # long notes are wrapped
    assert "not translated: alarm ErrorRateMathAlarm: metric math (errors / invocations * 100) > 5 " \
           "(EvaluationPeriods 1) — metric math (Metrics)" in alarms
    assert "not translated: alarm OrdersTableFailuresAlarm: Sum of Shop WriteFailures [TableName=!ImportValue " \
           "\"orders-table-name\"] > 0 for ? × 60 s — its dimension TableName cannot be resolved" in alarms
    assert "SomeoneElsesAlarm (not defined in this template)" in alarms
    assert tomllib.loads(text) == tomllib.loads(from_sam(template, out))  # the same translation every time


@pytest.fixture
def cli(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]):  # type: ignore[no-untyped-def]
    def call(*args: str) -> tuple[int, str, str]:
        monkeypatch.setattr(sys, "argv", ["backout", *args])
        with pytest.raises(SystemExit) as exc:
            run()
        out = capsys.readouterr()
        return (0 if exc.value.code is None else int(exc.value.code)), out.out, out.err

    yield call
    context.SETTINGS._manifest = None


def test_the_command_writes_once_and_bad_input_is_one_line_exit_2(cli, shop: tuple[Path, Path],  # type: ignore[no-untyped-def]
                                                                  tmp_path: Path) -> None:
    template, out = shop
    code, stdout, _ = cli("init", "--from-sam", str(template), "--out", str(out))
    assert code == 0 and "wrote" in stdout and "not translated" in stdout
    assert load_manifest(out).service.name == "shop"
    before = out.read_text()
    code, _, err = cli("init", "--from-sam", str(template), "--out", str(out))
    assert code == 2 and "backout init never overwrites" in err and len(err.strip().splitlines()) == 1
    assert out.read_text() == before
    bad = tmp_path / "bad.yaml"
    for content, expected in (("Resources: [", "not a readable YAML template"),
                              ("Description: nothing\n", "not a CloudFormation template"),
                              ("Resources:\n  Q: {Type: AWS::SQS::Queue}\n", "no AWS::Serverless::Function")):
        bad.write_text(content)
        code, _, err = cli("init", "--from-sam", str(bad), "--out", str(tmp_path / "x.toml"))
        assert code == 2 and expected in err and len(err.strip().splitlines()) == 1, err
    code, _, err = cli("init", "--from-sam", str(tmp_path / "missing.yaml"))
    assert code == 2 and "no such file" in err
    assert not (tmp_path / "x.toml").exists()


def test_the_notes_example_translates_to_what_its_hand_written_manifest_says(tmp_path: Path) -> None:
    example = REPO / "examples" / "notes"
    m = load_manifest(write_manifest(example / "template.yaml", tmp_path / "backout.toml"))
    by_hand = load_manifest(example / "backout.toml")
    assert m.source_dir == by_hand.source_dir
    for name, f in by_hand.functions.items():
        assert (m.functions[name].handler, m.functions[name].timeout, m.functions[name].memory) == (
            f.handler, f.timeout, f.memory)
        assert m.functions[name].events == f.events
    assert {n: (q.dead_letter_queue, q.max_receive_count) for n, q in m.queues.items()} == {
        n: (q.dead_letter_queue, q.max_receive_count) for n, q in by_hand.queues.items()}
    assert m.environments["staging"].strategy == by_hand.environments["staging"].strategy
