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
# and the middle-sized ones go to whichever worker finishes first. Sizes: --durations of the whole suite
# beside a 30-minute soak at 50 req/s (2026-11-30; ≈ 1.7× a quiet run's). A simulation of this hand-out
# with those sizes ends all four workers within 3 s of each other.
SLOW_MODULES = (  # seconds of one run with the other modules beside it
    "integration/test_runbooks.py",  # ≈ 242 s
    "integration/test_deploy.py",  # ≈ 243 s
    "integration/test_emergency.py",  # ≈ 205 s
    "integration/test_runbooks_data.py",  # ≈ 316 s
    "integration/test_e2e.py",  # ≈ 52 s   (the second round: the longest first round gets the shortest)
    "integration/test_emergency_after_success.py",  # ≈ 41 s
    "integration/test_analysis_live.py",  # ≈ 60 s
    "integration/test_scaffold.py",  # ≈ 54 s
    "integration/test_drills.py",  # ≈ 154 s   (then to whichever worker is free first)
    "integration/test_platform.py",  # ≈ 179 s
    "integration/test_soak.py",  # ≈ 161 s (issue 12: the shortened soak)
    "integration/test_deploy_control.py",  # ≈ 147 s
    "integration/test_drills_failures.py",  # ≈ 116 s
    "integration/test_crash_deployments.py",  # `long` (make test-long): supervisor kills and restarts
    "integration/test_sqs_local.py",  # ≈ 86 s
    "integration/test_crash_jobs.py",  # `long`
    "aws/test_takeover.py",  # ≈ 151 s (tests/aws: two supervisors on one state table)
    "integration/test_dashboard_browser.py",  # ≈ 76 s (a supervisor and Chromium)
    "integration/test_ci_example.py",  # ≈ 73 s (the example workflow's steps, one supervisor at a time)
)


def _rank(item: pytest.Item) -> int:
    name = item.path.name
    where = f"{item.path.parent.name}/{name}"
    if where in SLOW_MODULES:  # end-to-end modules, wherever they live (tests/aws has one)
        return SLOW_MODULES.index(where)
    if "integration" in item.path.parts:
        return len(SLOW_MODULES)
    return len(SLOW_MODULES) + (1 if "aws" in item.path.parts else 2)


def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config, items: list[pytest.Item]) -> None:
    order = {id(it): i for i, it in enumerate(items)}
    items.sort(key=lambda it: (_rank(it), order[id(it)]))
