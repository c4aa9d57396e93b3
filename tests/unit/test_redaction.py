"""One redaction helper for logs, incidents, reports and `--json`: secrets in URLs, registered values
from notification targets, secret-named environment variables; and release sources that are symlinks
out of the tree refused."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from backout import logs
from backout.cli.render import emit_json
from backout.errors import UsageError
from backout.platforms.local.releases import Releases
from backout.redact import REDACTOR, redact, redact_data, redact_env


def test_credentials_in_urls_and_secret_query_parameters_are_masked() -> None:
    text = ("POST https://ops:hunter2pw@hooks.example.com/x?channel=ops&token=abc123def&api_key=zz99 failed;"
            " see https://example.com/a?page=2")
    clean = redact(text)
    assert "hunter2pw" not in clean and "abc123def" not in clean and "zz99" not in clean
    assert "https://ops:***@hooks.example.com/x?channel=ops&token=***&api_key=***" in clean
    assert clean.endswith("https://example.com/a?page=2")  # ordinary URLs stay readable


def test_a_registered_secret_is_shown_as_its_placeholder() -> None:
    REDACTOR.add("xoxb-registered-secret-1", "${SLACK_TOKEN}")
    assert redact("slack://xoxb-registered-secret-1/#ops") == "slack://${SLACK_TOKEN}/#ops"


def test_secret_named_environment_variables_are_masked() -> None:
    env = {"DB_PASSWORD": "pw-1234", "GITHUB_TOKEN": "ghp_abc", "STRIPE_API_KEY": "sk_live", "REGION": "eu"}
    assert redact_env(env) == {"DB_PASSWORD": "***", "GITHUB_TOKEN": "***", "STRIPE_API_KEY": "***",
                               "REGION": "eu"}


@pytest.fixture
def log_stream() -> Iterator[io.StringIO]:
    out = io.StringIO()
    handler = logs.configure(logging.INFO, out)
    yield out
    logging.getLogger().removeHandler(handler)


def test_every_log_record_is_redacted_whichever_logger_wrote_it(log_stream: io.StringIO) -> None:
    logging.getLogger("some.library").warning("calling https://u:topsecretpw@h.example/x?sig=s1g4ture")
    logging.getLogger("backout.test").info("env", extra={"api_token": "tok-5678", "url": "https://a:b4c@x/"})
    text = log_stream.getvalue()
    assert "topsecretpw" not in text and "s1g4ture" not in text and "tok-5678" not in text and "b4c@" not in text
    records = [json.loads(line) for line in text.splitlines()]
    assert records[1]["api_token"] == "***" and records[1]["url"] == "https://a:***@x/"


def test_json_output_is_redacted(capsys: pytest.CaptureFixture[str]) -> None:
    emit_json({"environment": {"API_TOKEN": "t-0000", "MODE": "x"},
               "targets": ["https://u:pw-zz@hooks.example/x"], "incidents": [{"note": "retry ?token=abcd"}]})
    out = json.loads(capsys.readouterr().out)
    assert out == {"environment": {"API_TOKEN": "***", "MODE": "x"}, "targets": ["https://u:***@hooks.example/x"],
                   "incidents": [{"note": "retry ?token=***"}]}
    assert redact_data({"a": [1, 2.5, None, True]}) == {"a": [1, 2.5, None, True]}  # non-strings untouched


def test_a_release_source_symlinked_out_of_the_tree_is_refused(tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "app").mkdir(parents=True)
    (src / "app" / "h.py").write_text("def handler(e, c):\n    return 1\n")
    (src / "app" / "inside.py").symlink_to(src / "app" / "h.py")  # within the tree: fine
    releases = Releases(tmp_path / "state")
    assert releases.publish(src, ["app"], None) == 1
    outside = tmp_path / "secret.pem"
    outside.write_text("-----BEGIN PRIVATE KEY-----\n")
    (src / "app" / "key.pem").symlink_to(outside)
    with pytest.raises(UsageError, match=r"key.pem is a symlink out of the source tree"):
        releases.publish(src, ["app"], None)
    (src / "app" / "key.pem").unlink()
    (src / "app" / "etc").symlink_to(tmp_path, target_is_directory=True)  # a directory link too
    with pytest.raises(UsageError, match=r"etc is a symlink out of the source tree"):
        releases.publish(src, ["app"], None)
