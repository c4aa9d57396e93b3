"""What a newcomer meets on the first day, without a supervisor: `backout init`, the scaffold's handlers
against backout's probes, the stale-release warning of `up`, and confirmations without a terminal."""

from __future__ import annotations

import importlib
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from backout.cli.main import app
from backout.cli.scaffold import new_service
from backout.control.probes import probe_for
from backout.errors import UsageError
from backout.manifest import load_manifest
from backout.platforms.base import Release
from backout.runbooks.status import stale_release


@pytest.fixture
def scaffold(tmp_path: Path) -> Path:
    r = CliRunner().invoke(app, ["init", str(tmp_path / "svc"), "--name", "shop-api"])
    assert r.exit_code == 0, r.output
    return tmp_path / "svc"


def test_init_writes_a_service_that_loads_and_never_overwrites(scaffold: Path) -> None:
    m = load_manifest(scaffold / "backout.toml")
    assert m.service.name == "shop-api" and m.service.packages == ["shop_api"]
    assert [h.http for h in m.functions["api"].http_events] == ["GET /health", "POST /items", "GET /items/{item_id}"]
    assert m.queues["items"].dead_letter_queue == "items-dlq"
    before = (scaffold / "backout.toml").read_text()
    r = CliRunner().invoke(app, ["init", str(scaffold)])
    assert isinstance(r.exception, UsageError) and "never overwrites" in str(r.exception)
    assert (scaffold / "backout.toml").read_text() == before
    with pytest.raises(UsageError, match="starts with a letter"):
        new_service("1st service")


@pytest.fixture
def handlers(scaffold: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Any, Any]]:
    monkeypatch.syspath_prepend(str(scaffold / "src"))
    monkeypatch.setenv("DATA_DIR", str(scaffold / "data"))
    yield importlib.import_module("shop_api.api"), importlib.import_module("shop_api.consumer")
    for name in [n for n in sys.modules if n.startswith("shop_api")]:
        del sys.modules[name]


def test_the_scaffolds_handlers_pass_backouts_probes(scaffold: Path, handlers: tuple[Any, Any]) -> None:
    api, consumer = handlers
    m = load_manifest(scaffold / "backout.toml")
    http, queue = probe_for(m, "api"), probe_for(m, "consumer")
    assert http.judge(True, api.handler(http.event, None)) == (True, "answered 200")
    answer = consumer.handler(queue.event, None)
    assert answer == {"batchItemFailures": [{"itemIdentifier": queue.event["Records"][0]["messageId"]}]}
    assert queue.judge(True, answer) == (True, "rejected the marked message")


def test_up_warns_when_the_live_release_is_older_than_the_source_tree(scaffold: Path) -> None:
    m = load_manifest(scaffold / "backout.toml")
    published = time.time()
    live = Release(1, {"api": "1", "consumer": "1"}, "d", published)
    old = published - 60
    for f in (scaffold / "src").rglob("*.py"):
        os.utime(f, (old, old))
    assert stale_release(m, live) is None
    api_py = scaffold / "src" / "shop_api" / "api.py"
    os.utime(api_py, (published + 30, published + 30))
    warning = stale_release(m, live)
    assert warning is not None and warning.startswith("the live release r1 (published ")
    assert warning.endswith("is older than the source tree (src/shop_api/api.py changed since): `backout deploy` "
                            "publishes it, or start with `backout up --publish`")


@pytest.mark.parametrize("args", [["rollback", "--reason", "x"], ["emergency-stop", "--reason", "x"],
                                  ["queue", "purge", "items"], ["stop", "d-0001"]])
def test_destructive_commands_refuse_without_a_terminal_unless_yes(scaffold: Path, args: list[str]) -> None:
    r = CliRunner().invoke(app, ["--manifest", str(scaffold / "backout.toml"), *args], input="")
    assert isinstance(r.exception, UsageError), r.output
    assert str(r.exception).endswith("— not a terminal, so pass --yes to confirm")
