"""Both control stores implement `ControlStore` with the same signatures, so the deployer, the runbooks
and the API run unchanged on either (the behaviour of each is tested in test_store.py and, on moto,
tests/aws/test_shared_state.py)."""

from __future__ import annotations

import inspect

import pytest

from backout.control.lease import Leases
from backout.control.shared_store import SharedStore
from backout.control.store import ControlStore, Store

METHODS = sorted(n for n, v in vars(ControlStore).items() if inspect.isfunction(v) and not n.startswith("_"))


@pytest.mark.parametrize("impl", [Store, SharedStore], ids=["sqlite", "dynamodb"])
def test_each_store_has_every_method_of_the_interface_with_its_parameters(impl: type) -> None:
    assert len(METHODS) > 25
    for name in METHODS:
        wanted = inspect.signature(getattr(ControlStore, name)).parameters
        got = inspect.signature(getattr(impl, name)).parameters
        assert [(p.name, p.kind, p.default) for p in got.values()] == [
            (p.name, p.kind, p.default) for p in wanted.values()], f"{impl.__name__}.{name}"


def test_only_the_shared_store_has_leases() -> None:
    leases = sorted(n for n, v in vars(Leases).items() if inspect.isfunction(v) and not n.startswith("_"))
    assert leases == ["holds", "lease", "release", "renew", "request", "requests", "take_over"]
    assert all(callable(getattr(SharedStore, n)) for n in leases)
    assert not any(hasattr(Store, n) for n in ("take_over", "renew", "requests"))
