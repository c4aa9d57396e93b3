"""The web dashboard in a real browser: Playwright for Python driving Debian's Chromium against a running
environment (`backout up` of the SDA). The token is required; a faulty deployment is watched rolling back
in the page (the weight chart drops to 0, the alarm turns red with its evidence) with no reload; an
emergency stop and a resume are done from the page, each confirmed first.

Chromium comes from the system's package manager (`apt-get install -y chromium`, when running as root and
it is missing); Playwright's own browser download is never used. When it cannot be installed, the tests
skip and say why. Screenshots go to the test's temp dir.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from backout.control.store import Store
from support import RunningEnv, sda_manifest

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]
STRATEGIES = """
[strategies.Canary20]
steps = [{ weight = 20, hold = "20s" }, { weight = 100 }]
"""
# one alarm decides (the API's error rate), as in test_deploy.py: the judges and API 5xx are left to other tests
ENV_EXTRA = "min_invocations = 5\napi_5xx_threshold = 100000\nlatency_judge = false\nerror_judge = false"
WAIT = 90_000  # ms: generous, the machine may be busy
PHONE = {"width": 412, "height": 915}  # a phone's screen


def _chromium() -> str:
    """The system's Chromium, installed through apt when missing and allowed; else the reason it is not."""
    if os.path.exists(CHROMIUM):
        return ""
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        return f"{CHROMIUM} is missing and cannot be installed here (needs root and apt-get)"
    apt_env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    r = subprocess.run(["apt-get", "install", "-y", "-q", "chromium"], capture_output=True, text=True,
                       timeout=900, env=apt_env)
    if r.returncode != 0:  # a fresh machine may have no package lists yet
        subprocess.run(["apt-get", "update", "-q"], capture_output=True, text=True, timeout=300, env=apt_env)
        r = subprocess.run(["apt-get", "install", "-y", "-q", "chromium"], capture_output=True, text=True,
                           timeout=900, env=apt_env)
    if r.returncode != 0 or not os.path.exists(CHROMIUM):
        tail = (r.stderr or r.stdout).strip().splitlines()[-1:] or ["no output"]
        return f"apt-get install chromium failed: {tail[0]}"
    return ""


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Chromium through Playwright's sync API for this module only: that API runs an event loop in the
    main thread while it is open, and later tests on the same worker call asyncio.run()."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("playwright is not installed (pip install -e '.[test]')")
    why = _chromium()
    if why:
        pytest.skip(why)
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        try:
            yield b
        finally:
            b.close()


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory, browser: Any) -> Iterator[RunningEnv]:
    tmp = tmp_path_factory.mktemp("dashboard")
    manifest = tmp / "backout.toml"
    manifest.write_text(sda_manifest(tmp / "state", extra=STRATEGIES, env_extra=ENV_EXTRA))
    running = RunningEnv(manifest, "staging")
    try:
        yield running
    finally:
        running.stop()


class Load:
    """GET /health at a steady rate from a thread, so the canary has traffic to be judged on."""

    def __init__(self, url: str, rate: float) -> None:
        self.url, self.interval = url, 1.0 / rate
        self.stop = threading.Event()
        self.codes: dict[int, int] = {}
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with httpx.Client(base_url=self.url, timeout=10) as c:
            while not self.stop.wait(self.interval):
                try:
                    code = c.get("/health").status_code
                except httpx.HTTPError:
                    code = 0
                self.codes[code] = self.codes.get(code, 0) + 1

    def __enter__(self) -> Load:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(10)


def sign_in(page: Any, env: RunningEnv, who: str) -> None:
    page.goto(f"{env.control_url}/ui/")
    assert page.url.endswith("/ui/login"), "the dashboard sends a stranger to the sign-in form"
    page.fill("input[name=who]", who)
    page.fill("input[name=token]", "not-the-token")
    page.click("button[type=submit]")
    assert "wrong token" in page.inner_text("p.error")
    page.fill("input[name=who]", who)
    page.fill("input[name=token]", env.token)
    page.click("button[type=submit]")
    page.wait_for_url(f"{env.control_url}/ui/")
    assert env.token not in page.url
    page.wait_for_selector("#live[data-state=on]", timeout=WAIT)


def assert_no_sideways_scroll(page: Any, what: str) -> None:
    """At a phone's width the page itself never scrolls sideways: a wide table or chart scrolls inside
    its card (or shrinks), so the actions and the sentences stay on the screen."""
    width = page.evaluate("document.documentElement.scrollWidth")
    assert width <= PHONE["width"], f"{what}: {width} px wide at {PHONE['width']} px"


def test_a_faulty_deployment_rolls_back_in_the_page(browser: Any, env: RunningEnv, tmp_path: Path) -> None:
    ctx = browser.new_context(viewport=PHONE)
    ctx.set_default_timeout(WAIT)
    page = ctx.new_page()
    try:
        sign_in(page, env, "dana")
        cookie = next(c for c in ctx.cookies() if c["name"] == "backout_session_staging")
        assert cookie["httpOnly"] and cookie["sameSite"] == "Strict" and env.token not in cookie["value"]
        assert page.evaluate("document.cookie") == "", "no script can read the session"
        # every status the deployment section shows is recorded; a marker proves the page never reloads
        page.evaluate("""() => {
            window.__marker = 'same page'; window.__seen = [];
            const note = () => { const s = document.getElementById('deployment-status');
                                 if (s) window.__seen.push(s.textContent); };
            new MutationObserver(note).observe(document.getElementById('s-deployment'),
                                               {childList: true, subtree: true});
        }""")
        with Load(env.gateway_url, rate=15) as load:
            r = env.cli("deploy", "--strategy", "Canary20", "--set-env", "BACKOUT_FAULT=errors=0.5", "--no-wait",
                        "--json")
            assert r.returncode == 0, r.stdout + r.stderr
            # the record says RolledBack from the decision on; the chart drops once the switch is done
            page.wait_for_function(
                "() => document.getElementById('deployment-status')?.textContent === 'RolledBack'"
                " && document.querySelector('#s-deployment svg.chart')?.dataset.weight === '0'", timeout=WAIT)
        assert load.codes.get(200), load.codes
        page.screenshot(path=str(tmp_path / "rolled-back.png"), full_page=True, timeout=WAIT)
        assert_no_sideways_scroll(page, "the dashboard after the rollback")
        assert page.evaluate("window.__marker") == "same page", "the page was reloaded"
        seen = page.evaluate("window.__seen")
        assert seen[-1] == "RolledBack" and {"PreTraffic", "InProgress"} & set(seen), seen
        chart = page.locator("#s-deployment svg.chart")
        assert chart.get_attribute("data-weight") == "0"
        assert chart.get_attribute("data-weights") == "0 20 0", "the chart shows 20 %, then the drop to 0"
        row = page.locator('tr[data-alarm="error-rate:api"]')
        assert row.get_attribute("data-state") == "ALARM"
        text = row.inner_text()
        assert "error rate" in text and "> 10 %" in text, text
        red = page.evaluate("getComputedStyle(document.querySelector('tr[data-alarm=\"error-rate:api\"] td.state'))"
                            ".color")
        assert red == "rgb(198, 40, 40)", red
        # /metrics (the API's bearer token) counts it, and the gateway's histogram saw the canary's 5xx
        families = {f.name: f for f in text_string_to_metric_families(env.http.get("/metrics").text)}
        rollbacks = {s.labels["reason"]: s.value for s in families["backout_rollbacks"].samples}
        assert rollbacks.get("alarm") == 1.0, rollbacks
        latency = families["backout_gateway_request_duration_seconds"].samples
        assert any(s.name.endswith("_count") and s.labels["code"] == "5xx" and s.value > 0 for s in latency)
        # its incident is listed, and its report opens with the chart
        page.click("#s-incidents a")
        assert "rolled back" in page.inner_text("h1")
        assert page.locator("img[src^='data:image/png;base64,']").count() == 1
    finally:
        ctx.close()


def test_emergency_stop_and_resume_from_the_page(browser: Any, env: RunningEnv, tmp_path: Path) -> None:
    ctx = browser.new_context()
    ctx.set_default_timeout(WAIT)
    page = ctx.new_page()
    try:
        sign_in(page, env, "erin")
        page.fill("form[action$='/actions/emergency-stop'] input[name=reason]", "schedules look corrupt")
        page.click("form[action$='/actions/emergency-stop'] button[type=submit]")
        assert "Confirm: Emergency stop" in page.inner_text("h1")
        assert env.api("GET", "/status")["api"]["blocked"] is False, "nothing happens before the confirmation"
        page.click("#confirm")
        page.wait_for_selector("#outcome", timeout=WAIT)
        assert page.inner_text("#outcome") == "Emergency stop: done", page.inner_text("main")
        st = env.api("GET", "/status")
        assert st["api"]["blocked"] is True and st["processing"] is False
        assert httpx.get(f"{env.gateway_url}/health", timeout=10).status_code == 429
        page.screenshot(path=str(tmp_path / "stopped.png"), full_page=True, timeout=WAIT)

        page.click("#back")
        page.wait_for_selector("#live[data-state=on]", timeout=WAIT)
        assert "blocked" in page.inner_text("#api-state") and "API blocked" in page.inner_text("#warnings")
        page.click("form[action$='/actions/resume'] button[type=submit]")
        summary = page.inner_text("#verify-summary")  # verify's result, before anything is resumed
        assert summary.startswith("verify passed"), page.inner_text("main")
        assert env.api("GET", "/status")["api"]["blocked"] is True
        page.click("#confirm")
        page.wait_for_selector("#outcome", timeout=WAIT)
        assert page.inner_text("#outcome") == "Resume: done", page.inner_text("main")
        st = env.api("GET", "/status")
        assert st["api"]["blocked"] is False and st["processing"] is True
        page.click("#back")
        page.wait_for_function("() => document.getElementById('api-state')?.textContent.startsWith('open')",
                               timeout=WAIT)
        with Store.for_env(env.state_dir) as store:  # what the CLI's `incident show` reads
            inc = store.incidents("staging")[0]
            timeline = store.events(incident_id=inc.id)
        assert inc.title == "emergency stop: schedules look corrupt" and inc.trigger["who"] == "erin"
        assert any(e.kind == "resumed" and "resumed by erin" in e.message for e in timeline)
        page.screenshot(path=str(tmp_path / "resumed.png"), full_page=True, timeout=WAIT)
    finally:
        ctx.close()



def test_at_a_phones_width_nothing_scrolls_sideways_and_an_ended_session_says_so(browser: Any,
                                                                                  env: RunningEnv) -> None:
    ctx = browser.new_context(viewport=PHONE)
    ctx.set_default_timeout(WAIT)
    page = ctx.new_page()
    try:
        sign_in(page, env, "frank")
        assert_no_sideways_scroll(page, "the dashboard")
        page.fill("form[action$='/actions/rollback'] input[name=reason]",
                  "a long reason that an operator typed in a hurry, with no spaces_in_this_part_of_it_at_all_x")
        page.click("form[action$='/actions/rollback'] button[type=submit]")
        assert "Confirm: Roll back" in page.inner_text("h1")
        assert_no_sideways_scroll(page, "the rollback's confirm page")
        page.click("text=Cancel")
        page.wait_for_selector("#live[data-state=on]", timeout=WAIT)
        # the server ends the stream for good (401: the session is no longer valid), not a network blip
        page.route("**/ui/stream*", lambda route: route.fulfill(status=401, body="sign in first",
                                                                 content_type="text/plain"))
        page.reload()
        page.wait_for_selector("#live[data-state=closed]", timeout=WAIT)
        assert page.inner_text("#live-state") == "signed out — reload to sign in"
    finally:
        ctx.close()
