"""The CLI against hostile or broken input: text that looks like rich markup, a manifest that is a
directory or a binary file, a damaged control or platform database. Each is one line on stderr and
exit code 2, never a traceback."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from backout.control.store import Store
from backout.errors import UsageError
from backout.statefiles import check_database
from support import cli_in_process

MANIFEST = """
[service]
name = "svc"
source = "src"

[functions.api]
handler = "app.handler"
events = [{ http = "GET /health" }]

[environments.staging]
gateway_port = 0
control_port = 0
state_dir = "{state}/staging"
"""


@pytest.fixture
def manifest(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    p = tmp_path / "backout.toml"
    p.write_text(MANIFEST.replace("{state}", str(tmp_path / "state")))
    monkeypatch.delenv("BACKOUT_ENV", raising=False)
    yield p


def cli(manifest: Path, *args: str) -> tuple[int, str]:
    code, _, err = cli_in_process(manifest, *args)
    return code, err


def one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


@pytest.mark.parametrize("hostile", ["[/x]", "[bold red]x[/]", "[link=http://evil.example]y", "\\[/x]"])
def test_an_argument_that_looks_like_markup_is_printed_as_text(manifest: Path, hostile: str) -> None:
    code, err = cli(manifest, "--env", hostile, "status")
    assert code == 2
    assert hostile in one_line(err)  # verbatim: not interpreted, not swallowed


def test_a_manifest_that_is_a_directory_or_binary_is_one_line(manifest: Path, tmp_path: Path) -> None:
    code, err = cli(tmp_path, "status")
    assert code == 2 and "is a directory" in one_line(err)
    binary = tmp_path / "binary.toml"
    binary.write_bytes(bytes(range(256)) * 4)
    code, err = cli(binary, "status")
    assert code == 2 and "not a text file" in one_line(err)


def _damage(path: Path) -> None:
    """What a full disk or a bad copy leaves: the first half of the file."""
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _populated(path: Path) -> Path:
    con = sqlite3.connect(path)
    con.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
    con.executemany("INSERT INTO t (v) VALUES (?)", [("x" * 500,)] * 200)
    con.commit()
    con.close()
    return path


def test_a_truncated_database_is_named_with_a_pointer_to_backup_restore(tmp_path: Path) -> None:
    db = _populated(tmp_path / "platform.db")
    check_database(db, "staging")  # intact: nothing to say
    _damage(db)
    with pytest.raises(UsageError) as e:
        check_database(db, "staging")
    msg = str(e.value)
    assert str(db) in msg and "damaged" in msg and "backout backup restore ID --env staging" in msg
    garbage = tmp_path / "control.db"
    garbage.write_bytes(b"not a database at all" * 100)
    with pytest.raises(UsageError, match="is damaged .*file is not a database"):
        Store(garbage)


def test_a_damaged_control_db_is_one_line_and_exit_2_in_the_cli(manifest: Path, tmp_path: Path) -> None:
    state = tmp_path / "state" / "staging"
    state.mkdir(parents=True)
    Store(state / "control.db").close()  # a real control.db, as a supervisor leaves it
    _damage(state / "control.db")
    (state / "control.db").write_bytes((state / "control.db").read_bytes()[:100] + b"\0" * 4000)
    code, err = cli(manifest, "incident", "list")
    line = one_line(err)
    assert code == 2 and "control.db is damaged" in line and "backout backup restore" in line
