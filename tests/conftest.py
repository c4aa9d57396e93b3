"""Hand the longest test modules to the workers first.

`make test` runs pytest-xdist with `--dist loadfile --no-loadscope-reorder`: each module goes whole to one
worker, so a module's supervisor starts once, modules run side by side, and they are handed out in
collection order. The end-to-end modules are collected first; the hundreds of short unit tests then fill
the gaps instead of a long module starting last and running alone.
"""

from __future__ import annotations

import pytest

# End-to-end modules. xdist hands each of its 4 workers one module, then a second one each, then the rest as
# workers free up: so the four longest come first, each followed (in the second round) by a short one,
# and the middle-sized ones go to whichever worker finishes first. Sizes measured with --durations.
SLOW_MODULES = (
    "test_soak.py",  # ≈ 120 s (issue 12: the shortened soak)
    "test_crash_deployments.py",  # ≈ 90 s (three supervisor kills and restarts)
    "test_crash_jobs.py",  # ≈ 60 s
    "test_deploy.py",  # ≈ 250 s
    "test_runbooks.py",  # ≈ 200 s
    "test_drills.py",  # ≈ 145 s
    "test_emergency.py",  # ≈ 130 s
    "test_e2e.py",  # ≈ 20 s
    "test_emergency_after_success.py",  # ≈ 20 s
    "test_scaffold.py",  # ≈ 45 s
    "test_sqs_local.py",  # ≈ 50 s
    "test_platform.py",  # ≈ 110 s
    "test_analysis_live.py",  # ≈ 40 s
)


def _rank(item: pytest.Item) -> int:
    name = item.path.name
    if "integration" in item.path.parts:
        return SLOW_MODULES.index(name) if name in SLOW_MODULES else len(SLOW_MODULES)
    return len(SLOW_MODULES) + (1 if "aws" in item.path.parts else 2)


def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config, items: list[pytest.Item]) -> None:
    order = {id(it): i for i, it in enumerate(items)}
    items.sort(key=lambda it: (_rank(it), order[id(it)]))
