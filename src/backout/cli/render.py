"""Tables for people, JSON or YAML for programs: every command that prints a table also takes `--output
json|yaml|table` (`-o`) and `--json`, its alias."""

from __future__ import annotations

import functools
import inspect
import json
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, get_type_hints

import typer
from rich.console import Console
from rich.table import Table

from backout.cli.context import OUTPUT_FORMATS, OutputOpt
from backout.errors import UsageError

console = Console()
err_console = Console(stderr=True)
_FORMAT = {"now": "json"}  # what `emit_json` prints: the format of the command running (this process runs one)


def emit_json(data: Any) -> None:
    """`data` as the command's structured output: JSON, or YAML with `--output yaml`. YAML is written from the
    JSON form, so both parse to the same data (timestamps, paths and the like as JSON gives them)."""
    from backout.redact import redact_data

    text = json.dumps(redact_data(json.loads(json.dumps(data, default=str))), indent=2)
    if _FORMAT["now"] != "yaml":
        print(text)
        return
    import yaml

    print(yaml.safe_dump(json.loads(text), sort_keys=False, allow_unicode=True, width=120), end="")


def structured() -> bool:
    """Whether the command prints JSON or YAML (then nothing else goes to the terminal: no progress)."""
    return _FORMAT["now"] in ("json", "yaml") and _FORMAT.get("asked") == "yes"


def output_format(as_json: bool, output: str | None) -> str:
    """The format `--output` and `--json` ask for together: `--json` is `--output json`."""
    if output is not None and output not in OUTPUT_FORMATS:
        raise UsageError(f"--output {output!r}: choose json, yaml or table")
    if as_json and output not in (None, "json"):
        raise UsageError(f"--json and --output {output} disagree: give one of them")
    return output or ("json" if as_json else "table")


def with_output_option(app: typer.Typer) -> None:
    """Give every command of `app` (and of its groups) that takes `as_json` (`--json`) an `--output/-o` option:
    the command runs with `as_json` true for json and yaml, and `emit_json` prints the format asked. One place,
    so that a command added later with `--json` gets `--output` too."""
    for cmd in app.registered_commands:
        cmd.callback = _wrapped(cmd.callback)
    if app.registered_callback is not None:
        app.registered_callback.callback = _wrapped(app.registered_callback.callback)
    for group in app.registered_groups:
        if group.typer_instance is not None:
            with_output_option(group.typer_instance)


def _wrapped(fn: Callable[..., Any] | None) -> Any:
    if fn is None or getattr(fn, "_with_output", False):
        return fn
    sig = inspect.signature(fn)
    if "as_json" not in sig.parameters or "output" in sig.parameters:
        return fn

    @functools.wraps(fn)
    def command(*args: Any, output: str | None = None, **kwargs: Any) -> Any:
        fmt = output_format(bool(kwargs.get("as_json")), output)
        kwargs["as_json"] = fmt != "table"
        _FORMAT.update(now="json" if fmt == "table" else fmt, asked="yes" if fmt != "table" else "no")
        try:
            return fn(*args, **kwargs)
        finally:
            _FORMAT.update(now="json", asked="no")

    hints = get_type_hints(fn, include_extras=True)
    params = [p.replace(annotation=hints.get(p.name, p.annotation)) for p in sig.parameters.values()]
    params.append(inspect.Parameter("output", inspect.Parameter.KEYWORD_ONLY, default=None, annotation=OutputOpt))
    command.__signature__ = sig.replace(parameters=params)  # type: ignore[attr-defined]
    command.__annotations__ = {**hints, "output": OutputOpt}
    command._with_output = True  # type: ignore[attr-defined]
    return command


def table(title: str, columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    t = Table(title=title, title_justify="left")
    for c in columns:
        t.add_column(c)
    for r in rows:
        t.add_row(*("" if v is None else str(v) for v in r))
    console.print(t)


@contextmanager
def progress(what: str) -> Iterator[Callable[[str], None]]:
    """What a long command is doing, on stderr: a spinner with the current step and the seconds elapsed on a
    terminal; a plain line per new step otherwise (CI logs, pipes); nothing with `--output json|yaml`, whose
    output is the result alone. Yields `update(step)`."""
    if structured():
        yield lambda step: None
        return
    t0 = time.monotonic()
    if err_console.is_terminal:
        with err_console.status(what) as spinner:
            yield lambda step: spinner.update(f"{what}: {step} ({time.monotonic() - t0:.0f} s)")
        return
    last: list[str] = []

    def line(step: str) -> None:
        if not last or last[-1] != step:
            last.append(step)
            err_console.print(f"{what}: {step} ({time.monotonic() - t0:.0f} s)", highlight=False, markup=False,
                              soft_wrap=True)

    yield line


def fmt_weights(weights: dict[str, float]) -> str:
    return ", ".join(f"v{v}: {w:g}%" for v, w in weights.items())
