from __future__ import annotations

from pathlib import Path

import pytest

from backout.control.strategies import BUILTIN, Step, Strategy, known_names, progress_deadline, resolve
from backout.errors import UsageError
from backout.manifest import load_manifest

MANIFEST = """
[service]
name = "svc"
[functions.api]
handler = "app.handler"
[environments.staging]
gateway_port = 0
control_port = 0
[strategies.Quick]
steps = [{ weight = 10, hold = "3s" }, { weight = 50, hold = "2s" }, { weight = 100 }]
[strategies.AllAtOnce]
steps = [{ weight = 50, hold = "1s" }, { weight = 100, hold = "1s" }]
[strategies.Shrinking]
steps = [{ weight = 50, hold = "1s" }, { weight = 10, hold = "1s" }, { weight = 100 }]
[strategies.NeverDone]
steps = [{ weight = 10, hold = "1s" }, { weight = 90 }]
"""


@pytest.fixture
def manifest(tmp_path: Path):
    p = tmp_path / "backout.toml"
    p.write_text(MANIFEST)
    return load_manifest(p)


@pytest.mark.parametrize(("name", "minutes"), [("Canary10Percent5Minutes", 5),
                                               ("Canary10Percent10Minutes", 10),
                                               ("Canary10Percent15Minutes", 15),
                                               ("Canary10Percent30Minutes", 30)])
def test_canary(name: str, minutes: int) -> None:
    s = resolve(name)
    assert s.name == name
    assert s.steps == (Step(10, minutes * 60), Step(100, 0))
    assert s.total_seconds == minutes * 60


@pytest.mark.parametrize(("name", "minutes"), [("Linear10PercentEvery1Minute", 1),
                                               ("Linear10PercentEvery2Minutes", 2),
                                               ("Linear10PercentEvery3Minutes", 3),
                                               ("Linear10PercentEvery10Minutes", 10)])
def test_linear(name: str, minutes: int) -> None:
    s = resolve(name)
    assert [st.weight for st in s.steps] == [10, 20, 30, 40, 50, 60, 70, 80, 90, 100]
    assert all(st.hold == minutes * 60 for st in s.steps[:-1]) and s.steps[-1].hold == 0
    # CodeDeploy: 10 increments, the last one reached 9 intervals after the first
    assert s.total_seconds == 9 * minutes * 60


def test_all_at_once_and_sam_spellings() -> None:
    assert resolve("AllAtOnce").steps == (Step(100, 0),)
    assert set(BUILTIN) == {
        "Canary10Percent5Minutes", "Canary10Percent10Minutes", "Canary10Percent15Minutes",
        "Canary10Percent30Minutes", "Linear10PercentEvery1Minute", "Linear10PercentEvery2Minutes",
        "Linear10PercentEvery3Minutes", "Linear10PercentEvery10Minutes", "AllAtOnce",
    }


def test_custom_from_manifest_and_shadowing(manifest) -> None:
    q = resolve("Quick", manifest)
    assert q.steps == (Step(10, 3), Step(50, 2), Step(100, 0))
    assert q.total_seconds == 5
    assert resolve("AllAtOnce", manifest).steps == (Step(50, 1), Step(100, 1))  # manifest wins
    assert resolve("AllAtOnce").steps == (Step(100, 0),)
    assert known_names(manifest)[-1] == "Shrinking" and "Quick" in known_names(manifest)


def test_unknown_lists_known_names(manifest) -> None:
    with pytest.raises(UsageError) as e:
        resolve("Canary10Percent7Minutes", manifest)
    msg = str(e.value)
    assert "'Canary10Percent7Minutes'" in msg and "Canary10Percent5Minutes" in msg and "Quick" in msg
    assert "\n" not in msg
    with pytest.raises(UsageError, match="did you mean AllAtOnce"):
        resolve("allatonce")


def test_invalid_custom_steps(manifest) -> None:
    with pytest.raises(UsageError, match="must not decrease"):
        resolve("Shrinking", manifest)
    with pytest.raises(UsageError, match="last step must have weight 100"):
        resolve("NeverDone", manifest)


def test_deadline_remaining_and_json_roundtrip(manifest) -> None:
    q = resolve("Quick", manifest)
    assert progress_deadline(q, margin=30) == 35
    assert progress_deadline(resolve("Canary10Percent5Minutes")) == 300 + 120
    assert q.remaining_seconds(0) == 5
    assert q.remaining_seconds(0, 1.5) == 3.5
    assert q.remaining_seconds(1, 10) == 0
    assert q.remaining_seconds(3) == 0
    again = Strategy.from_json(q.name, q.as_json())
    assert again == q
