"""The web dashboard, served by the control API under `/ui`: `backout status` in a page, live.

* Sign-in: a form that takes the operator's name and the environment's token and sets a session cookie
  derived from it (`session.py`: `HttpOnly`, `SameSite=Strict`); the token never appears in a URL.
* The page is rendered on the server (Jinja2, autoescaped), one section per topic; `GET /ui/stream` sends
  every section's HTML again over server-sent events whenever it changed, and a small vanilla module
  (`static/dashboard.js`) swaps them in. Without JavaScript the page is a snapshot.
* Actions (approve, stop, rollback [--to], emergency stop, resume) are forms: the first POST shows what
  will happen (resume: verify's result), the second, with `confirmed`, does it through the same
  Controller and Deployer calls the CLI's routes use, recorded under the signed-in name. Every POST
  carries the session's CSRF token.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.concurrency import run_in_threadpool

from backout.control.alarms import COMPARISONS
from backout.errors import OperationFailed, UsageError
from backout.platforms.base import evaluation_interval
from backout.server.controller import Controller
from backout.server.dashboard.session import MAX_NAME, Session, Sessions, cookie_name
from backout.server.dashboard.state import snapshot

ROOT = "/ui"
HERE = Path(__file__).parent
SECTIONS = ("environments", "warnings", "deployment", "alarms", "functions", "queues", "incidents", "drills")
STREAM_SECONDS = 55.0  # one stream's life; EventSource reconnects by itself (and a stopping server ends it)
STREAM_INTERVAL = 1.0  # seconds between two reads of the state
MAX_RELEASE_DIGITS = 9  # `to` of a rollback: more digits is no release (and int() refuses over 4300)
ACTIONS = {  # action → (title, danger)
    "approve": ("Approve the deployment", False),
    "stop": ("Stop the deployment", True),
    "rollback": ("Roll back", True),
    "emergency-stop": ("Emergency stop", True),
    "resume": ("Resume", False),
}


def templates() -> Environment:
    env = Environment(loader=FileSystemLoader(HERE / "templates"), autoescape=select_autoescape(["html"]),
                      trim_blocks=True, lstrip_blocks=True)
    env.globals["root"] = ROOT
    env.filters["clock"] = lambda ts: datetime.fromtimestamp(float(ts)).strftime("%Y-%m-%d %H:%M:%S")
    env.filters["iso"] = lambda ts: datetime.fromtimestamp(float(ts), UTC).isoformat()
    env.filters["op"] = lambda comparison: COMPARISONS.get(comparison, (None, comparison, ""))[1]
    return env


def render_sections(env: Environment, state: dict[str, Any]) -> dict[str, str]:
    """Each section's HTML, by the macros of `sections.html` (the page and the stream use the same)."""
    module = env.get_template("sections.html").module
    return {name: str(getattr(module, name)(state)) for name in SECTIONS}


def router(c: Controller, token: str, stopping: threading.Event) -> APIRouter:
    """The dashboard's routes; `stopping` is set when the server shuts down, to end open streams."""
    r = APIRouter(prefix=ROOT, include_in_schema=False)
    sessions = Sessions(token)
    cookie = cookie_name(c.env)
    env = templates()

    def page(template: str, session: Session | None, status: int = 200, **ctx: Any) -> HTMLResponse:
        html = env.get_template(template).render(env=c.env, who=session.who if session else None,
                                             csrf=session.csrf if session else "", **ctx)
        return HTMLResponse(html, status_code=status, headers={"Cache-Control": "no-store"})

    def session_of(request: Request) -> Session | None:
        return sessions.read(request.cookies.get(cookie))

    def to_login() -> RedirectResponse:
        return RedirectResponse(f"{ROOT}/login", status_code=303)

    @r.get("/login")
    def login_form(request: Request) -> Response:
        return page("login.html", None)

    @r.post("/login")
    async def login(request: Request) -> Response:
        form = await request.form()
        who = str(form.get("who", "")).strip()[:MAX_NAME]
        if not who or not sessions.check_token(str(form.get("token", ""))):
            return page("login.html", None, 401, name=who,
                        error="wrong token (it is the file `token` in the environment's state directory)"
                        if who else "your name is needed: every action is recorded under it")
        resp = RedirectResponse(f"{ROOT}/", status_code=303)
        resp.set_cookie(cookie, sessions.issue(who), httponly=True, samesite="strict", path=ROOT,
                        secure=request.url.scheme == "https")
        return resp

    @r.post("/logout")
    async def logout(request: Request) -> Response:
        s = session_of(request)
        form = await request.form()
        if s is None or not Sessions.csrf_ok(s, str(form.get("csrf", ""))):
            return page("login.html", None, 403, error="sign-out refused: the form is not from this session")
        resp = to_login()
        resp.delete_cookie(cookie, path=ROOT, httponly=True, samesite="strict")
        return resp

    @r.get("")
    def bare() -> Response:
        return RedirectResponse(f"{ROOT}/", status_code=307)

    @r.get("/")
    def dashboard(request: Request) -> Response:
        s = session_of(request)
        if s is None:
            return to_login()
        state = snapshot(c)
        return page("page.html", s, sections=SECTIONS, rendered=render_sections(env, state))

    @r.get("/stream")
    async def stream(request: Request, once: bool = False) -> Response:
        if session_of(request) is None:
            return Response("sign in first", status_code=401, media_type="text/plain")
        return StreamingResponse(_events(request, once), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})

    async def _events(request: Request, once: bool) -> AsyncIterator[str]:
        yield "retry: 1000\n\n"
        last: dict[str, str] = {}
        ends = time.monotonic() + STREAM_SECONDS
        # a platform whose metric reads are billed (aws) is read no more often than its alarms are
        interval = max(STREAM_INTERVAL, evaluation_interval(c.platform, STREAM_INTERVAL))
        while not stopping.is_set() and time.monotonic() < ends:
            sections = await run_in_threadpool(lambda: render_sections(env, snapshot(c)))
            changed = {k: v for k, v in sections.items() if last.get(k) != v}
            if changed:
                last.update(changed)
                yield f"event: sections\ndata: {json.dumps(changed)}\n\n"
            else:
                yield ": unchanged\n\n"
            if once or await request.is_disconnected():
                return
            await _sleep(interval, stopping)

    @r.get("/incidents/{incident_id}")
    def incident(request: Request, incident_id: str) -> Response:
        if session_of(request) is None:
            return to_login()
        from backout.runbooks import incidents as ir

        try:
            view = ir.load(c.store, incident_id, c.env, service=c.manifest.service.name,
                           contacts=c.manifest.contact_lines(c.env))
        except UsageError as e:
            return Response(str(e), status_code=404, media_type="text/plain")
        html = ir.render_html(view, ir.render_chart(view), f"backout incident report {view.incident.id}")
        return HTMLResponse(html, headers={"Cache-Control": "no-store"})

    @r.post("/actions/{action}")
    async def act(request: Request, action: str) -> Response:
        s = session_of(request)
        if s is None:
            return to_login()
        form = {k: str(v) for k, v in (await request.form()).items()}
        if not Sessions.csrf_ok(s, form.pop("csrf", None)):
            return page("result.html", s, 403, action=action, title="Refused", ok=False,
                        line="the form is not from this session (CSRF token missing or wrong): reload the page")
        if action not in ACTIONS:
            return page("result.html", s, 404, action=action, title=action, ok=False, line="no such action")
        title, danger = ACTIONS[action]
        confirmed = form.pop("confirmed", "") == "1"
        try:
            if not confirmed:
                what, extra = await run_in_threadpool(_preview, c, action, form)
                return page("confirm.html", s, action=action, title=title, danger=danger, what=what,
                            fields=form, **extra)
            line, details = await run_in_threadpool(_perform, c, action, form, s.who)
        except (UsageError, OperationFailed) as e:
            code = 400 if isinstance(e, UsageError) else 409
            return page("result.html", s, code, action=action, title=title, ok=False, line=str(e))
        return page("result.html", s, action=action, title=title, ok=True, line=line, details=details)

    return r


async def _sleep(seconds: float, stopping: threading.Event) -> None:
    end = time.monotonic() + seconds
    while not stopping.is_set() and time.monotonic() < end:
        await asyncio.sleep(min(0.25, max(0.0, end - time.monotonic())))


def _flag(form: dict[str, str], key: str) -> bool:
    return form.get(key, "") in ("1", "on", "true")


def _release(form: dict[str, str]) -> int | None:
    raw = form.get("to", "").strip().lstrip("r")
    if not raw:
        return None
    # isdigit() alone takes "²" or "٣", which int() refuses (a 500); a release number is short ASCII digits
    if not (raw.isascii() and raw.isdigit()) or len(raw) > MAX_RELEASE_DIGITS:
        raise UsageError(f"--to must be a release number (e.g. 3), not {form['to'][:40]!r}")
    return int(raw)


def _active(c: Controller) -> Any:
    d = c.store.active_deployment(c.env)
    if d is None:
        raise UsageError(f"no deployment is active in {c.env}")
    return d


def _preview(c: Controller, action: str, form: dict[str, str]) -> tuple[str, dict[str, Any]]:
    """What the action will do, read now (resume: verify's result), for the confirmation page."""
    env = c.env
    if action == "approve":
        d = _active(c)
        return f"{d.id} ({d.stable} → {d.target}) is {d.status}; approving lets it shift traffic.", {}
    if action == "stop":
        d = _active(c)
        after = "every live alias goes back to 100 % stable" if _flag(form, "rollback") else "traffic stays as it is"
        return f"{d.id} ({d.stable} → {d.target}, {d.current_weight:g} % on the target) stops; {after}.", {}
    if action == "rollback":
        to = _release(form)
        target = f"release r{to}" if to is not None else "the previous stable release"
        return f"Every live alias of {env} moves to {target} at once; an incident is opened.", {}
    if action == "emergency-stop":
        if not form.get("reason", "").strip():
            raise UsageError("an emergency stop needs a reason")
        scope = "processing is paused (the API stays open)" if _flag(form, "keep_api") else \
            "the API is blocked (throttle 0) and processing is paused"
        return f"In {env}: {scope}, any active deployment is rolled back, the data is snapshotted.", {}
    report = c.verify()
    verify = {"ok": report.ok, "summary": report.summary(),
              "checks": [{"name": ch.name, "ok": ch.ok, "detail": ch.detail} for ch in report.checks]}
    what = "The API and processing go back to what they were before the emergency stop."
    return what, {"verify": verify,
                  "blocked": None if report.ok else "verify fails: resuming needs --force (tick the box)"}


def _perform(c: Controller, action: str, form: dict[str, str], who: str) -> tuple[str, list[tuple[str, str]]]:
    """The action, through the controller calls the API's JSON routes use."""
    reason = form.get("reason", "").strip()
    if action == "approve":
        d = c.deployer.approve(_active(c).id, who)
        return f"{d.id} approved by {who}", [("status", d.status)]
    if action == "stop":
        d = c.deployer.stop(_active(c).id, _flag(form, "rollback"), reason or f"stopped from the dashboard by {who}",
                            who)
        return f"{d.id} stopped: {d.status}", [("reason", d.reason)]
    if action == "rollback":
        out = c.rollback(_release(form), reason or f"manual rollback from the dashboard by {who}", who)
        return _summary(out, "rolled back")
    if action == "emergency-stop":
        out = c.emergency_stop(reason, who, keep_api=_flag(form, "keep_api"))
        return _summary(out, "emergency stop done")
    out = c.resume(_flag(form, "force"), who)
    return _summary(out, "resumed")


def _summary(out: dict[str, Any], line: str) -> tuple[str, list[tuple[str, str]]]:
    details = []
    for k, v in out.items():
        if isinstance(v, list) and v and isinstance(v[0], dict) and "step" in v[0]:
            v = "; ".join(f"{s['step']}: {s.get('detail', '')}" for s in v)
        elif isinstance(v, dict) and "checks" in v:  # a verify report
            bad = [ch["name"] for ch in v["checks"] if not ch.get("ok")]
            v = "verify passed" if not bad else f"verify FAILED: {', '.join(bad)}"
        elif isinstance(v, dict):
            v = json.dumps(v, default=str)[:300]
        details.append((str(k), str(v)))
    return line, details



def static_files() -> StaticFiles:
    """The stylesheet and the script, from the package (no CDN: nothing is fetched from the internet)."""
    return StaticFiles(directory=HERE / "static")
