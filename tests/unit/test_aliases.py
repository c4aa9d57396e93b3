"""Aliases: the live alias of each function, persisted in the platform db, read from memory."""

from __future__ import annotations

import random
import sqlite3
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
from scipy.stats import chisquare

from backout.errors import UsageError
from backout.platforms.local.aliases import Aliases
from backout.platforms.local.aliases import Weights as AliasWeights


def test_set_get_and_persist_across_instances(tmp_path: Path) -> None:
    db = tmp_path / "platform.db"
    a = Aliases(db)
    a.set("api", 1)
    a.set("worker", 2, 3, 10.0)
    assert a.get("api") == AliasWeights("api", 1)
    assert a.get("worker") == AliasWeights("worker", 2, 3, 10.0)
    a.set("worker", 2, 3, 50.0)  # a weight change replaces the row
    a.close()
    b = Aliases(db)
    assert b.all() == {"api": AliasWeights("api", 1), "worker": AliasWeights("worker", 2, 3, 50.0)}
    assert b.get("worker").versions == {2: 50.0, 3: 50.0}


def test_shares_the_db_with_other_tables(tmp_path: Path) -> None:
    db = tmp_path / "platform.db"
    with sqlite3.connect(db) as c:
        c.execute("CREATE TABLE queues(name TEXT PRIMARY KEY)")
        c.execute("INSERT INTO queues VALUES ('processing')")
    a = Aliases(db)
    a.set("api", 4)
    with sqlite3.connect(db) as c:
        assert c.execute("SELECT name FROM queues").fetchall() == [("processing",)]
        assert c.execute("SELECT * FROM aliases").fetchall() == [("api", 4, None, 0.0)]
        assert c.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    a.close()


def test_unknown_function_and_validation(tmp_path: Path) -> None:
    a = Aliases(tmp_path / "platform.db")
    with pytest.raises(UsageError, match="'api' has no live alias"):
        a.get("api")
    with pytest.raises(UsageError, match="between 0 and 100"):
        a.set("api", 1, 2, 100.5)
    with pytest.raises(UsageError, match="between 0 and 100"):
        a.set("api", 1, 2, -1)
    with pytest.raises(UsageError, match="needs a canary version"):
        a.set("api", 1, None, 10)
    with pytest.raises(UsageError, match="positive integer"):
        a.set("api", 0)
    with pytest.raises(UsageError, match="positive integer"):
        a.set("api", 1, -2, 5)
    assert a.all() == {}  # nothing invalid was stored


def test_full_weight_sends_everything_to_the_canary(tmp_path: Path) -> None:
    a = Aliases(tmp_path / "platform.db")
    w = a.set("api", 1, 2, 100)
    assert w.versions == {2: 100.0}
    rnd = random.Random(1)
    assert {w.pick(rnd) for _ in range(500)} == {2}
    back = a.set("api", 1)  # rollback: 100 % stable
    assert back.versions == {1: 100.0} and {back.pick(rnd) for _ in range(100)} == {1}


def test_weighted_pick_matches_90_10(tmp_path: Path) -> None:
    a = Aliases(tmp_path / "platform.db")
    a.set("api", 1, 2, 10.0)
    rnd = random.Random(20240611)
    n = 2000
    counts = Counter(a.get("api").pick(rnd) for _ in range(n))
    assert set(counts) == {1, 2}
    result = chisquare([counts[1], counts[2]], f_exp=[0.9 * n, 0.1 * n])
    assert result.pvalue > 0.001
    # The test can fail: a 50/50 split is clearly rejected.
    assert chisquare([counts[1], counts[2]], f_exp=[0.5 * n, 0.5 * n]).pvalue < 1e-9


def test_readers_never_see_a_half_applied_change(tmp_path: Path) -> None:
    """Writers keep canary == stable + 1 and weight == stable; concurrent readers must always agree."""
    a = Aliases(tmp_path / "platform.db")
    a.set("api", 1, 2, 1.0)
    stop = threading.Event()
    bad: list[AliasWeights] = []
    reads = 0

    def reader() -> None:
        nonlocal reads
        while not stop.is_set():
            w = a.get("api")
            reads += 1
            if w.canary != w.stable + 1 or w.canary_weight != float(w.stable):
                bad.append(w)
            time.sleep(0)  # let the writers have the GIL

    def writer(offset: int) -> None:
        for i in range(1, 60):
            s = (i * 2 + offset) % 99 + 1
            a.set("api", s, s + 1, float(s))

    readers = [threading.Thread(target=reader) for _ in range(3)]
    writers = [threading.Thread(target=writer, args=(k,)) for k in range(3)]
    for t in readers + writers:
        t.start()
    for t in writers:
        t.join()
    stop.set()
    for t in readers:
        t.join()
    assert not bad and reads > 0
    # The db agrees with the cache after concurrent writes.
    assert Aliases(tmp_path / "platform.db").get("api") == a.get("api")
