"""The control plane's security: every route behind the token (enumerated from the app, so a new
route cannot forget it), the API's description behind it too, non-finite numbers refused with one
JSON line on a connection that stays usable, and a token file others can read refused."""

from __future__ import annotations

import re
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from starlette.routing import Route

from backout.errors import UsageError
from backout.manifest import EnvironmentSpec
from backout.server.app import build_app
from backout.server.controller import Controller
from backout.server.endpoints import TOKEN, read_token
from fakes import ControlPlane
from served import serve

SECRET = "s3cret-token"
AUTH = {"Authorization": f"Bearer {SECRET}"}


@pytest.fixture
def plane(tmp_path: Path, fast_evaluations: None) -> Iterator[ControlPlane]:
    with ControlPlane(tmp_path, token=SECRET) as p:
        yield p


@pytest.fixture
def controller(plane: ControlPlane) -> Controller:
    return plane.controller


@pytest.fixture
def client(plane: ControlPlane) -> Iterator[TestClient]:
    """Entered: its lifespan runs, and every request on one event loop."""
    with plane.client as c:
        yield c


def _endpoints(routes: list[Any], prefix: str = "") -> Iterator[tuple[str, set[str]]]:
    """(path, methods) of every route, into included routers (FastAPI keeps them nested)."""
    for r in routes:
        inner = getattr(r, "original_router", None)
        if inner is not None:
            sub = getattr(getattr(r, "include_context", None), "prefix", "") or ""
            yield from _endpoints(inner.routes, prefix + sub)
        elif isinstance(r, Route):
            yield prefix + r.path, set(r.methods or ())


def test_every_route_of_the_app_answers_401_without_the_token(client: TestClient) -> None:
    endpoints = [(path, m) for path, methods in _endpoints(client.app.routes)  # type: ignore[attr-defined]
                 for m in sorted(methods - {"HEAD"}) if path != "/healthz"]
    assert len(endpoints) >= 30 and ("/openapi.json", "GET") in endpoints  # the whole API, not a sample
    # the dashboard signs in through a form (the token never rides in a URL) and keeps a session cookie:
    # without that session its pages send the browser to the form and its actions are refused
    ui = [(p, m) for p, m in endpoints if p == "/ui" or p.startswith("/ui/")]
    assert ("/ui/login", "POST") in ui and ("/ui/actions/{action}", "POST") in ui
    for path, method in endpoints:
        url = re.sub(r"\{[^}]+\}", "x", path)
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": SECRET},
                        {"Authorization": f"Bearer {SECRET} "}):
            r = client.request(method, url, headers=headers, json={}, follow_redirects=False)
            if (path, method) == ("/ui/login", "GET"):
                assert r.status_code == 200 and SECRET not in r.text  # the sign-in form itself
            elif (path, method) in ui:
                assert r.status_code in (303, 307, 401, 403), f"{method} {path} with {headers}: {r.status_code}"
                if r.status_code in (303, 307):  # to the sign-in form (or /ui → /ui/, which sends it there)
                    assert r.headers["location"].endswith(("/ui/login", "/ui/")), r.headers
                assert "set-cookie" not in r.headers or method == "POST" and path == "/ui/logout"
            else:
                assert r.status_code == 401, f"{method} {path} with {headers}: {r.status_code} {r.text}"
    assert client.get("/healthz").status_code == 200  # liveness only, nothing to protect


def test_the_api_description_is_for_the_token_holder_only(client: TestClient) -> None:
    assert client.get("/openapi.json").status_code == 401
    assert client.get("/docs").status_code == 401  # the token comes first, even for what does not exist
    assert [client.get(p, headers=AUTH).status_code for p in ("/docs", "/redoc")] == [404, 404]
    spec = client.get("/openapi.json", headers=AUTH).json()
    assert "/throttle" in spec["paths"] and "/openapi.json" not in spec["paths"]


NON_FINITE = [
    ("POST", "/throttle", '{"rate": NaN, "burst": 10}'),
    ("POST", "/throttle", '{"rate": Infinity, "burst": 10}'),
    ("POST", "/throttle", '{"rate": 1e999, "burst": 10}'),
    ("POST", "/throttle", '{"rate": 10, "burst": -Infinity}'),
    ("GET", "/metrics/summary/api?since=inf", None),
    ("GET", "/metrics/summary/api?since=nan", None),
    ("GET", "/metrics/summary/api?since=1e999", None),
]


def test_non_finite_numbers_are_422_with_one_json_line_on_a_kept_alive_connection(controller: Controller) -> None:
    before = controller.platform.get_throttle()
    with serve(build_app(controller, SECRET)) as url, httpx.Client(base_url=url, headers=AUTH, timeout=30) as http:
        for method, path, content in NON_FINITE:  # one client, one connection, kept alive throughout
            headers = {"Content-Type": "application/json"} if content else {}
            r = http.request(method, path, content=content, headers=headers)
            assert r.status_code == 422, (method, path, content, r.text)
            error = r.json()["error"]
            assert "\n" not in error and ("finite" in error or "not a number" in error), error
            assert r.headers.get("connection") != "close"
            assert http.get("/status").status_code == 200  # the same client goes on
    assert controller.platform.get_throttle() == before  # nothing was applied


def test_a_finite_throttle_still_passes(client: TestClient) -> None:
    r = client.post("/throttle", headers=AUTH, json={"rate": 12.5, "burst": 3, "who": "t", "reason": "test"})
    assert r.status_code == 200, r.text


def test_the_token_file_is_created_private_and_refused_when_others_can_read_it(tmp_path: Path) -> None:
    state = tmp_path / "state"
    token = read_token(state)
    p = state / TOKEN
    assert len(token) >= 32 and stat.S_IMODE(p.stat().st_mode) == 0o600
    assert stat.S_IMODE(state.stat().st_mode) == 0o700
    for mode in (0o644, 0o640, 0o604):
        p.chmod(mode)
        with pytest.raises(UsageError, match=rf"readable by other users \(mode {mode:04o}\).*chmod 600") as e:
            read_token(state)
        assert "\n" not in str(e.value)
    p.chmod(0o600)
    assert read_token(state) == token


def test_the_control_api_listens_on_loopback_unless_configured() -> None:
    spec = EnvironmentSpec(gateway_port=0, control_port=0, host="0.0.0.0")
    assert spec.control_host == "127.0.0.1"  # a public gateway does not open the control plane
    assert EnvironmentSpec(gateway_port=0, control_port=0, control_host="10.0.0.5").control_host == "10.0.0.5"


def test_a_malformed_body_without_the_token_is_401_not_its_validation_error(client: TestClient) -> None:
    for path in ("/deployments", "/throttle", "/resume", "/rollback"):
        r = client.post(path, content=b"{not json", headers={"content-type": "application/json"})
        assert r.status_code == 401, (path, r.status_code, r.text)
        r = client.post(path, content=b"{not json", headers={"content-type": "application/json",
                                                            "Authorization": f"Bearer {SECRET}"})
        assert r.status_code == 422, (path, r.status_code, r.text)  # with the token: what was wrong with it


def test_a_non_ascii_session_cookie_or_csrf_token_is_refused_not_a_500(controller: Controller) -> None:
    """`hmac.compare_digest` raises TypeError on a str with non-ASCII characters: a hostile cookie or form
    value must read as a wrong one (sign-in form, 403), never as a server error."""
    cookie = "backout_session_staging"
    with TestClient(build_app(controller, SECRET), follow_redirects=False) as c:
        assert c.post("/ui/login", data={"who": "dana", "token": "tökén"}).status_code == 401
        for value in ("é.x.y", "a.b.\u00e9" * 2, "nonce.ZGFuYQ." + "é" * 64):
            r = c.get("/ui/", headers={"Cookie": f"{cookie}={value}".encode("latin-1")})  # type: ignore[dict-item]
            assert (r.status_code, r.headers.get("location")) == (303, "/ui/login"), value
            assert c.get("/ui/stream", headers={"Cookie": f"{cookie}={value}".encode("latin-1")}  # type: ignore[dict-item]
                         ).status_code == 401
        assert c.post("/ui/login", data={"who": "dana", "token": SECRET}).status_code == 303
        for csrf in ("é", "\u00e9" * 64, "０" * 64):
            r = c.post("/ui/actions/emergency-stop", data={"csrf": csrf, "reason": "x", "confirmed": "1"})
            assert r.status_code == 403 and "CSRF token missing or wrong" in r.text, (csrf, r.status_code)
            assert c.post("/ui/logout", data={"csrf": csrf}).status_code == 403
    assert controller.platform.get_throttle().rate != 0, "nothing was stopped"
