"""A release holds its functions' configuration: `backout publish` and `backout deploy` send it from the
operator's `backout.toml` (the running supervisor read its copy before the edit), and `backout releases
--diff A B` shows what changed. The CLI in-process against the control API served on a real socket, over a
FakePlatform."""

from __future__ import annotations

import fcntl
import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from backout.cli import context
from backout.cli.main import run
from backout.server.app import build_app
from backout.server.controller import Controller
from backout.server.endpoints import ENDPOINTS, LOCK, read_token
from fakes import FakeClock, FakePlatform, write_manifest
from served import serve


class Cli:
    def __init__(self, manifest: Path, fake: FakePlatform, monkeypatch: pytest.MonkeyPatch,
                 capsys: pytest.CaptureFixture[str]) -> None:
        self.manifest, self.fake, self.monkeypatch, self.capsys = manifest, fake, monkeypatch, capsys

    def __call__(self, *args: str) -> tuple[int, str, str]:
        self.monkeypatch.setattr(sys, "argv", ["backout", "--manifest", str(self.manifest), *args])
        with pytest.raises(SystemExit) as exc:
            run()
            raise SystemExit(0)
        out = self.capsys.readouterr()
        return int(exc.value.code or 0), out.out, out.err

    def edit(self, old: str, new: str) -> None:
        """The operator changes backout.toml after the supervisor started."""
        text = self.manifest.read_text()
        assert old in text
        self.manifest.write_text(text.replace(old, new, 1))


@pytest.fixture
def cli(tmp_path: Path, fast_evaluations: None, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> Iterator[Cli]:
    monkeypatch.delenv("BACKOUT_ENV", raising=False)
    manifest = write_manifest(tmp_path)
    fake = FakePlatform(manifest, "staging", clock=FakeClock())
    state = manifest.state_dir("staging")
    controller = Controller(manifest, "staging", fake, state)
    controller.deployer.clock = fake.clock.now
    try:
        with serve(build_app(controller, read_token(state))) as url, (state / LOCK).open("a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # as a live supervisor holds it
            (state / ENDPOINTS).write_text(json.dumps(
                {"pid": os.getpid(), "env": "staging", "gateway_url": url, "control_url": url}))
            yield Cli(manifest.path, fake, monkeypatch, capsys)
    finally:
        controller.close()
        fake.close()
        context.SETTINGS.env = None
        context.SETTINGS._manifest = None


def test_publish_and_deploy_carry_the_edited_configuration_and_diff_shows_it(cli: Cli) -> None:
    cli.edit('timeout = "5s"', 'timeout = "1s"')
    code, out, err = cli("publish", "--json")
    assert code == 0, err
    r2 = json.loads(out)
    assert r2["id"] == 2 and r2["versions"]["worker"] == "12" and r2["versions"]["api"] == "1", r2
    assert r2["configuration"]["worker"]["timeout"] == 1.0, "a configuration-only change is a release"

    code, out, err = cli("releases", "--diff", "1", "2")
    assert code == 0, err
    assert "r1 → r2: 1 configuration key(s) of worker" in out
    assert [[c.strip() for c in line.split("│")[1:5]] for line in out.splitlines() if "timeout" in line] == [
        ["worker", "timeout", "5", "1"]]
    assert "does not list a release's files" in out
    code, out, _ = cli("releases", "--diff", "1", "2", "--json")
    d = json.loads(out)
    assert d["configuration"] == {"worker": {"timeout": [5.0, 1.0]}} and d["same"] is False
    assert (d["changed"], d["added"], d["removed"], d["files_listed"]) == ([], [], [], False)
    code, _, err = cli("releases", "--diff", "1", "9")
    assert code == 2 and "unknown release 9 (published: 1, 2)" in err

    cli.edit('timeout = "1s"', 'timeout = "1s"\nmemory = 512')
    code, out, err = cli("deploy", "--no-wait", "--json")
    assert code == 0, err
    target = cli.fake.releases()[-1]
    assert json.loads(out)["deployment"]["target_release"] == target.id == 3
    assert (target.configuration["worker"].timeout, target.configuration["worker"].memory) == (1.0, 512)
