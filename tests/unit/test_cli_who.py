"""Who the audit trail names: BACKOUT_USER (a CI job sets it from the approver), else the login."""

from __future__ import annotations

import getpass

import pytest

from backout.cli.inputs import who


def test_backout_user_names_the_operator(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BACKOUT_USER", " octo-reviewer ")
    assert who() == "octo-reviewer"


@pytest.mark.parametrize("value", [None, "", "   "])
def test_without_backout_user_the_login_name(monkeypatch: pytest.MonkeyPatch, value: str | None) -> None:
    if value is None:
        monkeypatch.delenv("BACKOUT_USER", raising=False)
    else:
        monkeypatch.setenv("BACKOUT_USER", value)
    monkeypatch.setattr(getpass, "getuser", lambda: "login-name")
    assert who() == "login-name"
