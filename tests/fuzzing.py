"""Hypothesis settings profiles for the fuzz tests: `make test` runs a short one; the figures in
RELIABILITY.md come from `HYPOTHESIS_PROFILE=long` (many more cases per test)."""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

_COMMON = {
    "deadline": None,  # a loaded 2-core machine: no timing in tests
    "suppress_health_check": [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much,
                              HealthCheck.function_scoped_fixture],
    "derandomize": False,
    "database": None,  # nothing written into the repository
}
settings.register_profile("short", max_examples=40, **_COMMON)
settings.register_profile("long", max_examples=2000, **_COMMON)
PROFILE = os.environ.get("HYPOTHESIS_PROFILE", "short")
settings.load_profile(PROFILE)


def examples(short: int) -> settings:
    """`short` cases per test in `make test`, the long profile's count under HYPOTHESIS_PROFILE=long."""
    return settings(max_examples=short if PROFILE == "short" else settings.get_profile(PROFILE).max_examples)
