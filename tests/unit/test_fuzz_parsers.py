"""Property-based fuzzing of the parsers a user's text reaches: the duration parser, the strategy
parser and the manifest loader. Whatever the input, the answer is a value that makes sense or the one
error type the CLI turns into one line and exit 2 — never another exception (a traceback)."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from backout.control.strategies import BUILTIN, resolve
from backout.errors import UsageError
from backout.manifest import ManifestError, StrategySpec, load_manifest, parse_duration
from fuzzing import examples

REPO = Path(__file__).resolve().parents[2]
MANIFEST = (REPO / "backout.toml").read_text()

durations = st.one_of(
    st.text(max_size=30),
    st.from_regex(r"\A\s*[0-9]{1,400}(\.[0-9]{0,20})?\s*(ms|s|m|h|d|S|us)?\s*\Z"),
    st.integers(min_value=-(10**30), max_value=10**400),
    st.floats(allow_nan=True, allow_infinity=True),
)


@examples(100)
@given(durations)
def test_a_duration_is_a_finite_number_of_seconds_or_a_value_error(value: object) -> None:
    try:
        seconds = parse_duration(value)  # type: ignore[arg-type]
    except ValueError as e:
        assert str(e) and "\n" not in str(e)
        return
    assert isinstance(seconds, float) and math.isfinite(seconds) and seconds >= 0, (value, seconds)


def test_durations_the_docs_promise() -> None:
    assert [parse_duration(v) for v in ("90", "30s", "5m", "250ms", "1h", "4d", 2, 1.5)] == [
        90.0, 30.0, 300.0, 0.25, 3600.0, 345600.0, 2.0, 1.5]
    for bad in ("9" * 400 + "s", float("inf"), float("nan"), -1, "-1s", "1e3s"):
        with pytest.raises(ValueError):
            parse_duration(bad)  # type: ignore[arg-type]


steps = st.lists(
    st.fixed_dictionaries({"weight": st.one_of(st.floats(allow_nan=True), st.integers(-5, 105), st.text(max_size=4))},
                          optional={"hold": durations}),
    max_size=6,
)


@examples(60)
@given(steps, st.sampled_from(["Custom", *BUILTIN]))
def test_a_custom_strategy_is_valid_steps_or_one_usage_error(raw: list[dict[str, object]], name: str) -> None:
    from backout.manifest import Manifest

    try:
        spec = StrategySpec.model_validate({"steps": raw})
    except ValueError:  # pydantic's ValidationError: the manifest loader makes it one ManifestError line
        return
    m = Manifest.model_construct(strategies={name: spec})
    try:
        s = resolve(name, m)
    except UsageError as e:
        assert "\n" not in str(e)
        return
    weights = [st_.weight for st_ in s.steps]
    assert weights == sorted(weights) and weights[-1] == 100
    assert all(0 <= w <= 100 for w in weights)
    assert all(math.isfinite(st_.hold) and st_.hold >= 0 for st_ in s.steps)
    assert math.isfinite(s.total_seconds)


# Lines of the real manifest, each replaced, dropped or doubled, or a value swapped for a hostile one:
# what a typo, a bad merge or a hostile edit makes of it.
LINES = MANIFEST.splitlines()
values = st.one_of(
    st.sampled_from(['"-1s"', "nan", "inf", "-inf", "1e999", '"9999999999999999999999d"', "[]", "{}", '""',
                     '"../../etc"', '"\\u0000"', "-3", "0", "true", '"30s"', "1_000_000_000_000"]),
    st.text(alphabet=st.characters(blacklist_categories=["Cs"]), max_size=12).map(lambda t: '"' + t.replace(
        "\\", "\\\\").replace('"', '\\"') + '"'),
)


@st.composite
def mutated_manifest(draw: st.DrawFn) -> str:
    lines = list(LINES)
    for _ in range(draw(st.integers(1, 4))):
        i = draw(st.integers(0, len(lines) - 1))
        op = draw(st.sampled_from(["value", "drop", "double", "text"]))
        if op == "value" and "=" in lines[i]:
            key = lines[i].split("=", 1)[0]
            lines[i] = f"{key}= {draw(values)}"
        elif op == "drop":
            del lines[i]
        elif op == "double":
            lines.insert(i, lines[i])
        else:
            lines[i] = draw(st.text(max_size=40).filter(lambda t: "\r" not in t))
    return "\n".join(lines)


@examples(40)
@given(mutated_manifest())
def test_a_mutated_manifest_loads_or_fails_with_one_line(tmp_path_factory: pytest.TempPathFactory, text: str) -> None:
    path = tmp_path_factory.mktemp("m") / "backout.toml"
    path.write_text(text, encoding="utf-8", errors="surrogatepass")
    try:
        m = load_manifest(path)
    except ManifestError as e:
        assert str(e).startswith(str(path)) and "Traceback" not in str(e)
        return
    for fn in m.functions.values():
        assert math.isfinite(fn.timeout) and fn.timeout >= 0
    for spec in m.strategies.values():
        assert all(math.isfinite(s.hold) for s in spec.steps)
    for q in m.queues.values():
        assert math.isfinite(q.visibility_timeout)


def test_the_real_manifest_still_loads() -> None:
    m = load_manifest(REPO / "backout.toml")
    assert re.match(r"^\w", m.service.name)
