"""`docs/manifest.md`, generated from the manifest's pydantic models, so the reference cannot drift from
what `load_manifest` accepts: every key with its type, default and description.

    python -m backout.cli.manifest_doc > docs/manifest.md
"""

from __future__ import annotations

import sys
import types
import typing
from typing import Any

from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from backout import manifest as m

REGENERATE = "python -m backout.cli.manifest_doc > docs/manifest.md"

# (the table's heading, its model): in the order a manifest is usually written
SECTIONS: list[tuple[str, type[BaseModel]]] = [
    ("Top level", m.Manifest),
    ("`[service]`", m.ServiceSpec),
    ("`[functions.NAME]`", m.FunctionSpec),
    ("`events = [{ http = … }]`", m.HttpEvent),
    ("`events = [{ queue = … }]`", m.QueueEvent),
    ("`[queues.NAME]`", m.QueueSpec),
    ("`[environments.NAME]`", m.EnvironmentSpec),
    ("`[environments.NAME.aws]`", m.AwsSpec),
    ("`[environments.NAME.alarms.NAME]`", m.AlarmSpec),
    ("`[[environments.NAME.notify]]`", m.NotifySpec),
    ("`[strategies.NAME]`", m.StrategySpec),
    ("`steps = [{ … }]`", m.StepSpec),
    ("`[[smoke]]`", m.SmokeSpec),
    ("`[hooks]`", m.HooksSpec),
    ("`pre_traffic` / `post_traffic` entries", m.HookSpec),
    ("`[emulator]`", m.EmulatorSpec),
    ("`[contacts.ROLE]` (and `[environments.NAME.contacts.ROLE]`)", m.ContactSpec),
]
INTERNAL = {(m.Manifest, "path"), (m.HttpEvent, "method"), (m.HttpEvent, "path")}  # set by backout, not written
_DURATION_FIELDS = {"timeout", "retry_after", "visibility_timeout", "retention", "delay", "hold", "api_5xx_period",
                    "rollback_window", "deadline_margin", "alarm_window", "judge_settle", "latency_min_delta",
                    "preflight_window", "period", "lease_renew", "lease_expiry"}

HEADER = f"""# The manifest: `backout.toml`

Every key backout accepts, with its type, default and meaning. Generated from the models in
`src/backout/manifest.py` — do not edit by hand; regenerate with `{REGENERATE}`
(a unit test fails when this file and the models differ).

Durations are written `"250ms"`, `"30s"`, `"5m"`, `"1h"`, `"4d"` or as a number of seconds. A key not
listed here is an error (`backout` names the file, the key path and the problem, exit code 2).
See `docs/guide.md` for a manifest written step by step.
"""


def _type(annotation: Any, name: str) -> str:
    if name in _DURATION_FIELDS:
        return "duration" + (" or none" if _optional(annotation) else "")
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is typing.Annotated:
        return _type(args[0], name)
    if origin in (typing.Union, types.UnionType):
        parts = [_type(a, name) for a in args if a is not type(None)]
        return " or ".join(parts) + (" or none" if type(None) in args else "")
    if origin is typing.Literal:
        return " \\| ".join(f'`"{a}"`' for a in args)
    if origin is list:
        return f"list of {_type(args[0], name)}"
    if origin is dict:
        return f"table of {_type(args[0], name)} → {_type(args[1], name)}"
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return _anchor_name(annotation)
    return {str: "string", int: "integer", float: "number", bool: "boolean"}.get(annotation, "any")


def _optional(annotation: Any) -> bool:
    return type(None) in typing.get_args(annotation)


def _anchor_name(model: type[BaseModel]) -> str:
    for title, mdl in SECTIONS:
        if mdl is model:
            return f"table ({title})"
    return model.__name__


def _default(f: FieldInfo, name: str) -> str:
    if f.is_required():
        return "required"
    if f.default_factory is not None:
        value = f.default_factory()  # type: ignore[call-arg]
        if isinstance(value, BaseModel):
            return "see below"
        if isinstance(value, list) and value and isinstance(value[0], BaseModel):
            return "see meaning"
    else:
        value = f.default
    if value is None or value is PydanticUndefined:
        return "none"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, str):
        return f'`"{value}"`' if value else '`""`'
    if isinstance(value, float) and name in _DURATION_FIELDS:
        return f"`{value:g}` s"
    if isinstance(value, dict | list) and not value:
        return "`{}`" if isinstance(value, dict) else "`[]`"
    return f"`{value:g}`" if isinstance(value, float) else f"`{value}`"


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def render() -> str:
    """The whole reference as Markdown."""
    out = [HEADER]
    for title, model in SECTIONS:
        out.append(f"## {title}\n")
        doc = " ".join((model.__doc__ or "").split())
        if doc:
            out.append(doc + "\n")
        out.append("| key | type | default | meaning |")
        out.append("|---|---|---|---|")
        for name, f in model.model_fields.items():
            if (model, name) in INTERNAL:
                continue
            meaning = _cell(f.description or "")
            out.append(f"| `{name}` | {_cell(_type(f.annotation, name))} | {_default(f, name)} | {meaning} |")
        out.append("")
    return "\n".join(out).rstrip() + "\n"


def missing_descriptions() -> list[str]:
    """`Model.field` for every documented key without a description (the test asks for none)."""
    return [f"{model.__name__}.{name}" for _, model in SECTIONS for name, f in model.model_fields.items()
            if (model, name) not in INTERNAL and not f.description]


if __name__ == "__main__":
    sys.stdout.write(render())
