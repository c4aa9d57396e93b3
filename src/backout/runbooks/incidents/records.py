"""Operations on incident records: find one, annotate it (notes, action items, lessons) and close it with
its root cause. Each change is also an event on the incident's timeline, so the report shows who did what
and when without a second source."""

from __future__ import annotations

from backout.control.store import ControlStore, Incident
from backout.errors import UsageError


def get_incident(store: ControlStore, incident_id: str, env: str | None = None) -> Incident:
    """The store's lookup, with an error that names the environment and the command that lists them."""
    try:
        return store.get_incident(incident_id)
    except UsageError:
        where = f" in {env}" if env else ""
        hint = f"backout incident list{f' --env {env}' if env else ''}"
        raise UsageError(f"no incident {incident_id!r}{where} (list them with: {hint})") from None


def add_note(store: ControlStore, incident_id: str, text: str, author: str = "") -> Incident:
    inc = store.add_incident_note(_id(store, incident_id), _text(text, "note"), author)
    _event(store, inc, "note_added", f"note by {author or 'an operator'}: {text.strip()}")
    return inc


def add_action(store: ControlStore, incident_id: str, text: str, owner: str = "") -> Incident:
    inc = store.add_incident_action(_id(store, incident_id), _text(text, "action item"), owner)
    _event(
        store,
        inc,
        "action_added",
        f"action item {len(inc.action_items)}{f' ({owner})' if owner else ''}: {text.strip()}",
    )
    return inc


def complete_action(store: ControlStore, incident_id: str, number: int) -> Incident:
    """Mark action item `number` (1-based, as listed) done."""
    inc = store.complete_incident_action(_id(store, incident_id), number - 1)
    _event(store, inc, "action_done", f"action item {number} done: {inc.action_items[number - 1]['text']}")
    return inc


def add_lesson(store: ControlStore, incident_id: str, text: str) -> Incident:
    inc = store.add_incident_lesson(_id(store, incident_id), _text(text, "lesson"))
    _event(store, inc, "lesson_added", f"lesson learned: {text.strip()}")
    return inc


def close(store: ControlStore, incident_id: str, root_cause: str, who: str = "") -> Incident:
    inc = store.close_incident(_id(store, incident_id), _text(root_cause, "root cause"))
    _event(
        store,
        inc,
        "incident_closed",
        f"incident {inc.id} closed by {who or 'an operator'}; root cause: {inc.root_cause}",
    )
    return inc


def _id(store: ControlStore, incident_id: str) -> str:
    return get_incident(store, incident_id).id


def _text(text: str, what: str) -> str:
    if not text or not text.strip():
        raise UsageError(f"the {what} is empty; give its text")
    return text.strip()


def _event(store: ControlStore, inc: Incident, kind: str, message: str) -> None:
    store.add_event(kind, message, incident_id=inc.id)
