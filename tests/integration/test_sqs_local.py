"""Unmodified AWS code on the local platform: the notes example (examples/notes, written for AWS alone)
under a real supervisor, its queue fed through the SQS-compatible endpoint with plain boto3, its
table in the opt-in emulator.

One supervisor serves the module: messages sent through the endpoint are processed by the consumer
through its event source mapping; nothing is lost across a `kill -9` of the supervisor (queue and
emulator state); a faulty version of the example, made faulty through its release environment
alone, is rolled back.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import boto3
import httpx
import pytest

from support import ROOT, RunningEnv, wait_for

pytestmark = pytest.mark.slow

EXAMPLE = ROOT / "examples" / "notes"


class Env(RunningEnv):
    def client(self, service: str) -> Any:
        endpoints = json.loads((self.state_dir / "endpoints.json").read_text())["aws"]
        return boto3.client(service, endpoint_url=endpoints[service], region_name="us-east-1",
                            aws_access_key_id="any", aws_secret_access_key="any")

    def stored(self, ids: set[str]) -> set[str]:
        """Which of `ids` the worker has put in the notes table (read from the emulator)."""
        found: set[str] = set()
        for page in self.client("dynamodb").get_paginator("scan").paginate(TableName="notes"):
            found |= {item["id"]["S"] for item in page["Items"]}
        return ids & found

    def queue(self, name: str) -> dict[str, Any]:
        return self.cli_json("queue", "stats", name)


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    tmp = tmp_path_factory.mktemp("notes")
    text = (EXAMPLE / "backout.toml").read_text()
    text = text.replace('source = "notes"', f'source = "{EXAMPLE / "notes"}"')
    # in-flight work returns soon after a kill; long enough that a loaded machine's cold worker finishes
    # a batch before its messages are received again (those receives would dead-letter it)
    text = text.replace('visibility_timeout = "60s"', 'visibility_timeout = "10s"')
    text = text.replace('timeout = "30s"', 'timeout = "10s"')  # the worker's: not above the visibility timeout
    text = text.replace(
        'gateway_port = 8600\ncontrol_port = 8601\nstrategy = "Canary10Percent5Minutes"',
        f'gateway_port = 0\ncontrol_port = 0\nstate_dir = "{tmp / "state"}"\nstrategy = "Quick"\n'
        "min_invocations = 5\nlatency_judge = false",
    )
    text += '\n[strategies.Quick]\nsteps = [{ weight = 50, hold = "20s" }, { weight = 100 }]\n'
    (tmp / "backout.toml").write_text(text)
    e = Env(tmp / "backout.toml")
    try:
        yield e
    finally:
        e.stop()


def send_notes(env: Env, prefix: str, n: int) -> set[str]:
    """`n` notes straight into the queue through the endpoint, as another service's boto3 code would."""
    sqs = env.client("sqs")
    url = sqs.get_queue_url(QueueName="notes")["QueueUrl"]
    ids = [f"{prefix}-{i}" for i in range(n)]
    for i in range(0, n, 10):
        out = sqs.send_message_batch(QueueUrl=url, Entries=[
            {"Id": f"e{j}", "MessageBody": json.dumps({"id": nid, "text": f"note number {nid}"})}
            for j, nid in enumerate(ids[i:i + 10])])
        assert not out.get("Failed"), out
    return set(ids)


def test_messages_sent_through_the_endpoint_are_processed_through_the_mapping(env: Env) -> None:
    ids = send_notes(env, "direct", 20)
    r = httpx.post(f"{env.gateway_url}/notes", json={"text": "through the api"}, timeout=30)
    assert r.status_code == 202, r.text
    ids.add(r.json()["id"])
    wait_for(lambda: env.stored(ids) == ids, timeout=30, interval=0.3, what="21 notes in the table")
    note = httpx.get(f"{env.gateway_url}/notes/{r.json()['id']}", timeout=30).json()
    assert note == {"id": r.json()["id"], "text": "through the api", "words": 3}
    q = wait_for(lambda: (s := env.queue("notes"))["visible"] + s["in_flight"] == 0 and s, timeout=20,
                 what="the queue to drain")
    assert q["moved_to_dlq"] == 0 and env.queue("notes-dlq")["visible"] == 0
    attrs = env.client("sqs").get_queue_attributes(QueueUrl=env.client("sqs").get_queue_url(
        QueueName="notes")["QueueUrl"], AttributeNames=["All"])["Attributes"]
    assert (int(attrs["ApproximateNumberOfMessages"]), int(attrs["ApproximateNumberOfMessagesNotVisible"])) == (0, 0)


def test_nothing_is_lost_across_a_kill_9_of_the_supervisor(env: Env) -> None:
    before = send_notes(env, "before", 5)
    wait_for(lambda: env.stored(before) == before, timeout=30, interval=0.3, what="the first notes stored")
    during = send_notes(env, "during", 25)  # acknowledged, then the supervisor dies mid-processing
    env.kill9()
    env.restart()
    everything = before | during
    # the table's earlier writes came back from the emulator's journal; queued and in-flight notes
    # are processed after the restart (in-flight ones once their visibility timeout has passed)
    assert env.stored(before) == before
    wait_for(lambda: env.stored(everything) == everything, timeout=60, interval=0.5, what="all 30 notes stored")
    assert env.queue("notes-dlq")["visible"] == 0


def test_a_faulty_version_of_the_example_is_rolled_back(env: Env) -> None:
    stop = threading.Event()
    answers: list[int] = []

    def traffic() -> None:
        with httpx.Client(base_url=env.gateway_url, timeout=10) as c:
            while not stop.is_set():
                try:
                    answers.append(c.post("/notes", json={"text": "load"}).status_code)
                    answers.append(c.get("/health").status_code)
                except httpx.HTTPError:
                    answers.append(0)
                time.sleep(0.05)

    t = threading.Thread(target=traffic, daemon=True)
    t.start()
    try:
        r = env.cli("deploy", "--set-env", "BACKOUT_FAULT=errors=1", timeout=90)
    finally:
        stop.set()
        t.join(15)
    assert r.returncode == 1, r.stdout + r.stderr
    d = env.cli_json("deployment", "show", env.cli_json("deployments")[0]["id"])["deployment"]
    assert d["status"] == "RolledBack" and d["current_step"] == 0, d
    status = env.cli_json("status")["functions"]
    assert all(list(f["weights"].values()) == [100.0] for f in status.values()), status
    assert 502 in answers  # the faulty version did answer some requests, and failed them
    assert "error-rate" in d["reason"] or "5xx" in d["reason"], d["reason"]  # an alarm decided
    r = httpx.post(f"{env.gateway_url}/notes", json={"text": "after the rollback"}, timeout=30)
    assert r.status_code == 202
    wait_for(lambda: env.stored({r.json()["id"]}), timeout=30, interval=0.3, what="a note after the rollback")
