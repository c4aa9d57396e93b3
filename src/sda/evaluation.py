"""Completeness and consistency checks of a schedule → `overall_assessment`.

These are the checks a reviewer does by hand on a door schedule: does every
door say where it is, does every door that needs a card reader have one
tagged (and the reverse), does every door have a lock, do the totals add up.
"""

from __future__ import annotations

from typing import Any

from sda.analysis import door_of as tag_door


def _check(name: str, kind: str, problems: list[str], total: int) -> dict[str, Any]:
    return {
        "name": name,
        "kind": kind,  # completeness | consistency
        "passed": not problems,
        "checked": total,
        "problems": problems[:50],
        "problem_count": len(problems),
    }


def evaluate(schedule: dict[str, Any]) -> dict[str, Any]:
    info = schedule.get("_devices", {})

    def door_of(tag: str) -> str | None:  # the analysis records the door of short-id devices itself
        return (info.get(tag) or {}).get("door_id") or tag_door(tag)

    doors = schedule.get("doors", [])
    door_ids = {d["id"] for d in doors}
    readers = set(schedule.get("card_readers", []))
    exits = set(schedule.get("exit_buttons", []))
    meta = schedule.get("metadata", {})
    checks = []

    checks.append(
        _check(
            "doors_have_location",
            "completeness",
            [f"{d['id']} has no location" for d in doors if not d.get("location")],
            len(doors),
        )
    )
    checks.append(
        _check(
            "doors_have_lock",
            "completeness",
            [f"{d['id']} has no lock type" for d in doors if not d.get("lock_type")],
            len(doors),
        )
    )
    checks.append(
        _check(
            "drawing_identified",
            "completeness",
            [f"metadata {k} not found" for k in ("drawing_number", "building", "level") if not meta.get(k)],
            3,
        )
    )

    want_reader = {d["id"] for d in doors if "Card Reader" in d.get("components", [])}
    have_reader = {door_of(r) for r in readers}
    problems = [f"{d} lists a card reader but none is tagged" for d in sorted(want_reader - have_reader)]
    problems += [
        f"{r} has no door entry listing a card reader"
        for r in sorted(readers)
        if door_of(r) in door_ids and door_of(r) not in want_reader
    ]
    checks.append(_check("card_readers_match_doors", "consistency", problems, len(doors)))

    want_exit = {d["id"] for d in doors if any(c.startswith("Exit Button") for c in d.get("components", []))}
    have_exit = {door_of(e) for e in exits}
    problems = [f"{d} lists an exit button but none is tagged" for d in sorted(want_exit - have_exit)]
    problems += [
        f"{e} has no door entry listing an exit button"
        for e in sorted(exits)
        if door_of(e) in door_ids and door_of(e) not in want_exit
    ]
    checks.append(_check("exit_buttons_match_doors", "consistency", problems, len(doors)))

    orphans = [t for t in sorted(readers | exits) if door_of(t) not in door_ids]
    checks.append(
        _check(
            "devices_have_doors",
            "consistency",
            [f"{t} belongs to no scheduled door" for t in orphans],
            len(readers | exits),
        )
    )

    totals = {
        "total_doors": len(doors),
        "total_card_readers": len(readers),
        "total_exit_buttons": len(exits),
        "total_cameras": len(schedule.get("cameras", [])),
    }
    checks.append(
        _check(
            "totals_consistent",
            "consistency",
            [f"{k} is {meta.get(k)}, counted {v}" for k, v in totals.items() if k in meta and meta.get(k) != v],
            len(totals),
        )
    )

    failed = [c for c in checks if not c["passed"]]
    completeness = _score([c for c in checks if c["kind"] == "completeness"])
    consistency = _score([c for c in checks if c["kind"] == "consistency"])
    if not doors and not schedule.get("cameras") and not schedule.get("devices"):
        assessment = "Poor"
    elif not doors:
        assessment = "Fair" if not failed else "Poor"
    elif not failed:
        assessment = "Good"
    elif len(failed) <= 2 and min(completeness, consistency) >= 0.8:
        assessment = "Fair"
    else:
        assessment = "Poor"
    return {
        "overall_assessment": assessment,
        "completeness": round(completeness, 3),
        "consistency": round(consistency, 3),
        "checks": checks,
        "issues": [p for c in failed for p in c["problems"]],
        "warnings": list(schedule.get("warnings") or []),
    }


def _score(checks: list[dict[str, Any]]) -> float:
    """Share of checked items without a problem, over the checks of one kind."""
    checked = sum(max(c["checked"], 1) for c in checks)
    bad = sum(min(c["problem_count"], max(c["checked"], 1)) for c in checks)
    return 1.0 if not checked else (checked - bad) / checked
