"""The local platform's backup links the files that did not change since the newest snapshot
(`rsync --link-dest`), so a backup before every deployment costs the data that changed, and every
snapshot still restores exactly what it saw."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from bench.backup import local_platform

from backout.errors import UsageError
from backout.platforms.local.platform import LocalPlatform


@pytest.fixture
def platform(tmp_path: Path) -> Iterator[LocalPlatform]:
    p = local_platform(tmp_path)  # the backup benchmark's one-function service
    try:
        yield p
    finally:
        p.close()


def test_unchanged_files_are_linked_changed_ones_copied_and_each_snapshot_restores_what_it_saw(
    platform: LocalPlatform,
) -> None:
    data = platform.data_dir
    (data / "jobs").mkdir()
    (data / "jobs" / "kept.bin").write_bytes(b"k" * 4096)
    (data / "appended.log").write_text("one\n")
    (data / "rewritten.txt").write_text("AAAA")
    (data / "removed.txt").write_text("gone later")
    first = platform.backup("first")
    assert first.detail["unchanged"] == 0

    with (data / "appended.log").open("a") as f:
        f.write("two\n")
    st = (data / "rewritten.txt").stat()
    (data / "rewritten.txt").write_text("BBBB")  # same size, and its mtime put back: the ctime tells
    os.utime(data / "rewritten.txt", ns=(st.st_atime_ns, st.st_mtime_ns))
    (data / "removed.txt").unlink()
    (data / "jobs" / "new.bin").write_bytes(b"n")
    second = platform.backup("second")
    assert second.detail == {"databases": [], "files": 4, "unchanged": 1}
    assert platform.backups()[-1] == second

    one, two = platform.snapshot_path(first.id), platform.snapshot_path(second.id)
    assert (two / "jobs" / "kept.bin").stat().st_ino == (one / "jobs" / "kept.bin").stat().st_ino
    for rel in ("appended.log", "rewritten.txt"):
        assert (two / rel).stat().st_ino != (one / rel).stat().st_ino, rel
    assert (two / "rewritten.txt").read_text() == "BBBB" and (one / "rewritten.txt").read_text() == "AAAA"

    # a third backup links from the second, whose links lead back to the first: the chain holds
    third = platform.backup("third")
    assert third.detail["unchanged"] == 4

    platform.restore(first.id)
    assert (data / "appended.log").read_text() == "one\n"
    assert (data / "rewritten.txt").read_text() == "AAAA"
    assert (data / "removed.txt").read_text() == "gone later"
    assert not (data / "jobs" / "new.bin").exists()
    (data / "jobs" / "kept.bin").write_bytes(b"changed in place")  # the live copy, not a snapshot's
    assert (one / "jobs" / "kept.bin").read_bytes() == b"k" * 4096

    platform.restore(second.id)
    assert (data / "appended.log").read_text() == "one\ntwo\n"
    assert (data / "rewritten.txt").read_text() == "BBBB"
    assert not (data / "removed.txt").exists()
    assert (data / "jobs" / "kept.bin").read_bytes() == b"k" * 4096
    assert (data / "jobs" / "new.bin").read_bytes() == b"n"
    # restored files are new files: the next backup copies them rather than trust their identity
    assert platform.backup("after restore").detail["unchanged"] == 0


def test_a_snapshot_written_before_the_index_still_lists_and_restores_and_an_odd_id_is_refused(
    platform: LocalPlatform,
) -> None:
    data = platform.data_dir
    (data / "a.txt").write_text("old")
    old = platform.backup("old")
    # as an earlier backout wrote it: the files in snapshot.json, no index
    root = platform.snapshot_path(old.id).parent
    meta = json.loads((root / "snapshot.json").read_text())
    meta["files"] = {"a.txt": {"size": 3}}
    del meta["index"], meta["unchanged"]
    (root / "snapshot.json").write_text(json.dumps(meta))
    (root / "files.db").unlink()
    assert platform.backups()[0].detail == {"databases": [], "files": 1, "unchanged": 0}

    (data / "a.txt").write_text("new")
    (data / "b.txt").write_text("added")
    assert platform.backup("after").detail["unchanged"] == 0  # nothing to link from: copied
    platform.restore(old.id)
    assert sorted(p.name for p in data.iterdir()) == ["a.txt"] and (data / "a.txt").read_text() == "old"

    for bad in ("../snapshots", ".last-snapshot", "", "snap-nope"):
        with pytest.raises(UsageError, match="no backup"):
            platform.restore(bad)
    assert (data / "a.txt").read_text() == "old"


def test_the_oldest_backups_beyond_backups_keep_are_deleted_and_the_kept_ones_still_restore(
    platform: LocalPlatform,
) -> None:
    assert platform.snapshots.keep == 30  # the manifest's default
    platform.snapshots.keep = 2
    data = platform.data_dir
    (data / "same.bin").write_bytes(b"s" * 1024)  # linked from snapshot to snapshot
    taken = []
    for i in range(4):
        (data / "n.txt").write_text(str(i))
        taken.append(platform.backup(f"b{i}").id)
    assert [b.id for b in platform.backups()] == taken[2:]
    root = platform.snapshot_path(taken[2]).parent.parent
    assert sorted(p.name for p in root.iterdir() if not p.name.startswith(".")) == sorted(taken[2:])
    for sid in taken[:2]:
        with pytest.raises(UsageError, match="no backup"):
            platform.restore(sid)
    # the first snapshot's copy of same.bin is gone; the kept ones' links to it still hold the data
    (data / "same.bin").write_bytes(b"changed")
    platform.restore(taken[2])
    assert (data / "same.bin").read_bytes() == b"s" * 1024 and (data / "n.txt").read_text() == "2"
    # a delete cut short by a crash (renamed out of the listing, not yet removed) is finished next time
    (root / ".snap-interrupted.del" / "data").mkdir(parents=True)
    platform.backup("b4")
    assert not (root / ".snap-interrupted.del").exists()
    assert len(platform.backups()) == 2
