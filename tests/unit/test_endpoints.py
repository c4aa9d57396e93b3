"""`read_endpoints`, which `up --detach` polls while a new supervisor starts: a file that is missing, cut
short or gone between two looks means "not running yet", never an exception (a crash schedule found
`up` failing with FileNotFoundError when the file went between `exists()` and `read_text()`)."""

from __future__ import annotations

from pathlib import Path

from backout.server.endpoints import ENDPOINTS, read_endpoints


def test_missing_unreadable_or_half_written_endpoints_are_not_running(tmp_path: Path) -> None:
    assert read_endpoints(tmp_path) is None
    (tmp_path / ENDPOINTS).write_text('{"pid": 1, "control_')  # being written
    assert read_endpoints(tmp_path) is None
    (tmp_path / ENDPOINTS).unlink()
    (tmp_path / ENDPOINTS).mkdir()  # reading fails with an OSError, as for a file removed under the reader
    assert read_endpoints(tmp_path) is None
