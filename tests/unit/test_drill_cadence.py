"""`backout status` warns when the drills fall behind the procedure's cadence: a passing rollback drill every
month, an emergency drill (stop → verify → resume) every quarter — each warning with the command to run."""

from __future__ import annotations

from pathlib import Path

from backout.control.store import Store
from backout.runbooks.status import drill_warnings
from fakes import FakeClock

DAY = 86400.0
EMERGENCY = "no passing emergency drill on record: run `backout drill --emergency --env staging` (quarterly)"


def test_the_emergency_drill_is_due_after_90_days(tmp_path: Path) -> None:
    clock = FakeClock()
    with Store(tmp_path / "control.db") as store:
        def warnings() -> list[str]:
            return [w for w in drill_warnings(store.drills("staging"), "staging", clock.now()) if "emergency" in w]

        assert warnings() == [EMERGENCY]
        store.record_drill("staging", "errors=0.5", 60, clock.now(), clock.now() + 20, True)  # not an emergency one
        store.record_drill("staging", "emergency", 135, clock.now(), clock.now() + 9, False)  # a failed one
        assert warnings() == [EMERGENCY]
        store.record_drill("staging", "emergency", 135, clock.now(), clock.now() + 9, True)
        assert warnings() == [] and store.drills("staging")[0].kind == "emergency"
        clock.advance(90 * DAY)
        assert warnings() == []
        clock.advance(DAY)
        assert warnings() == ["last passing emergency drill is 91 days old (> 90): run "
                              "`backout drill --emergency --env staging`"]
        # the monthly rollback drill has its own cadence, and an emergency drill does not stand in for it
        assert [w for w in drill_warnings(store.drills("staging"), "staging", clock.now()) if "rollback" in w] == [
            "last passing rollback drill is 91 days old (> 30): run `backout drill --env staging`"]
