"""Fixtures the control plane's unit tests share: a World on the FakePlatform, and the runner's real wait
between evaluations shortened (time itself is the FakeClock's)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from backout.control import deployer as deployer_mod
from fakes import World


@pytest.fixture
def fast_evaluations(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(deployer_mod, "EVAL_INTERVAL", 0.1)


@pytest.fixture
def world(tmp_path: Path, fast_evaluations: None) -> Iterator[World]:
    w = World(tmp_path)
    yield w
    w.close()
