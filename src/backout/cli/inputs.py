"""What several command modules read from the operator besides their own options: who they are (recorded
with every change) and `--set-env KEY=VALUE` pairs. A leaf module, so that command modules never import
`main` or each other."""

from __future__ import annotations

import getpass

from backout.errors import UsageError


def who() -> str:
    """The operator's login name for the audit trail; "unknown" where the system has none (containers)."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


def parse_set_env(items: list[str]) -> dict[str, str]:
    """`--set-env KEY=VALUE` options as a dict; a UsageError names the malformed one."""
    out = {}
    for it in items:
        if "=" not in it:
            raise UsageError(f"--set-env {it!r}: expected KEY=VALUE")
        k, v = it.split("=", 1)
        out[k] = v
    return out
