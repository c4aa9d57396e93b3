"""Incidents after the fact: the records an operator annotates (`records`), read in one go from the
control store (`views`), and the report a team files (`report`, with its `chart`).

The public names are re-exported here so callers keep one import: `from backout.runbooks import incidents`.
"""

from backout.runbooks.incidents.chart import ROLLING_SECONDS, chart_available, render_chart
from backout.runbooks.incidents.communication import resolution, resolved_notice, status_update
from backout.runbooks.incidents.formatting import clock, code, fmt_ms, md
from backout.runbooks.incidents.records import (
    add_action,
    add_lesson,
    add_note,
    close,
    complete_action,
    get_incident,
)
from backout.runbooks.incidents.report import (
    chart_path,
    impact_sentence,
    render_html,
    render_markdown,
    write_report,
)
from backout.runbooks.incidents.views import LESSON_GROUPS, IncidentView, group_lessons, load, to_dict

__all__ = [
    "LESSON_GROUPS",
    "ROLLING_SECONDS",
    "IncidentView",
    "add_action",
    "add_lesson",
    "add_note",
    "chart_available",
    "chart_path",
    "clock",
    "close",
    "code",
    "complete_action",
    "fmt_ms",
    "get_incident",
    "group_lessons",
    "impact_sentence",
    "load",
    "md",
    "render_chart",
    "render_html",
    "render_markdown",
    "resolution",
    "resolved_notice",
    "status_update",
    "to_dict",
    "write_report",
]
