"""A full disk during a deployment: SQLite's SQLITE_FULL ("database or disk is full") injected at the
control store's write path (every write from a chosen instant on fails as on a full file system).
Because the deployer writes the store before it touches the platform, the step whose write failed is
never applied: the store and the live aliases agree, the failure is logged with its cause, and once
space is back a restart finishes the deployment into a known state (Succeeded or RolledBack)."""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from backout.control import states as st
from backout.control.store import Store
from backout.runbooks.verify import expected_versions
from fakes import World


class FullDiskStore(Store):
    """A real Store whose writes fail with SQLite's disk-full error while `full` is set."""

    full = False

    @contextmanager
    def _write(self) -> Iterator[Session]:
        if self.full:
            raise OperationalError("COMMIT", {}, sqlite3.OperationalError("database or disk is full"))
        with super()._write() as s:
            yield s


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_a_full_disk_mid_deployment_leaves_store_and_aliases_in_agreement_and_a_restart_finishes_it(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    w = World(tmp_path, store=FullDiskStore)
    try:
        r1, r2 = w.fake.releases()[0], w.release("api", "worker")
        d = w.deploy(r2, (50, 5), (100, 0))
        w.wait(lambda: w.store.get(d.id).current_step == 0 and w.fake.live_versions() != w.live(r1),
               what="the first step: the canary has its 50 %")
        split = w.fake.live_versions()
        FullDiskStore.full = True  # the disk fills up while the step holds
        with caplog.at_level(logging.ERROR, logger="backout"):
            w.clock.advance(6)  # the hold ends: the next step's store write fails
            w.deployer._threads[d.id].join(10)
        assert not w.deployer._threads[d.id].is_alive(), "the runner ends instead of spinning on a full disk"
        assert "database or disk is full" in caplog.text  # the cause, in the log
        stored = w.store.get(d.id)
        assert stored.active and stored.current_step == 0  # nothing after the failed write was recorded…
        assert w.fake.live_versions() == split  # …and nothing after it applied: store and aliases agree

        FullDiskStore.full = False  # space is back; the supervisor starts again
        w.restart().resume()
        w.clock.advance(10)
        d = w.finish(d.id)
        assert d.status in (st.SUCCEEDED, st.ROLLED_BACK), d.status
        label, versions = expected_versions(w.store, w.env)
        assert w.fake.live_versions() == {fn: {v: 100.0} for fn, v in versions.items()}
    finally:
        FullDiskStore.full = False
        w.close()
