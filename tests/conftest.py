"""Run the end-to-end tests first.

pytest-xdist hands tests to its workers in collection order and balances only what is left, so a
90-second end-to-end test collected last runs alone while the other worker idles. Collected first,
the long tests overlap each other and the hundreds of short unit tests fill the gaps. Modules stay
contiguous (their module-scoped supervisors start once per worker); within the end-to-end modules
the longest tests go first.
"""

from __future__ import annotations

import pytest

# End-to-end modules, longest first (their total time, measured with --durations).
SLOW_MODULES = ("test_runbooks.py", "test_deploy.py", "test_platform.py", "test_e2e.py")
# Tests that take well over the median of their module: started first inside it.
LONGEST = ("test_drill_of_each_fault_kind", "test_rollback_after_deployments_warm", "test_approval_gate_waits")


def _rank(item: pytest.Item) -> tuple[int, int]:
    name = item.path.name
    module = SLOW_MODULES.index(name) if "integration" in item.path.parts and name in SLOW_MODULES else (
        len(SLOW_MODULES) if "integration" in item.path.parts else len(SLOW_MODULES) + 1
    )
    first = 0 if any(item.name.startswith(t) for t in LONGEST) else 1
    return module, first


def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config, items: list[pytest.Item]) -> None:
    order = {id(it): i for i, it in enumerate(items)}
    items.sort(key=lambda it: (*_rank(it), order[id(it)]))
