"""Releases: immutable, numbered, content-hashed copies of the service's code."""

from __future__ import annotations

import dataclasses
import json
import os
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from backout.errors import UsageError
from backout.manifest import load_manifest
from backout.platforms.base import FunctionConfig
from backout.platforms.local.platform import LocalPlatform
from backout.platforms.local.releases import Releases
from backout.redact import redact_data
from backout.runbooks.release_diff import diff_releases


def write_tree(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    return root


@pytest.fixture
def source(tmp_path: Path) -> Path:
    return write_tree(
        tmp_path / "src",
        {
            "app/__init__.py": "",
            "app/h.py": "def handler(event, context):\n    return 1\n",
            "app/__pycache__/h.cpython-311.pyc": "junk",
            "app/stale.pyc": "junk",
            "app/.git/HEAD": "ref",
            "other/x.py": "X = 1\n",
            "top.py": "T = 1\n",
        },
    )


def files_of(d: Path) -> set[str]:
    return {p.relative_to(d).as_posix() for p in d.rglob("*") if p.is_file() and "__pycache__" not in p.parts}


def test_publish_copies_only_named_packages_and_skips_caches(tmp_path: Path, source: Path) -> None:
    r = Releases(tmp_path / "state")
    v = r.publish(source, ["app", "top.py"], description="first")
    assert v == 1
    wrapper = {f for f in files_of(r.code_dir(1)) if f.startswith("backout_lambda/")}
    assert "backout_lambda/__init__.py" in wrapper  # every release carries backout's handler wrapper
    assert files_of(r.code_dir(1)) - wrapper == {"app/__init__.py", "app/h.py", "top.py"}
    info = r.get(1)
    assert info.description == "first" and len(info.digest) == 64 and info.environment == {}
    # No packages named: everything at the top level.
    r2 = Releases(tmp_path / "state2")
    r2.publish(source, [])
    assert files_of(r2.code_dir(1)) - wrapper == {"app/__init__.py", "app/h.py", "other/x.py", "top.py"}


def test_same_content_same_version_changed_content_new_version(tmp_path: Path, source: Path) -> None:
    r = Releases(tmp_path / "state")
    assert r.publish(source, ["app"]) == 1
    assert r.publish(source, ["app"], description="retry") == 1  # same content → same version
    (source / "app/__pycache__/h.cpython-311.pyc").write_text("other junk")  # skipped files don't count
    assert r.publish(source, ["app"]) == 1
    (source / "app/h.py").write_text("def handler(event, context):\n    return 2\n")
    assert r.publish(source, ["app"]) == 2
    (source / "app/new.py").write_text("")
    assert r.publish(source, ["app"]) == 3
    assert [i.version for i in r.list()] == [1, 2, 3]
    assert len({i.digest for i in r.list()}) == 3
    # The old release kept its content.
    assert "return 1" in (r.code_dir(1) / "app/h.py").read_text()
    assert "return 2" in (r.code_dir(3) / "app/h.py").read_text()
    # A new Releases object on the same dir sees the same versions (index.json is the truth).
    assert [i.version for i in Releases(tmp_path / "state").list()] == [1, 2, 3]


def test_environment_override_changes_the_digest(tmp_path: Path, source: Path) -> None:
    r = Releases(tmp_path / "state")
    v1 = r.publish(source, ["app"])
    v2 = r.publish(source, ["app"], environment={"BACKOUT_FAULT": "errors=0.5"})
    v3 = r.publish(source, ["app"], environment={"BACKOUT_FAULT": "crash"})
    assert (v1, v2, v3) == (1, 2, 3)
    assert r.publish(source, ["app"], environment={"BACKOUT_FAULT": "errors=0.5"}) == 2
    assert r.get(2).environment == {"BACKOUT_FAULT": "errors=0.5"}
    assert r.get(1).digest != r.get(2).digest


def test_release_is_read_only(tmp_path: Path, source: Path) -> None:
    r = Releases(tmp_path / "state")
    d = r.code_dir(r.publish(source, ["app"]))
    paths = [d, *d.rglob("*")]
    assert len(paths) > 3
    for p in paths:
        mode = stat.S_IMODE(p.stat().st_mode)
        assert mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH) == 0, p
    # Bytecode was compiled at publish time, so read-only workers still start from .pyc.
    assert list((d / "app" / "__pycache__").glob("h.*.pyc"))
    if os.geteuid() != 0:  # root ignores permission bits
        with pytest.raises(PermissionError):
            (d / "app/h.py").write_text("changed")


def test_unknown_version_and_bad_sources(tmp_path: Path, source: Path) -> None:
    r = Releases(tmp_path / "state")
    with pytest.raises(UsageError, match=r"^unknown version 1 \(published: none\)$"):
        r.get(1)
    r.publish(source, ["app"])
    (source / "app/h.py").write_text("changed = True\n")
    r.publish(source, ["app"])
    (source / "app/h.py").write_text("changed = 3\n")
    r.publish(source, ["app"])
    with pytest.raises(UsageError, match=r"^unknown version 7 \(published: 1, 2, 3\)$"):
        r.get(7)
    with pytest.raises(UsageError, match="unknown version 9"):
        r.code_dir(9)
    with pytest.raises(UsageError, match="does not exist"):
        r.publish(tmp_path / "nope", ["app"])
    with pytest.raises(UsageError, match="'missing' not found"):
        r.publish(source, ["app", "missing"])


def test_leftovers_of_a_crashed_publish_are_swept(tmp_path: Path, source: Path) -> None:
    r = Releases(tmp_path / "state")
    r.publish(source, ["app"])
    # A crash after the rename but before the index write, and one in the middle of copying.
    (r.root / "v2" / "app").mkdir(parents=True)
    (r.root / "v2" / "app" / "h.py").write_text("half")
    (r.root / ".tmp-dead" / "app").mkdir(parents=True)
    (source / "app/h.py").write_text("def handler(event, context):\n    return 22\n")
    assert r.publish(source, ["app"]) == 2
    assert "return 22" in (r.code_dir(2) / "app/h.py").read_text()
    assert not (r.root / ".tmp-dead").exists()
    assert json.loads((r.root / "index.json").read_text())["versions"][-1]["version"] == 2


_PUBLISH = """
import sys, time
from pathlib import Path
from backout.platforms.local.releases import Releases
r = Releases(Path(sys.argv[1]))
time.sleep(max(0.0, float(sys.argv[3]) - time.time()))  # all start publishing at the same instant
print(r.publish(Path(sys.argv[2]), ["app"]))
"""


def test_two_processes_publishing_at_once(tmp_path: Path, source: Path) -> None:
    other = write_tree(tmp_path / "src2", {"app/__init__.py": "", "app/h.py": "VARIANT = 2\n"})
    state = tmp_path / "state"
    cmd = [sys.executable, "-c", _PUBLISH, str(state)]
    sources = (source, other, source, other)
    at = str(time.time() + 1.0)
    procs = [subprocess.Popen([*cmd, str(s), at], stdout=subprocess.PIPE, text=True) for s in sources]
    outs = [int(p.communicate(timeout=60)[0]) for p in procs]
    assert all(p.returncode == 0 for p in procs)
    assert outs[0] == outs[2] and outs[1] == outs[3] and {outs[0], outs[1]} == {1, 2}
    r = Releases(state)
    assert [i.version for i in r.list()] == [1, 2]
    assert sorted(p.name for p in r.root.iterdir() if p.is_dir()) == ["v1", "v2"]


# --- configuration: a release holds each function's, as a Lambda version does ---------------------
def test_a_configuration_only_change_is_a_new_version_and_is_kept_with_it(tmp_path: Path, source: Path) -> None:
    r = Releases(tmp_path / "state")
    good = {"f": FunctionConfig("app.h.handler", 30.0, 256, {"MODE": "good"})}
    v1 = r.publish(source, ["app"], configuration=good)
    assert r.publish(source, ["app"], configuration=good, description="retry") == v1
    for change in ({"timeout": 1.0}, {"memory": 512}, {"environment": {"MODE": "bad"}}, {"handler": "app.h.other"}):
        config = {"f": dataclasses.replace(good["f"], **change)}
        v = r.publish(source, ["app"], configuration=config)
        assert v == r.list()[-1].version and v > v1, f"{change} is a release of its own"
        assert Releases(tmp_path / "state").get(v).configuration == config  # read back from index.json
        assert r.files(v) == r.files(v1), "same code"
    assert r.get(v1).configuration == good
    assert Releases(tmp_path / "other").publish(source, ["app"]) == 1  # none given: the manifest's applies
    assert Releases(tmp_path / "other").get(1).configuration == {}


WORKER = """
import os, time


def handler(event, context):
    time.sleep(event.get("sleep", 0))
    return {"memory": context.memory_limit_in_mb, "mode": os.environ.get("MODE"), "tier": os.environ.get("TIER"),
            "env": os.environ.get("BACKOUT_ENV")}
"""

PLATFORM_MANIFEST = """
[service]
name = "svc"
source = "src"
packages = ["app"]

[functions.worker]
handler = "app.h.handler"
timeout = "30s"
memory = 256
environment = { MODE = "good" }

[environments.test]
gateway_port = 0
control_port = 0
environment = { TIER = "test" }
"""


@pytest.fixture
def platform(tmp_path: Path) -> Iterator[LocalPlatform]:
    write_tree(tmp_path / "src", {"app/__init__.py": "", "app/h.py": WORKER})
    (tmp_path / "backout.toml").write_text(PLATFORM_MANIFEST)
    p = LocalPlatform(load_manifest(tmp_path / "backout.toml"), "test", tmp_path / "state")
    p.bootstrap()
    yield p
    p.close(drain_timeout=2)


def test_a_bad_configuration_change_deployed_then_rolled_back_runs_with_the_old_configuration_again(
    platform: LocalPlatform,
) -> None:
    """The local platform end to end, in-process: a release that changes only the worker's timeout, memory
    and a variable; the alias on it; the alias back (what every rollback does): the old configuration runs."""
    p = platform
    [r1] = p.releases()
    good = FunctionConfig("app.h.handler", 30.0, 256, {"MODE": "good", "TIER": "test"})  # function's + env's
    assert r1.configuration == {"worker": good}
    bad = FunctionConfig("app.h.handler", 0.5, 512, {"MODE": "bad", "TIER": "test"})
    r2 = p.publish(p.manifest.source_dir, configuration={"worker": bad}, description="worker timeout 0.5 s")
    assert (r2.id, r2.configuration) == (2, {"worker": bad}) and r2.digest != r1.digest
    assert p.publish(p.manifest.source_dir, configuration={"worker": bad}).id == 2, "a retry is the same release"

    p.set_weights("worker", "1", "2", 100)  # the bad change is live
    timed_out = p.invoke("worker", None, {"sleep": 0.8})
    assert (timed_out.version, timed_out.payload["errorType"]) == ("2", "Task timed out")
    assert p.invoke("worker", None, {}).payload == {"memory": 512, "mode": "bad", "tier": "test", "env": "test"}

    p.set_weights("worker", "1")  # rolled back
    back = p.invoke("worker", None, {"sleep": 0.8})
    assert back.ok and back.version == "1"
    assert back.payload == {"memory": 256, "mode": "good", "tier": "test", "env": "test"}

    drill = p.republish(1, {"BACKOUT_FAULT": "errors=1"})  # a drill's fault release keeps r1's configuration
    assert drill.configuration == r1.configuration and drill.environment == {"BACKOUT_FAULT": "errors=1"}
    with pytest.raises(UsageError, match="no function named nope"):
        p.publish(p.manifest.source_dir, configuration={"nope": good})


def test_release_diff_names_changed_files_and_configuration_keys(platform: LocalPlatform) -> None:
    p = platform
    src = p.manifest.source_dir
    (src / "app" / "h.py").write_text(WORKER + "\n# fixed\n")
    (src / "app" / "util.py").write_text("X = 1\n")
    config = {"worker": FunctionConfig("app.h.handler", 1.0, 256, {"TIER": "test", "NEW": "1"})}
    r2 = p.publish(src, configuration=config)
    d = diff_releases(p, 1, r2.id)
    assert d.files_listed and (d.changed, d.added, d.removed) == (["app/h.py"], ["app/util.py"], [])
    assert d.configuration == {"worker": {"timeout": (30.0, 1.0), "environment.MODE": ("good", None),
                                          "environment.NEW": (None, "1")}}
    assert diff_releases(p, r2.id, 1).removed == ["app/util.py"] and diff_releases(p, 1, 1).same
    with pytest.raises(UsageError, match="unknown release 9"):
        diff_releases(p, 1, 9)


def test_release_diff_shows_a_secret_changed_never_its_value(platform: LocalPlatform) -> None:
    p = platform
    secrets = {"API_TOKEN": "tok-3f9a1c77e2", "DB_PASSWORD": "hunter2-long", "HOOK": "https://u:pw-x91@h.example"}
    r2 = p.publish(p.manifest.source_dir, configuration={
        "worker": FunctionConfig("app.h.handler", 30.0, 256, {"MODE": "good", "TIER": "test", **secrets})})
    r3 = p.publish(p.manifest.source_dir, configuration={"worker": FunctionConfig(
        "app.h.handler", 30.0, 256, {"MODE": "good", "TIER": "test", "API_TOKEN": "tok-88b0d4e1aa"})})
    d = diff_releases(p, r2.id, r3.id).as_dict()
    assert d["configuration"]["worker"] == {"environment.API_TOKEN": ("***", "***"),
                                            "environment.DB_PASSWORD": ("***", None),
                                            "environment.HOOK": ("https://u:***@h.example", None)}
    text = json.dumps(redact_data(d))
    assert not any(v in text for v in ("tok-3f9a1c77e2", "tok-88b0d4e1aa", "hunter2-long", "pw-x91"))
    # --json masks a secret-named field's pair of values too, wherever they come from
    assert redact_data({"API_TOKEN": ["a-secret-value", None]}) == {"API_TOKEN": ["***", None]}
