"""Notification targets set in backout.toml (issue 14, point 6): `notify = ["json://…"]` with a secret
taken from an environment variable, every kind of notification reaching a real HTTP receiver on
127.0.0.1 (deployment events, incident opened, emergency stop, resume, incident resolved), and the
secret never in the logs, the control store, the API's answers or the CLI's output."""

from __future__ import annotations

import logging
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from backout.cli import main as cli_main
from backout.control import states as st
from backout.control.notify import Notifier
from backout.control.strategies import Step, Strategy
from backout.errors import UsageError
from backout.manifest import NotifySpec
from fakes import ControlPlane, new_source, write_manifest
from support import Receiver, wait_for

TOKEN = "control-token"
VAR = "BACKOUT_TEST_HOOK_TOKEN"
CONTACTS = '[contacts.on_call]\nname = "Dana Lee"\nchannel = "#incidents"\n'


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


def closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def test_the_string_form_and_the_table_form_both_load(tmp_path: Path) -> None:
    m = write_manifest(tmp_path, staging='notify = ["json://127.0.0.1:9/a", '
                                         '{ url = "json://127.0.0.1:9/b", min_severity = "critical" }]')
    assert m.environments["staging"].notify == [NotifySpec(url="json://127.0.0.1:9/a"),
                                               NotifySpec(url="json://127.0.0.1:9/b", min_severity="critical")]


def test_an_unset_variable_is_a_usage_error_naming_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(VAR, raising=False)
    with pytest.raises(UsageError, match=f"needs the environment variable {VAR}, which is not set"):
        Notifier([NotifySpec(url=f"json://127.0.0.1:9/hook/${{{VAR}}}")])


def test_every_kind_reaches_the_receiver_and_the_secret_appears_nowhere(
    tmp_path: Path, receiver: Receiver, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
    fast_evaluations: None,
) -> None:
    secret = f"s3cret-{uuid.uuid4().hex}"
    monkeypatch.setenv(VAR, secret)
    monkeypatch.delenv("BACKOUT_ENV", raising=False)
    caplog.set_level(logging.DEBUG)
    live = f'"json://127.0.0.1:{receiver.port}/hook/${{{VAR}}}"'
    m = write_manifest(tmp_path, staging=f"notify = [{live}]\n{CONTACTS}")
    assert secret not in (tmp_path / "backout.toml").read_text()

    # the supervisor's side: a deployment, an emergency stop that rolls it back, resume
    plane = ControlPlane(tmp_path, token=TOKEN, manifest=m, state_dir=m.state_dir("staging"))
    fake, controller, api, auth = plane.fake, plane.controller, plane.client, plane.auth
    try:
        r1, r2 = fake.releases()[0], fake.publish(new_source(tmp_path, "v2", ["worker"]))
        d = controller.deployer.create(release=r2.id, strategy_obj=Strategy("Now", (Step(100.0, 0.0),)))
        controller.deployer._threads[d.id].join(10)
        assert controller.store.get(d.id).status == st.SUCCEEDED
        stop = api.post("/emergency-stop", headers=auth, json={"reason": "wrong totals", "who": "alice"}).json()
        assert stop["rolled_back"]["from"] == r2.id
        assert api.post("/resume", headers=auth, json={"who": "alice"}).json()["restored"] == ["api", "processing"]
        status = api.get("/status", headers=auth)
        assert status.json()["notify"] == [f"json://127.0.0.1:{receiver.port}/hook/${{{VAR}}}"]
        assert status.json()["contacts"] == [{"role": "on call", "name": "Dana Lee", "channel": "#incidents"}]
        assert secret not in status.text
        assert controller.notifier.flush(15)
    finally:
        plane.close()

    # after the fact, from the CLI (no supervisor): close the incident, with a second target that is down
    dead = f'{{ url = "json://127.0.0.1:{closed_port()}/down/${{{VAR}}}" }}'
    (tmp_path / "backout.toml").write_text((tmp_path / "backout.toml").read_text().replace(live, f"{live}, {dead}"))
    out = CliRunner().invoke(cli_main.app, ["--manifest", str(tmp_path / "backout.toml"), "incident", "close",
                                            stop["incident"], "--root-cause", "a bad totals migration"])
    assert out.exit_code == 0, out.output
    assert "[Resolved]" in out.output and "Cause: a bad totals migration." in out.output
    assert "resolution notification to json://127.0.0.1:" in out.output and f"/down/${{{VAR}}}" in out.output

    titles = [m["title"] for m in wait_for(lambda: receiver.received if len(receiver.received) >= 7 else None,
                                           timeout=15, what="seven notifications")]
    assert titles == [
        f"[svc/staging] deployment {d.id} started: {r1.label()} → {r2.label()}",
        f"[svc/staging] deployment {d.id}: 100 % on {r2.label()}",
        f"[svc/staging] deployment {d.id} succeeded: {r2.label()} serves 100 %",
        f"[svc/staging] incident {stop['incident']} opened",
        "[svc/staging] emergency stop",
        "[svc/staging] service resumed after the emergency stop",
        f"[svc/staging] incident {stop['incident']} resolved",
    ]
    assert {m["path"] for m in receiver.received} == {f"/hook/{secret}"}  # the variable was filled in to send
    assert all(m["message"].endswith("Contacts:\n  - on call: Dana Lee (#incidents)") for m in receiver.received)
    resolved = receiver.received[-1]["message"]
    assert "Status page / customer notice:\n[Resolved] svc (staging)" in resolved
    assert "Reason: root cause: a bad totals migration" in resolved

    # never printed, logged or stored: the CLI's output, every log record (apprise's debug lines with the
    # URL included), the control store's files
    assert secret not in out.output
    assert "Socket Exception" in caplog.text and f"/down/${{{VAR}}}" in caplog.text, "apprise's debug lines"
    assert secret not in caplog.text
    state = m.state_dir("staging")
    files = [p for p in state.rglob("*") if p.is_file()]
    assert any(p.name == "control.db" for p in files)
    assert not [p for p in files if secret.encode() in p.read_bytes()]
