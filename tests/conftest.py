"""Hand the longest test modules to the workers first.

`make test` runs pytest-xdist with `--dist loadfile`: each module goes whole to one worker, so a module's
supervisor starts once, and modules run side by side. The scheduler hands modules out in collection order,
so the end-to-end modules, longest first, are collected first; the hundreds of short unit tests then fill
the gaps instead of a long module starting last and running alone.
"""

from __future__ import annotations

import pytest

# End-to-end modules, longest first (their total time, measured with --durations).
SLOW_MODULES = (
    "test_deploy.py",
    "test_runbooks.py",
    "test_drills.py",
    "test_emergency.py",
    "test_platform.py",
    "test_analysis_live.py",
    "test_sqs_local.py",
    "test_scaffold.py",
    "test_emergency_after_success.py",
    "test_e2e.py",
)


def _rank(item: pytest.Item) -> int:
    name = item.path.name
    if "integration" in item.path.parts:
        return SLOW_MODULES.index(name) if name in SLOW_MODULES else len(SLOW_MODULES)
    return len(SLOW_MODULES) + (1 if "aws" in item.path.parts else 2)


def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config, items: list[pytest.Item]) -> None:
    order = {id(it): i for i, it in enumerate(items)}
    items.sort(key=lambda it: (_rank(it), order[id(it)]))
