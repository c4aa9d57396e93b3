"""docs/manifest.md is the manifest's models as a reference: it must not drift from them."""

from __future__ import annotations

from pathlib import Path

from backout.cli import manifest_doc
from backout.manifest import FunctionSpec, Manifest

ROOT = Path(__file__).resolve().parents[2]


def test_the_committed_reference_is_the_generated_one() -> None:
    committed = (ROOT / "docs" / "manifest.md").read_text()
    assert committed == manifest_doc.render(), f"docs/manifest.md is stale: run `{manifest_doc.REGENERATE}`"


def test_every_key_has_a_description_and_every_model_a_section() -> None:
    assert manifest_doc.missing_descriptions() == []
    documented = {model for _, model in manifest_doc.SECTIONS}
    seen: set[type] = set()
    todo: list[type] = [Manifest]
    while todo:  # every model reachable from Manifest has its table
        model = todo.pop()
        seen.add(model)
        for f in model.model_fields.values():
            for t in _models(f.annotation):
                if t not in seen:
                    todo.append(t)
    assert seen == documented


def test_the_reference_names_each_key_with_its_default() -> None:
    text = manifest_doc.render()
    assert "| `test_event` | table of string → any or string or none | none |" in text
    assert "| `batch_size` | integer | `10` |" in text
    assert "| `require_traffic` | boolean | `false` |" in text
    assert "| `timeout` | duration | `30` s |" in text
    assert "`method`" not in text  # set by backout from `http`, not a key one writes
    assert FunctionSpec.model_fields["deploy"].default is True


def _models(annotation: object) -> list[type]:
    import typing

    from pydantic import BaseModel

    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for a in typing.get_args(annotation) for m in _models(a)]
