"""A function's `memory` is enforced on its warm workers, with Lambda's out-of-memory error shape:
real worker processes of a real release, a handler that allocates past its limit."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from backout.manifest import load_manifest
from backout.platforms.local.releases import Releases
from backout.platforms.local.runtime import Runtime

HANDLER = """
import os


def handler(event, context):
    held = bytearray(event.get("mb", 0) * 1024 * 1024)  # bytearray writes every page: resident memory
    for _ in range(200):  # give the watchdog time to see it (a real handler works on its data)
        held[::4096] = b"x" * len(held[::4096])
    return {"pid": os.getpid(), "mb": len(held) // (1024 * 1024)}
"""

MANIFEST = """
[service]
name = "svc"
source = "src"
packages = ["app"]

[functions.small]
handler = "app.h.handler"
timeout = "60s"
memory = 128

[environments.staging]
gateway_port = 0
control_port = 0
"""


class _Sink:
    def record(self, *args: object) -> None:
        pass


@pytest.fixture
def runtime(tmp_path: Path) -> Iterator[tuple[Runtime, int]]:
    (tmp_path / "src" / "app").mkdir(parents=True)
    (tmp_path / "src" / "app" / "__init__.py").write_text("")
    (tmp_path / "src" / "app" / "h.py").write_text(HANDLER)
    (tmp_path / "backout.toml").write_text(MANIFEST)
    manifest = load_manifest(tmp_path / "backout.toml")
    releases = Releases(tmp_path / "state")
    version = releases.publish(tmp_path / "src", ["app"], None)
    rt = Runtime(manifest, tmp_path / "state", releases, _Sink())
    yield rt, version
    rt.close(drain_timeout=1)


def test_a_handler_over_its_memory_fails_as_lambda_reports_it_and_the_next_call_gets_a_new_worker(
    runtime: tuple[Runtime, int],
) -> None:
    rt, v = runtime
    ok = rt.invoke("small", v, {"mb": 16})
    assert ok.ok and ok.payload["mb"] == 16
    over = rt.invoke("small", v, {"mb": 400})  # far past memory = 128
    assert over.error == "Unhandled"
    assert over.payload == {
        "errorType": "Runtime.OutOfMemory",
        "errorMessage": f"RequestId: {over.request_id} Error: Runtime exited with error: signal: killed",
    }
    again = rt.invoke("small", v, {"mb": 16})
    assert again.ok and again.payload["pid"] != ok.payload["pid"]  # the worker was replaced
