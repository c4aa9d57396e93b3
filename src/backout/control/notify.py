"""Notifications through apprise: what happened, to which versions, why (value vs threshold),
and the command that shows more.

Delivery never blocks the caller: a rollback must not wait on Slack. `notify()` only renders the
message and queues it; each target has its own background thread (so one dead or slow target
delays nobody else) that sends with retries and exponential backoff (tenacity), and logs every failure.
A target receives a notification when its severity reaches the target's `min_severity`.

Secrets stay out of backout.toml: a target URL's `${VAR}` is that environment variable's value, filled
in only to send. Wherever a target is named (logs, the store, `status`) it is apprise's privacy URL with
`${VAR}` in place of the value, and the value is redacted from every log record of apprise, urllib3,
requests and this module (a URL with its path can reach their debug lines and exception texts).
Every body ends with the environment's contacts, so whoever reads it knows whom to call.
"""

from __future__ import annotations

import logging
import os
import queue
import re
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import apprise
from apprise import NotifyFormat, NotifyType, PersistentStoreMode
from tenacity import RetryCallState, Retrying, retry_if_result, stop_after_attempt, wait_exponential

from backout.errors import UsageError
from backout.manifest import NotifySpec
from backout.redact import REDACTOR

log = logging.getLogger(__name__)

SEVERITY_RANK = {"info": 0, "warning": 1, "critical": 2}

# kind → (default severity, title template). Templates see every Notification field plus
# `where` ("[service/env]"), `arrow` ("v6 → v7"), `weight_pct` and `outcome`.
_D = "{where} deployment {deployment_id}"
KINDS: dict[str, tuple[str, str]] = {
    "deployment_started": ("info", _D + " started: {arrow}"),
    "step_reached": ("info", _D + ": {weight_pct} on {target}"),
    "succeeded": ("info", _D + " succeeded: {target} serves 100 %"),
    "rolled_back": ("critical", _D + " rolled back to {stable}"),
    "stopped": ("warning", _D + " stopped: {arrow}"),
    "hook_failed": ("critical", _D + ": {hook} hook failed"),
    "deadline_exceeded": ("critical", _D + " exceeded its progress deadline"),
    "approval_needed": ("warning", _D + " waits for approval: {arrow}"),
    "emergency_stop": ("critical", "{where} emergency stop"),
    "incident_opened": ("critical", "{where} incident {incident_id} opened"),
    "resumed": ("info", "{where} service resumed after the emergency stop"),
    "incident_closed": ("info", "{where} incident {incident_id} resolved"),
    "drill_result": ("info", "{where} rollback drill {outcome}"),
}
_NOTIFY_TYPE = {"info": NotifyType.INFO, "warning": NotifyType.WARNING, "critical": NotifyType.FAILURE}


class _Blank(dict):
    def __missing__(self, key: str) -> str:
        return "?"


@dataclass(frozen=True)
class Notification:
    """One thing worth telling people. `evidence` holds sentences of value against threshold
    ("error rate 31.0 % (9/29) > 5 % over 60 s on worker v7"); `command` the CLI command that shows
    the incident or deployment. `severity` defaults to the kind's."""

    kind: str
    environment: str
    severity: str | None = None
    deployment_id: str | None = None
    stable: str | None = None  # release labels: `r6`, or `r6 (worker v12)` where versions differ
    target: str | None = None
    reason: str = ""
    evidence: Sequence[str] = ()
    command: str = ""
    incident_id: str | None = None
    weight: float | None = None  # step_reached: percent on the new version
    hook: str = ""  # hook_failed: pre-traffic / post-traffic / its name
    passed: bool | None = None  # drill_result
    service: str = ""
    notice: str = ""  # text ready for a status page or customers (the resolved notice of incident_closed)
    extra: dict[str, Any] = field(default_factory=dict)  # extra "key: value" lines in the body
    ts: float = field(default_factory=time.time)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown notification kind {self.kind!r}; known: {', '.join(KINDS)}")
        if self.severity is None:
            sev = KINDS[self.kind][0]
            if self.kind == "drill_result" and self.passed is False:
                sev = "warning"
            object.__setattr__(self, "severity", sev)
        if self.severity not in SEVERITY_RANK:
            raise ValueError(f"severity must be one of {', '.join(SEVERITY_RANK)}, not {self.severity!r}")
        if isinstance(self.evidence, str):
            object.__setattr__(self, "evidence", (self.evidence,))

    @property
    def title(self) -> str:
        values = _Blank({k: v for k, v in self.__dict__.items() if v is not None})
        values["where"] = f"[{self.service}/{self.environment}]" if self.service else f"[{self.environment}]"
        values["arrow"] = f"{self.stable} → {self.target}" if self.stable is not None else f"{self.target}"
        values["weight_pct"] = f"{self.weight:g} %" if self.weight is not None else "?"
        values["outcome"] = {True: "passed", False: "FAILED", None: "finished"}[self.passed]
        return KINDS[self.kind][1].format_map(values)

    @property
    def body(self) -> str:
        lines: list[str] = []
        if self.reason:
            lines.append(f"Reason: {self.reason}")
        if self.evidence:
            lines.append("Evidence:")
            lines.extend(f"  - {e}" for e in self.evidence)
        if self.target is not None:
            releases = f"stable {self.stable}, " if self.stable is not None else ""
            lines.append(f"Releases: {releases}new {self.target}")
        if self.deployment_id:
            lines.append(f"Deployment: {self.deployment_id}")
        if self.incident_id:
            lines.append(f"Incident: {self.incident_id}")
        for k, v in self.extra.items():
            lines.append(f"{k}: {v}")
        lines.append(f"Environment: {self.environment}   Severity: {self.severity}")
        if self.command:
            lines.append(f"Details: {self.command}")
        if self.notice:
            lines += ["", "Status page / customer notice:", self.notice]
        return "\n".join(lines)


@dataclass(frozen=True)
class DeliveryResult:
    """What became of one notification at one target (given to `on_result`, e.g. to store an event)."""

    target: str  # the URL with secrets masked
    notification: Notification
    ok: bool
    attempts: int
    error: str = ""


_STOP = object()
_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
# the loggers a target URL (with a secret in it) can reach: apprise's, the HTTP stack's, this module's
_SECRET_LOGGERS = ("apprise", "urllib3.connectionpool", "urllib3.connection", "urllib3.util.retry", "requests",
                   __name__)


_REDACTOR = REDACTOR  # the one redaction helper: logs, incidents, reports and --json use it too
for _name in _SECRET_LOGGERS:
    logging.getLogger(_name).addFilter(_REDACTOR)


def expand(url: str) -> tuple[str, dict[str, str]]:
    """The URL with each `${VAR}` replaced by that environment variable, and {value: "${VAR}"};
    a UsageError naming the variable (never a value) when one is not set."""
    secrets: dict[str, str] = {}

    def value(m: re.Match[str]) -> str:
        v = os.environ.get(m.group(1))
        if v is None:
            raise UsageError(f"notify url {_mask(url)!r} needs the environment variable {m.group(1)}, "
                             "which is not set")
        secrets[v] = m.group(0)
        return v

    return _VAR.sub(value, url), secrets


class _Target:
    """One apprise URL with its own queue and sender thread."""

    def __init__(self, spec: NotifySpec, owner: Notifier) -> None:
        self.spec = spec
        self.owner = owner
        url, secrets = expand(spec.url)
        for v, placeholder in secrets.items():
            _REDACTOR.add(v, placeholder)
        self.apprise = apprise.Apprise(asset=apprise.AppriseAsset(storage_mode=PersistentStoreMode.MEMORY))
        plugin = apprise.Apprise.instantiate(url, asset=self.apprise.asset)
        if plugin is None:
            raise UsageError(f"notify url {_mask(spec.url)!r} is not a URL apprise understands "
                             "(see https://github.com/caronc/apprise/wiki)")
        self.apprise.add(plugin)
        self.name = _REDACTOR.redact(plugin.url(privacy=True).split("?", 1)[0])  # secrets masked, defaults dropped
        self.queue: queue.Queue[Any] = queue.Queue()
        self.thread = threading.Thread(target=self._run, name=f"notify:{self.name[:40]}", daemon=True)
        self.thread.start()

    def wants(self, n: Notification) -> bool:
        return SEVERITY_RANK[n.severity or "info"] >= SEVERITY_RANK[self.spec.min_severity]

    def _run(self) -> None:
        while True:
            item = self.queue.get()
            if item is _STOP:
                return
            try:
                self._deliver(item)
            finally:
                self.owner._done()

    def _send(self, n: Notification) -> tuple[bool, str]:
        """One delivery attempt: (delivered, why not). Never raises: a plugin bug must not kill the
        sender thread."""
        try:
            ok = bool(self.apprise.notify(title=n.title, body=self.owner.body(n), body_format=NotifyFormat.TEXT,
                                          notify_type=_NOTIFY_TYPE[n.severity or "info"]))
        except Exception as e:
            return False, _REDACTOR.redact(f"{type(e).__name__}: {e}")
        return ok, "" if ok else "the service refused it or could not be reached"

    def _deliver(self, n: Notification) -> None:
        o = self.owner
        error = ""

        def retrying_in(state: RetryCallState) -> None:
            log.warning("notification %s to %s failed (attempt %d of %d): %s; retrying in %.2f s",
                        n.kind, self.name, state.attempt_number, o.attempts, error, state.upcoming_sleep)

        for attempt in o._retrying(before_sleep=retrying_in):
            number = attempt.retry_state.attempt_number
            if number > 1 and o._closing.is_set():  # close() cut the backoff short
                log.error("notification %s to %s dropped at shutdown after %d attempt(s): %s",
                          n.kind, self.name, number - 1, error)
                o._report(DeliveryResult(self.name, n, False, number - 1, error or "shutdown"))
                return
            ok, error = self._send(n)
            attempt.retry_state.set_result(ok)  # the outcome tenacity's retry_if_result judges
            if ok:
                log.info("notification %s delivered to %s (attempt %d)", n.kind, self.name, number)
                o._report(DeliveryResult(self.name, n, True, number))
                return
        log.error("notification %s to %s failed after %d attempts, giving up: %s",
                  n.kind, self.name, o.attempts, error)
        o._report(DeliveryResult(self.name, n, False, o.attempts, error))


def _mask(url: str) -> str:
    scheme, sep, rest = url.partition("://")
    return f"{scheme}://…" if sep and rest else url


class Notifier:
    """Sends notifications to the environment's apprise targets, in the background.

    `attempts` tries per target with `backoff`, 2×`backoff`, 4×`backoff` … (capped at
    `max_backoff`) seconds between them. `on_result` is called from the sender threads with each
    final DeliveryResult. `contacts` ("on call: Dana Lee (#incidents)") end every body. Invalid URLs
    and unset `${VAR}`s raise UsageError here, at construction, not at send time."""

    def __init__(
        self,
        targets: Sequence[NotifySpec],
        *,
        attempts: int = 4,
        backoff: float = 1.0,
        max_backoff: float = 30.0,
        on_result: Callable[[DeliveryResult], None] | None = None,
        contacts: Sequence[str] = (),
    ) -> None:
        if attempts < 1:
            raise ValueError("attempts must be at least 1")
        self.contacts = list(contacts)
        self.attempts = attempts
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.on_result = on_result
        self._pending = 0
        self._cond = threading.Condition()
        self._closing = threading.Event()
        self._closed = False
        self._targets: list[_Target] = []
        try:
            for spec in targets:
                self._targets.append(_Target(spec, self))
        except BaseException:
            self.close(timeout=0)
            raise

    @property
    def targets(self) -> list[str]:
        """The target URLs, secrets masked (for logs and `backout status`)."""
        return [t.name for t in self._targets]

    def body(self, n: Notification) -> str:
        """What a target receives as the message: the notification's body, then the contacts."""
        if not self.contacts:
            return n.body
        return "\n".join([n.body, "", "Contacts:", *(f"  - {c}" for c in self.contacts)])

    def notify(self, n: Notification) -> int:
        """Queue `n` for every target whose min_severity it reaches; returns how many. Never blocks,
        never raises on delivery problems."""
        if self._closed:
            log.warning("notification %s after close: dropped", n.kind)
            return 0
        chosen = [t for t in self._targets if t.wants(n)]
        if chosen:
            with self._cond:
                self._pending += len(chosen)
            for t in chosen:
                t.queue.put(n)
        return len(chosen)

    def flush(self, timeout: float = 30.0) -> bool:
        """Wait until every queued notification is delivered or given up; False on timeout."""
        with self._cond:
            return self._cond.wait_for(lambda: self._pending == 0, timeout=timeout)

    def close(self, timeout: float = 5.0) -> None:
        """Flush for up to `timeout`, then stop the sender threads (pending retries are dropped, logged)."""
        if self._closed:
            return
        self.flush(timeout)
        self._closed = True
        self._closing.set()
        for t in self._targets:
            t.queue.put(_STOP)
        for t in self._targets:
            t.thread.join(timeout=max(0.1, timeout))

    def __enter__(self) -> Notifier:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _retrying(self, before_sleep: Callable[[RetryCallState], None]) -> Retrying:
        """The retry policy of one delivery: `attempts` tries, waits of backoff·2^(n-1) capped at
        max_backoff (no jitter), retried while apprise answers False.

        tenacity rather than stamina: apprise reports a failed send by returning False, and stamina
        retries on exceptions only; stamina also has no hook for the sleep, while tenacity takes one,
        so the wait is the shutdown event's and close() cuts a backoff short (stamina's defaults,
        jitter and a 45 s overall timeout, would also change the waits operators see logged)."""
        return Retrying(
            stop=stop_after_attempt(self.attempts),
            wait=wait_exponential(multiplier=self.backoff, exp_base=2, max=self.max_backoff),
            retry=retry_if_result(lambda delivered: not delivered),
            sleep=self._closing.wait,
            before_sleep=before_sleep,
            retry_error_callback=lambda state: None,  # out of attempts: end the loop, don't raise
        )

    def _done(self) -> None:
        with self._cond:
            self._pending -= 1
            self._cond.notify_all()

    def _report(self, result: DeliveryResult) -> None:
        if self.on_result is None:
            return
        try:
            self.on_result(result)
        except Exception:
            log.exception("notification on_result callback failed")
