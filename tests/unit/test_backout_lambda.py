"""The handler wrapper (`backout_lambda.instrument`): every line it prints is parsed, checked against the
EMF specification and against the contract with the AWS platform's metric reader (names, units,
dimension sets, values), and one test sends the lines through moto's CloudWatch and reads them back
per version at a 1-second period."""

from __future__ import annotations

import ast
import datetime as dt
import io
import json
import logging
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import backout_lambda.wrapper as wrapper_module
from backout_lambda import instrument, metric_data
from sda.events import LambdaContext, api_event, sqs_event

REPO = Path(__file__).resolve().parents[2]

# The contract, written out independently of the package's own constants.
FUNCTION_SETS = [["FunctionName", "ExecutedVersion"], ["FunctionName"]]
API_SETS = [["ApiName", "Stage", "ExecutedVersion"], ["ApiName", "Stage"]]
DLQ_SETS = [["QueueName", "ExecutedVersion"], ["QueueName"]]
CONTRACT: dict[str, tuple[str, list[list[str]]]] = {
    "Invocations": ("Count", FUNCTION_SETS),
    "Errors": ("Count", FUNCTION_SETS),
    "Duration": ("Milliseconds", FUNCTION_SETS),
    "Count": ("Count", API_SETS),
    "4XXError": ("Count", API_SETS),
    "5XXError": ("Count", API_SETS),
    "DeadLetterArrivals": ("Count", DLQ_SETS),
}
FUNCTION_METRICS = {"Invocations", "Errors", "Duration"}
API_METRICS = {"Count", "4XXError", "5XXError"}


@pytest.fixture(autouse=True)
def lambda_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """A Lambda function's environment as the SAM template (or the local platform) sets it."""
    for key, value in {
        "BACKOUT_SERVICE": "security-assistant",
        "BACKOUT_ENV": "staging",
        "BACKOUT_FUNCTION": "api",
        "AWS_LAMBDA_FUNCTION_NAME": "security-assistant-api-staging",
        "AWS_LAMBDA_FUNCTION_VERSION": "7",
    }.items():
        monkeypatch.setenv(key, value)
    for key in ("BACKOUT_MAX_RECEIVE_COUNT", "BACKOUT_DLQ_NAME"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setattr(wrapper_module, "_logged", set())  # "logged once" starts afresh per test
    yield


def dlq_env(monkeypatch: pytest.MonkeyPatch, max_receive_count: str = "3") -> None:
    monkeypatch.setenv("BACKOUT_FUNCTION", "worker")
    monkeypatch.setenv("BACKOUT_MAX_RECEIVE_COUNT", max_receive_count)
    monkeypatch.setenv("BACKOUT_DLQ_NAME", "processing-dlq")


def emf_lines(out: str) -> list[dict[str, Any]]:
    """The wrapper's EMF lines in the output (namespace Backout; a handler's own powertools metrics
    aside), each checked against the EMF specification and the contract."""
    docs = []
    for text in out.splitlines():
        if '"_aws"' in text:
            doc = json.loads(text)
            if any(d.get("Namespace") == "Backout" for d in doc["_aws"]["CloudWatchMetrics"]):
                check_emf(doc)
                docs.append(doc)
    return docs


def check_emf(doc: dict[str, Any]) -> None:
    """The EMF specification (root `_aws` with an epoch-ms Timestamp and CloudWatchMetrics directives,
    each a Namespace, Dimensions as lists of top-level member names and Metrics with Name, Unit and
    StorageResolution, the values at the top level) and the contract (namespace Backout, 1-second
    resolution, each metric with its unit and exactly its dimension sets)."""
    aws = doc["_aws"]
    assert isinstance(aws["Timestamp"], int)
    assert abs(aws["Timestamp"] / 1000 - time.time()) < 600  # milliseconds, not seconds
    directives = aws["CloudWatchMetrics"]
    assert isinstance(directives, list) and directives
    seen: list[str] = []
    for d in directives:
        assert set(d) == {"Namespace", "Dimensions", "Metrics"}
        assert d["Namespace"] == "Backout"
        for dims in d["Dimensions"]:
            for name in dims:
                assert isinstance(doc[name], str) and doc[name], f"dimension {name} has no value"
        for m in d["Metrics"]:
            assert set(m) == {"Name", "Unit", "StorageResolution"}
            assert m["StorageResolution"] == 1
            value = doc[m["Name"]]
            assert isinstance(value, int | float) and not isinstance(value, bool) and value >= 0
            unit, sets = CONTRACT[m["Name"]]
            assert (m["Unit"], d["Dimensions"]) == (unit, sets), m["Name"]
            seen.append(m["Name"])
    assert len(seen) == len(set(seen)), "a metric is declared twice"
    assert FUNCTION_METRICS <= set(seen)


def values(doc: dict[str, Any]) -> dict[str, float]:
    names = [m["Name"] for d in doc["_aws"]["CloudWatchMetrics"] for m in d["Metrics"]]
    return {n: doc[n] for n in names if n != "Duration"}


def dims(doc: dict[str, Any]) -> dict[str, str]:
    names = {n for d in doc["_aws"]["CloudWatchMetrics"] for s in d["Dimensions"] for n in s}
    return {n: doc[n] for n in names}


def one_line(capsys: pytest.CaptureFixture[str]) -> dict[str, Any]:
    docs = emf_lines(capsys.readouterr().out)
    assert len(docs) == 1, f"{len(docs)} EMF lines for one invocation"
    return docs[0]


CTX = LambdaContext(function_name="security-assistant-api-staging")


# --- API Gateway proxy events ----------------------------------------------------------------------
def responding(status: int) -> Callable[[Any, Any], Any]:
    @instrument
    def handler(event: Any, context: Any) -> dict[str, Any]:
        return {"statusCode": status, "headers": {}, "body": "{}"}

    return handler


@pytest.mark.parametrize(("status", "x4", "x5"), [(200, 0, 0), (404, 1, 0), (500, 0, 1), (503, 0, 1)])
def test_api_status_classes(status: int, x4: int, x5: int, capsys: pytest.CaptureFixture[str]) -> None:
    result = responding(status)(api_event("GET", "/status/job_1"), CTX)
    assert result["statusCode"] == status  # the result passes through
    doc = one_line(capsys)
    assert values(doc) == {"Invocations": 1, "Errors": 0, "Count": 1, "4XXError": x4, "5XXError": x5}
    assert dims(doc) == {
        "FunctionName": "api", "ExecutedVersion": "7", "ApiName": "security-assistant", "Stage": "staging",
    }


def test_an_api_exception_is_an_error_and_a_5xx_and_is_reraised(capsys: pytest.CaptureFixture[str]) -> None:
    boom = RuntimeError("the handler's own exception")

    @instrument
    def handler(event: Any, context: Any) -> Any:
        raise boom

    with pytest.raises(RuntimeError) as caught:
        handler(api_event("POST", "/process-drawing", body=b"x"), CTX)
    assert caught.value is boom
    doc = one_line(capsys)
    assert values(doc) == {"Invocations": 1, "Errors": 1, "Count": 1, "4XXError": 0, "5XXError": 1}


def test_a_malformed_proxy_result_counts_as_5xx_as_api_gateway_answers_502(capsys: pytest.CaptureFixture[str]) -> None:
    @instrument
    def handler(event: Any, context: Any) -> Any:
        return {"body": "no status"}

    handler(api_event("GET", "/health"), CTX)
    assert values(one_line(capsys))["5XXError"] == 1


def test_an_http_api_v2_event_is_an_api_request_too(capsys: pytest.CaptureFixture[str]) -> None:
    event = {"version": "2.0", "routeKey": "GET /health", "rawPath": "/health",
             "requestContext": {"apiId": "abc123", "stage": "$default", "http": {"method": "GET"}}}
    responding(404)(event, CTX)
    assert values(one_line(capsys)) == {"Invocations": 1, "Errors": 0, "Count": 1, "4XXError": 1, "5XXError": 0}


def test_duration_is_the_handlers_time_in_milliseconds(capsys: pytest.CaptureFixture[str]) -> None:
    @instrument
    def handler(event: Any, context: Any) -> Any:
        time.sleep(0.05)
        return {"ok": True}

    assert handler({"test": True}, CTX) == {"ok": True}
    doc = one_line(capsys)
    assert 50 <= doc["Duration"] < 60_000
    # neither an API request nor an SQS batch: the function's metrics only
    assert set(values(doc)) == {"Invocations", "Errors"} and set(dims(doc)) == {"FunctionName", "ExecutedVersion"}


def test_names_fall_back_to_lambdas_own_variables(monkeypatch: pytest.MonkeyPatch,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.delenv("BACKOUT_FUNCTION")
    monkeypatch.delenv("AWS_LAMBDA_FUNCTION_VERSION")
    responding(200)(api_event("GET", "/health"), CTX)
    assert dims(one_line(capsys))["FunctionName"] == "security-assistant-api-staging"
    capsys.readouterr()
    monkeypatch.delenv("AWS_LAMBDA_FUNCTION_NAME")
    responding(200)({"direct": True}, CTX)
    doc = one_line(capsys)
    assert doc["ExecutedVersion"] == "$LATEST" and doc["FunctionName"].endswith("responding.<locals>.handler")


# --- SQS batches ---------------------------------------------------------------------------------
def batch(*receive_counts: int) -> dict[str, Any]:
    records = [r for n in receive_counts for r in sqs_event([json.dumps({"n": n})], receive_count=n)["Records"]]
    return {"Records": records}


def failing(*indexes: int) -> Callable[[Any, Any], Any]:
    """A queue handler that reports the records at `indexes` in batchItemFailures."""

    @instrument
    def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
        ids = [event["Records"][i]["messageId"] for i in indexes]
        return {"batchItemFailures": [{"itemIdentifier": i} for i in ids]}

    return handler


def test_partial_failures_on_final_and_non_final_receives(monkeypatch: pytest.MonkeyPatch,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    dlq_env(monkeypatch)
    event = batch(1, 3, 3, 4, 2)  # failing: the 1st (non-final), the 2nd and 4th (final); the 3rd succeeds
    result = failing(0, 1, 3)(event, CTX)
    assert len(result["batchItemFailures"]) == 3
    doc = one_line(capsys)
    assert values(doc) == {"Invocations": 1, "Errors": 1, "DeadLetterArrivals": 2}
    assert dims(doc) == {"FunctionName": "worker", "ExecutedVersion": "7", "QueueName": "processing-dlq"}

    failing(0)(batch(2, 3), CTX)  # only a non-final receive failed: an error, nothing dead-lettered
    assert values(one_line(capsys)) == {"Invocations": 1, "Errors": 1, "DeadLetterArrivals": 0}

    failing()(batch(3, 3), CTX)  # everything processed on its last chance
    assert values(one_line(capsys)) == {"Invocations": 1, "Errors": 0, "DeadLetterArrivals": 0}


def test_a_raising_batch_fails_every_record(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    dlq_env(monkeypatch)

    @instrument
    def handler(event: Any, context: Any) -> Any:
        raise KeyError("storage down")

    with pytest.raises(KeyError, match="storage down"):
        handler(batch(3, 1, 5), CTX)
    assert values(one_line(capsys)) == {"Invocations": 1, "Errors": 1, "DeadLetterArrivals": 2}


def test_an_invalid_item_identifier_fails_the_whole_batch_as_lambda_does(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    dlq_env(monkeypatch)

    @instrument
    def handler(event: Any, context: Any) -> Any:
        return {"batchItemFailures": [{"itemIdentifier": "not-in-this-batch"}]}

    handler(batch(3, 3, 1), CTX)
    assert values(one_line(capsys)) == {"Invocations": 1, "Errors": 1, "DeadLetterArrivals": 2}


def test_no_dead_letter_arrivals_without_the_dlq_settings(monkeypatch: pytest.MonkeyPatch,
                                                           capsys: pytest.CaptureFixture[str],
                                                           caplog: pytest.LogCaptureFixture) -> None:
    failing(0)(batch(3), CTX)
    assert values(one_line(capsys)) == {"Invocations": 1, "Errors": 1}
    dlq_env(monkeypatch, max_receive_count="three")
    with caplog.at_level(logging.WARNING, logger="backout_lambda"):
        failing(0)(batch(3), CTX)
        failing(0)(batch(3), CTX)
    docs = emf_lines(capsys.readouterr().out)
    assert [values(d) for d in docs] == [{"Invocations": 1, "Errors": 1}] * 2
    assert [r.getMessage() for r in caplog.records] == [
        "backout_lambda: BACKOUT_MAX_RECEIVE_COUNT='three' is not a positive integer; DeadLetterArrivals is not emitted"
    ]


# --- emission never breaks a handler ---------------------------------------------------------------
def test_an_emission_failure_is_logged_once_and_changes_nothing(monkeypatch: pytest.MonkeyPatch,
                                                                caplog: pytest.LogCaptureFixture) -> None:
    closed = io.StringIO()
    closed.close()  # writing raises ValueError, as a closed or broken stdout would
    monkeypatch.setattr(sys, "stdout", closed)
    result = {"statusCode": 201, "body": "created"}
    boom = ValueError("the handler's own error")

    @instrument
    def ok(event: Any, context: Any) -> Any:
        return result

    @instrument
    def bad(event: Any, context: Any) -> Any:
        raise boom

    with caplog.at_level(logging.WARNING, logger="backout_lambda"):
        for _ in range(3):
            assert ok(api_event("GET", "/health"), CTX) is result
            with pytest.raises(ValueError) as caught:
                bad(batch(3), CTX)
            assert caught.value is boom and caught.value.__context__ is None
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 1, messages
    assert messages[0].startswith("backout_lambda: could not emit the invocation's metrics (ValueError: ")


# --- the SDA's own handlers ----------------------------------------------------------------------
@pytest.mark.filterwarnings("ignore:No application metrics to publish")  # the worker's acknowledged message
def test_the_sdas_handlers_emit_one_line_per_invocation(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    from sda import api, dlq, queue, repair, storage, worker
    from sda_local import prepare_local

    for key, value in prepare_local(tmp_path / "env", version="7").items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("SDA_FAULTS", raising=False)
    storage.reset_cache()
    queue.reset_cache()
    try:
        assert api.handler(api_event("GET", "/health"), CTX)["statusCode"] == 200
        assert api.handler(api_event("GET", "/status/job_20250101000000000_abcd"), CTX)["statusCode"] == 404
        docs = emf_lines(capsys.readouterr().out)
        assert [(values(d)["4XXError"], values(d)["5XXError"]) for d in docs] == [(0, 0), (1, 0)]

        dlq_env(monkeypatch)
        assert worker.handler(batch(3), CTX) == {"batchItemFailures": []}  # an unparseable body: acknowledged
        monkeypatch.setenv("BACKOUT_FUNCTION", "dlq_processor")
        monkeypatch.delenv("BACKOUT_DLQ_NAME")  # the DLQ has no DLQ of its own
        assert dlq.handler(batch(1), CTX) == {"batchItemFailures": []}  # a message for no known job: recorded
        monkeypatch.setenv("BACKOUT_FUNCTION", "repair")
        assert repair.handler({}, CTX)["status"] == "ok"
        docs = emf_lines(capsys.readouterr().out)
        assert [(d["FunctionName"], values(d)) for d in docs] == [
            ("worker", {"Invocations": 1, "Errors": 0, "DeadLetterArrivals": 0}),
            ("dlq_processor", {"Invocations": 1, "Errors": 0}),
            ("repair", {"Invocations": 1, "Errors": 0}),
        ]
    finally:
        storage.reset_cache()
        queue.reset_cache()


# --- the round trip through CloudWatch ----------------------------------------------------------------
def test_lines_round_trip_through_cloudwatch_per_version(monkeypatch: pytest.MonkeyPatch,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    """The wrapper's lines, put as CloudWatch Logs extracts EMF, read back with get_metric_data at a
    1-second period by the contract's dimensions (exact match, as CloudWatch selects a series)."""
    boto3 = pytest.importorskip("boto3")
    from moto import mock_aws

    for version, status in (("7", 200), ("7", 200), ("8", 500), ("8", 200), ("8", 404)):
        monkeypatch.setenv("AWS_LAMBDA_FUNCTION_VERSION", version)
        responding(status)(api_event("GET", "/health"), CTX)
    dlq_env(monkeypatch)
    monkeypatch.setenv("AWS_LAMBDA_FUNCTION_VERSION", "12")
    failing(0, 1)(batch(3, 3, 1), CTX)
    docs = emf_lines(capsys.readouterr().out)
    assert len(docs) == 6

    start = min(d["_aws"]["Timestamp"] for d in docs) / 1000 - 5
    end = max(d["_aws"]["Timestamp"] for d in docs) / 1000 + 5
    with mock_aws():
        cw = boto3.client("cloudwatch", region_name="us-east-1")
        for doc in docs:
            for namespace, data in metric_data(doc).items():
                cw.put_metric_data(Namespace=namespace, MetricData=data)

        queries = {
            "err7": ("Errors", {"FunctionName": "api", "ExecutedVersion": "7"}),
            "inv8": ("Invocations", {"FunctionName": "api", "ExecutedVersion": "8"}),
            "inv_all": ("Invocations", {"FunctionName": "api"}),
            "x5_8": ("5XXError", {"ApiName": "security-assistant", "Stage": "staging", "ExecutedVersion": "8"}),
            "x4_8": ("4XXError", {"ApiName": "security-assistant", "Stage": "staging", "ExecutedVersion": "8"}),
            "x5_7": ("5XXError", {"ApiName": "security-assistant", "Stage": "staging", "ExecutedVersion": "7"}),
            "count_all": ("Count", {"ApiName": "security-assistant", "Stage": "staging"}),
            "dlq12": ("DeadLetterArrivals", {"QueueName": "processing-dlq", "ExecutedVersion": "12"}),
            "dlq_all": ("DeadLetterArrivals", {"QueueName": "processing-dlq"}),
            "worker_err": ("Errors", {"FunctionName": "worker", "ExecutedVersion": "12"}),
        }
        answer = cw.get_metric_data(
            MetricDataQueries=[
                {
                    "Id": qid,
                    "MetricStat": {
                        "Metric": {
                            "Namespace": "Backout",
                            "MetricName": metric,
                            "Dimensions": [{"Name": k, "Value": v} for k, v in dims_.items()],
                        },
                        "Period": 1,
                        "Stat": "Sum",
                    },
                }
                for qid, (metric, dims_) in queries.items()
            ],
            StartTime=dt.datetime.fromtimestamp(start, dt.UTC),
            EndTime=dt.datetime.fromtimestamp(end, dt.UTC),
        )
        sums = {r["Id"]: sum(r["Values"]) for r in answer["MetricDataResults"]}
        listed = cw.list_metrics(Namespace="Backout", MetricName="Duration")["Metrics"]
    assert sums == {
        "err7": 0, "inv8": 3, "inv_all": 5, "x5_8": 1, "x4_8": 1, "x5_7": 0, "count_all": 5,
        "dlq12": 2, "dlq_all": 2, "worker_err": 1,
    }
    assert {tuple(sorted(d["Name"] for d in m["Dimensions"])) for m in listed} == {
        ("ExecutedVersion", "FunctionName"), ("FunctionName",),
    }


def test_metric_data_refuses_what_cloudwatch_would_reject() -> None:
    with pytest.raises(ValueError, match="not an EMF document"):
        metric_data({"message": "hello"})
    doc = {"_aws": {"Timestamp": 0, "CloudWatchMetrics": [
        {"Namespace": "Backout", "Dimensions": [["FunctionName"]], "Metrics": [{"Name": "Errors", "Unit": "Count"}]}
    ]}, "Errors": 1}
    with pytest.raises(ValueError, match="FunctionName"):
        metric_data(doc)


# --- packaging: alone in a Lambda package ----------------------------------------------------------
def test_the_wrapper_needs_only_the_standard_library_and_is_packaged() -> None:
    import tomllib

    package = REPO / "src" / "backout_lambda"
    for path in package.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else [])
            for name in names:
                top = name.split(".")[0]
                # the guard and its table layout run in their own function, where Lambda provides boto3
                aws = ("boto3", "botocore") if path.name in ("guard.py", "state_table.py") else ()
                assert top in sys.stdlib_module_names or top in ("backout_lambda", "__future__", *aws), (
                    f"{path.name}: {name}")
    # setuptools' package discovery under src/ (no include/exclude filter) picks up every package there
    find = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]
    assert find == {"where": ["src"]} and (package / "__init__.py").is_file()


# --- on the local platform ---------------------------------------------------------------------------
def test_the_local_platform_gives_each_function_the_wrappers_environment(tmp_path: Path) -> None:
    """A real worker process of the SDA's worker function: the wrapper reads its names from the
    environment the local platform sets, its line reaches the function's log, and the metric store
    keeps the platform's own first-hand series only (the wrapper's copy would count them twice)."""
    from backout.manifest import load_manifest
    from backout.platforms.base import DLQ_ARRIVALS, NS_BACKOUT, NS_LAMBDA, MetricQuery
    from backout.platforms.local.platform import LocalPlatform
    from support import sda_manifest

    path = tmp_path / "backout.toml"
    path.write_text(sda_manifest(tmp_path / "state"))
    platform = LocalPlatform(load_manifest(path), "staging")
    try:
        assert platform.wrapper_env() == {
            "api": {"BACKOUT_SERVICE": "security-assistant", "BACKOUT_FUNCTION": "api"},
            "worker": {"BACKOUT_SERVICE": "security-assistant", "BACKOUT_FUNCTION": "worker",
                       "BACKOUT_DLQ_NAME": "processing-dlq", "BACKOUT_MAX_RECEIVE_COUNT": "3"},
            "dlq_processor": {"BACKOUT_SERVICE": "security-assistant", "BACKOUT_FUNCTION": "dlq_processor"},
            "repair": {"BACKOUT_SERVICE": "security-assistant", "BACKOUT_FUNCTION": "repair"},
        }
        platform.bootstrap()
        before = time.time()
        result = platform.invoke("worker", "1", batch(3))  # an unparseable message, acknowledged
        assert result.ok, result.payload
        assert result.payload == {"batchItemFailures": []}
        log = (platform.state_dir / "logs" / "worker" / "v1.log").read_text()
        docs = emf_lines("\n".join(line for line in log.splitlines() if '"Namespace":"Backout"' in line))
        assert [(dims(d), values(d)) for d in docs] == [(
            {"FunctionName": "worker", "ExecutedVersion": "1", "QueueName": "processing-dlq"},
            {"Invocations": 1, "Errors": 0, "DeadLetterArrivals": 0},
        )]
        platform.metrics_store.flush()
        window = (before - 1, time.time() + 1)

        def series(namespace: str, metric: str, dimensions: dict[str, str]) -> list[float]:
            q = MetricQuery.of(namespace, metric, dimensions, *window, period=1, statistic="SampleCount")
            return [p.value for p in platform.metrics([q])[0]]

        assert series(NS_LAMBDA, "Invocations", {"FunctionName": "worker", "ExecutedVersion": "1"}) == [1.0]
        assert series(NS_BACKOUT, "Invocations", {"FunctionName": "worker", "ExecutedVersion": "1"}) == []
        assert series(NS_BACKOUT, DLQ_ARRIVALS, {"QueueName": "processing-dlq"}) == []
    finally:
        platform.close(drain_timeout=5)
