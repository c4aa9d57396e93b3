"""Every configuration error of an aws environment as one line and exit code 2 (a stack that does
not exist is in test_stack.py, with the other CloudFormation calls)."""

from __future__ import annotations

import pytest

from aws.conftest import Stack, cli

# (what is wrong, the edit of a working manifest, the command, what its one line must say)
CASES = [
    ("no region", lambda t, s: t.replace('region = "us-east-1"\n', ""), ["stack", "status"],
     "aws.region: Field required"),
    ("a stack and explicit names", lambda t, s: t.replace("[environments.staging.aws]",
                                                          '[environments.staging.aws]\nstack = "x"'),
     ["stack", "status"], "give either stack or explicit names"),
    ("an aws table on the local platform", lambda t, s: t.replace('platform = "aws"', 'platform = "local"'),
     ["stack", "status"], 'an "aws" table needs platform'),
    ("stack status without a stack", lambda t, s: t, ["stack", "status"],
     "names its resources explicitly: there is no stack"),
    ("a function the manifest lacks", lambda t, s: t.replace(f'{s.worker} = "', 'nope = "'), ["up"],
     "functions: no function named 'nope'"),
    ("a Lambda function that does not exist", lambda t, s: t.replace(s.functions[s.api], "no-such-function"),
     ["up"], "no-such-function"),
    ("a queue that does not exist", lambda t, s: t.replace('queues = {', 'queues = { "processing" = "no-such-queue", '
                                                           '"x" = "y", ').replace('"processing" = "http',
                                                                                  '"ignored" = "http'),
     ["up"], "queues"),
    ("an alarm that does not exist", lambda t, s: t + 'alarms = ["no-such-alarm"]\n', ["up"],
     "no CloudWatch alarm named no-such-alarm"),
]


def test_every_configuration_error_is_one_line_and_exit_2(names: Stack, capsys: pytest.CaptureFixture[str],
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """One test over every case (they share the names and the server; each is one CLI run in-process)."""
    stack = names
    stack.source("src", "r1")
    path = stack.root / "backout.toml"
    wrong = []
    for what, edit, args, message in CASES:
        path.write_text(edit(stack.manifest_text(), stack))
        code, out, err = cli(capsys, monkeypatch, path, *args, "--env", "staging")
        if code != 2 or len(err.strip().splitlines()) != 1 or message not in err:
            wrong.append(f"{what}: exit {code}, stdout {out!r}, stderr {err!r} (expected one line with {message!r})")
    assert not wrong, "\n".join(wrong)
