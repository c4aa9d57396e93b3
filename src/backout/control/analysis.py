"""Canary-vs-stable judges: sequential, anytime-valid tests of "the new version is no worse".

**Count judges** (`errors-judge:<fn>`: Lambda Errors ÷ Invocations of each version; `5xx-judge`: the
API's 5xx responses other than the HTTP function's own errors ÷ Count; `slow-judge:<fn>`, for a function
with a p99 duration limit: its invocations slower than the limit — CloudWatch's trimmed count
`TC(limit:)` of Duration, the samples above it — ÷ Invocations). In each second s the platform knows
every version's requests (n_c, n_s) and events (c, e). Under H0 — the canary's rate is at most the
stable version's — each event comes from the canary with probability at most q = n_c / (n_c + n_s); if
its rate is r times the stable's, with p_r = r q / (r q + 1 − q). One second's likelihood ratio is

    LR_s(r) = (p_r / q)^c ((1 − p_r) / (1 − q))^e = r^c / (1 + q (r − 1))^(c + e)

and the mixture E_t = Σ_i w_i Π_{s ≤ t} LR_s(r_i) over `ALTERNATIVES` (r = 1.25 … 100, 20 log-spaced
points, uniform prior w_i) is a non-negative supermartingale under H0: for each r_i, E[LR_s] ≤ 1
whenever the canary's share of events is at most q. (The per-event binomial model is exact for Poisson
counts; for Bernoulli requests the count given the total is hypergeometric, smaller in convex order,
which only lowers E[LR_s].) By Ville's inequality P(sup_t E_t ≥ 1/α) ≤ α: deciding as soon as the
e-value reaches 1/α rolls a healthy canary back with probability at most α, however long the
deployment runs and however often it is looked at. The judges of one deployment share the
environment's `judge_alpha` (Bonferroni: each of k judges rejects at k/α), so α bounds the
deployment's false rollbacks by any judge.

**Interval** for the ratio: a confidence sequence from the same mixture. For a candidate ratio r0,
M_t(r0) = Σ_j v_j Π_s LR_s(r_j) / LR_s(r0) (v uniform over `CANDIDATES`, 0.01 … 1000 by ×1.1) is a
martingale when r0 is the true ratio, so {r0 : M_t(r0) < k/α} holds the true ratio at every t with
probability ≥ 1 − α/k; its hull is shown, one grid step wider on each side (the set is computed on the
grid: a ratio between the last candidate inside and the first outside may belong to it), 0 or ∞ where it
reaches the grid's ends. The estimate is the maximum-likelihood ratio (∞ while every event is the canary's).

**Latency judge** (`latency-judge:<fn>`): each second with requests on both versions gives one event,
the slowest request of that second (the `Maximum` of Duration, with its sample count). If the canary's
durations are no worse than g(stable's), g(x) = max((1 + tolerance) x, x + min_delta), the slowest
request is the canary's *and* beyond g of the stable's slowest with probability at most q (the maximum of
exchangeable samples is equally likely to be any of them), so the same e-process tests it: c = 1 when
the canary's slowest exceeds g(the stable's slowest), else e = 1. It replaces the fixed "3× and +1 s
over the stable p99" rule: a rank comparison of the same seconds, like Kayenta's Mann-Whitney, but
sequential. Its evidence counts seconds (the canary's slowest beyond, or not) beside each version's
requests; a second with one version alone counts that version's requests and compares nothing.

**DLQ judge** (`dlq-judge:<dlq>`, `…:<fn>` when several deployed functions consume its source
queues): a message moved to a DLQ is counted against the version that received it last
(`DeadLetterArrivals {QueueName, ExecutedVersion}`), so the same e-process tests the canary's arrivals
against the stable version's, with q the canary's share of the consumer's received messages over the
trailing `alarm_window` — read as its share of the consumer's invocations: the alias picks a version
per batch, independently of the batch's size, so the share of batches is the expected share of messages
(the same counts at batch_size 1). The window, not the second of the arrival, because a message goes
to the DLQ a retry delay after the receive that failed it. This q is an estimate, not the count the
arrival is drawn from, so here the guarantee is approximate: it holds while the weights are steady;
for up to `alarm_window` after a step up the window still holds seconds at the lower weight, and an
arrival from a receive after the step is judged at a share a little below its own — the one place
where this judge can lean against the canary. It confirms the DLQ alarm, as the consumer's errors
judge does.

**Data**: closed seconds — ended `settle` seconds ago, so their counts no longer change — each
judged once, in order (a late count for a judged second is ignored). A second with events but no
requests on either version is skipped (nothing to attribute them to); one where a version had no
requests carries no information (q = 0 or 1, LR = 1). A restarted deployer rebuilds the same e-value
from the same seconds. Queries: per judge one per statistic over the seconds not yet judged, at 1 s
(`errors`: 4, `5xx`: 4 + 2 for the HTTP function's errors, latency: 2, slow: 2 + the errors judge's
invocations, DLQ: 2 + the errors judge's invocations), merged across judges and with the alarms into
ONE batched metrics call by `evaluate_all`.

**Where no judge can judge** (`unjudged`, `verdict`): every judge compares the versions in the same
seconds, so none can say anything about seconds in which the canary served alone — at 100 % (AllAtOnce,
or the last step held), or while the stable version gets no request at all (its judges are then
`starved`). With `confirm_with_judge` an alarm would wait there for a confirmation that cannot come, and
a release failing 30 % of its requests (under the 50 % ceiling) would ship: so an alarm acts on its own
once its window lies wholly at 100 % (from the first 100 % step; from the start when no step split the
traffic) or when every judge that confirms it is starved. At 100 % only the thresholds and the hooks
watch, as `docs/canary-analysis.md` says.

**Open seconds** (`open_seconds`, on a platform with `consistent_metrics`: the local one): the errors
and slow-requests judges do not wait for a second to close. At each evaluation (every 0.25 s locally)
they take what each unclosed second holds *beyond what they already judged of it* — the invocations that
completed since the last read, with their errors — as one more observation, and judge its remainder
(late samples included) the same way until it closes. Why this keeps the guarantee: the runtime records
an invocation's Invocations and Errors together under the store's lock and `metrics` reads one snapshot
under the same lock, so every increment is a set of whole invocations, each counted in exactly one
increment; an error once counted is never taken back, and the invocations that arrive later form the
next increment with their own errors. (An invocation's Duration is recorded in the same snapshot, so a
trimmed count of it — the slow-requests judge's events — is a sum of whole invocations too.) The
increments are cut by the evaluator's clock, which does not look at outcomes, so each is to the argument
above what a second is — a batch of requests with its own n_c, n_s and events — and the product over
increments is the same supermartingale. What it buys: a decision within one evaluation of the failure
that carries the e-value over, instead of after the whole second plus `settle` (a 50 %-failing canary at
5 requests/s: 9–11 canary requests instead of 14–16, BENCHMARKS.md). Not for the 5xx judge (the
gateway's 5XXError and the function's Errors are recorded at different instants, so an increment could
hold one without the other), the latency judge (a second's maximum is not a sum of increments) or the
DLQ judge (arrivals are sampled once a second), nor on AWS (CloudWatch ingests EMF lines late, metric by
metric: no snapshot holds an invocation whole).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import ClassVar

import numpy as np

from backout.control.alarms import (
    ALARM,
    INSUFFICIENT_DATA,
    OK,
    AlarmSet,
    CanaryEvidence,
    Evaluation,
    Fetched,
    MetricSource,
    MetricStat,
    StateChange,
    dlq_scopes,
    fetch_for,
)
from backout.manifest import Manifest
from backout.platforms.base import DLQ_ARRIVALS, NS_API, NS_BACKOUT, NS_LAMBDA, Datapoint, MetricQuery

log = logging.getLogger(__name__)

ALTERNATIVES = np.geomspace(1.25, 100.0, 20)  # r under H1: the canary's rate r times the stable's
LOG_PRIOR = np.full(ALTERNATIVES.size, -math.log(ALTERNATIVES.size))  # uniform on the log grid
CANDIDATES = np.geomspace(0.01, 1000.0, 121)  # ratios the confidence sequence is computed for (×1.1)
_GRID = np.concatenate([ALTERNATIVES, CANDIDATES])
_MAX_SECONDS = 10_800  # seconds judged per evaluation at most (GetMetricData's 1 s points in 3 h)
_E_CAP = 1e300  # e-values shown as numbers stay finite in JSON


def log_lr(r: np.ndarray, c: np.ndarray | float, m: np.ndarray | float, q: np.ndarray | float) -> np.ndarray:
    """log LR_s(r) = c log r − m log(1 + q (r − 1)) for every r (last axis) and every second (leading
    axes, broadcast): c canary events of m, q the canary's share of requests."""
    c, m, q = (np.asarray(x, dtype=float)[..., None] for x in (c, m, q))
    return c * np.log(r) - m * np.log1p(q * (r - 1.0))


def log_e_value(log_lr_sums: np.ndarray) -> np.ndarray:
    """log of the mixture e-value from the summed log LRs of `ALTERNATIVES` (last axis)."""
    return _logsumexp(log_lr_sums + LOG_PRIOR)


def _logsumexp(a: np.ndarray) -> np.ndarray:
    """log Σ exp(a) over the last axis, shifted by the maximum so nothing overflows. Judges call it four
    times a second each: numpy alone is several times quicker than scipy.special.logsumexp's checks."""
    m = np.max(a, axis=-1, keepdims=True)
    m = np.where(np.isfinite(m), m, 0.0)
    with np.errstate(divide="ignore"):  # all -inf: log 0 = -inf, as scipy's
        return (m + np.log(np.sum(np.exp(a - m), axis=-1, keepdims=True)))[..., 0]


@dataclass
class MixtureTest:
    """The e-process of one judge: fed one closed second at a time, it keeps the summed log LRs of
    every alternative and candidate ratio and the counts; `rejected` once E ≥ 1/alpha (and stays)."""

    alpha: float = 0.01
    canary_events: float = 0.0
    canary_requests: float = 0.0
    stable_events: float = 0.0
    stable_requests: float = 0.0
    informative: int = 0  # seconds with requests on both versions
    skipped: int = 0  # seconds with events and no requests (or canary events without canary requests)
    rejected: bool = False
    _sums: np.ndarray = field(default_factory=lambda: np.zeros(_GRID.size))
    _obs: list[tuple[float, float, float]] = field(default_factory=list)  # (c, m, q) per informative second

    @property
    def threshold(self) -> float:
        return 1.0 / self.alpha

    def observe(self, c: float, n_c: float, e: float, n_s: float,
                share: tuple[float, float] | None = None) -> None:
        """One closed second: c of the canary's n_c requests and e of the stable's n_s were events.
        `share`: the requests (canary, stable) that q is taken from, when not these (the DLQ judge's window)."""
        w_c, w_s = (n_c, n_s) if share is None else share
        if ((c or e) and w_c + w_s <= 0) or (c and w_c <= 0) or (e and w_s <= 0):
            self.skipped += 1
            return
        self.canary_events += c
        self.canary_requests += n_c
        self.stable_events += e
        self.stable_requests += n_s
        if w_c <= 0 or w_s <= 0:
            return  # one version alone: q is 0 or 1, every LR is 1
        self.informative += 1
        if not (c or e):
            return
        q = w_c / (w_c + w_s)
        self._sums += log_lr(_GRID, c, c + e, q)
        self._obs.append((c, c + e, q))
        if self.log_e >= math.log(self.threshold):
            self.rejected = True

    @property
    def log_e(self) -> float:
        return float(log_e_value(self._sums[: ALTERNATIVES.size]))

    @property
    def e_value(self) -> float:
        return min(math.exp(min(self.log_e, 700.0)), _E_CAP)

    def interval(self) -> tuple[float | None, float | None]:
        """Hull of the confidence sequence {r0 : M_t(r0) < 1/alpha}, widened by one grid step on each
        side: the set is computed on `CANDIDATES` only, and a ratio between the last candidate inside and
        the first outside may still belong to it. (low, high), high None when open; (None, None) before
        any event."""
        if not self._obs:
            return None, None
        s = self._sums[ALTERNATIVES.size:]
        inside = np.nonzero(s > _logsumexp(s) - math.log(s.size) - math.log(self.threshold))[0]
        lo, hi = int(inside[0]), int(inside[-1])
        return ((0.0 if lo == 0 else float(CANDIDATES[lo - 1])),
                (None if hi == s.size - 1 else float(CANDIDATES[hi + 1])))

    def estimate(self) -> float | None:
        """Maximum-likelihood ratio; None before any event or while every event is the canary's (∞)."""
        if not self._obs or sum(m - c for c, m, _ in self._obs) == 0:
            return None
        if sum(c for c, _, _ in self._obs) == 0:
            return 0.0
        from scipy.optimize import minimize_scalar  # on first use: a supervisor that never judges starts ≈ 0.6 s sooner

        c, m, q = (np.array(x) for x in zip(*self._obs, strict=True))

        def nll(log_r: float) -> float:
            return float(-(c * log_r - m * np.log1p(q * (math.exp(log_r) - 1.0))).sum())

        return float(math.exp(minimize_scalar(nll, bounds=(-12.0, 12.0), method="bounded").x))


def slower_than(ms: float) -> str:
    """The statistic that counts a second's invocations slower than `ms`: CloudWatch's trimmed count
    `TC(ms:)` (the samples > ms), written without an exponent (CloudWatch takes up to 10 decimals)."""
    return f"TC({f'{ms:.10f}'.rstrip('0').rstrip('.')}:)"


def _by_second(points: Sequence[Datapoint]) -> dict[int, Datapoint]:
    return {int(p.timestamp): p for p in points}


@dataclass
class _Judge:
    """What every judge shares: the closed seconds it has judged (`cursor`), its test, its verdict."""

    name: str
    subject: str  # `api v7 vs v6`
    since: float  # the first second judged: when traffic could first reach the canary
    settle: float = 1.0
    alpha: float = 0.01  # this judge's share of the deployment's α (JudgeSet sets it)
    confirms: tuple[str, ...] = ()  # the alarms this judge's ALARM confirms (confirm_with_judge)
    test: MixtureTest = field(default_factory=MixtureTest)
    open_seconds: bool = False  # also judge the seconds still filling (`consistent_metrics` platforms)
    cursor: int = field(default=0, init=False)
    _seen: dict[int, tuple[float, ...]] = field(default_factory=dict, init=False)  # open second → counts judged
    kind: ClassVar[str] = "count"  # what its evidence's counts are (CanaryEvidence.kind)

    def __post_init__(self) -> None:
        self.cursor = math.ceil(self.since)
        self.test.alpha = self.alpha

    def set_alpha(self, alpha: float) -> None:
        self.alpha = self.test.alpha = alpha

    def _stats(self) -> list[MetricStat]:
        raise NotImplementedError

    def _observe(self, series: dict[MetricStat, dict[int, Datapoint]], second: int) -> None:
        raise NotImplementedError

    def _label(self) -> str:
        raise NotImplementedError

    def _closed(self, now: float) -> int:
        """The end (exclusive) of the seconds that are closed at `now` (no count of theirs changes)."""
        return min(math.floor(now - self.settle), self.cursor + _MAX_SECONDS)

    def _end(self, now: float) -> int:
        """The end (exclusive) of the seconds read at `now`: the closed ones, with `open_seconds` also
        those still filling, up to the current one."""
        if self.open_seconds:
            return min(math.floor(now) + 1, self.cursor + _MAX_SECONDS)
        return self._closed(now)

    def _start(self) -> int:
        """The first second a query covers (a judge that looks back further says so)."""
        return self.cursor

    def _query(self, st: MetricStat, end: int) -> MetricQuery:
        return st.query(float(self._start()), float(end), 1)

    def plan(self, now: float) -> list[MetricQuery]:
        end = self._end(now)
        if end <= self.cursor or self.test.rejected:
            return []
        return [self._query(st, end) for st in self._stats()]

    def decide(self, fetched: Fetched, now: float) -> Evaluation:
        end, closed = self._end(now), self._closed(now)
        if end > self.cursor and not self.test.rejected:
            series = {st: _by_second(fetched.series(self._query(st, end))) for st in self._stats()}
            for s in range(self.cursor, end):
                self._observe(series, s)
                if s < closed or self.test.rejected:
                    self.cursor = s + 1
                    self._seen.pop(s, None)
                if self.test.rejected:
                    break
        return self.evaluation(now)

    def evidence(self) -> CanaryEvidence:
        t = self.test
        low, high = t.interval()
        return CanaryEvidence(self.name, t.e_value, t.threshold, t.estimate(), low, high, t.canary_events,
                              t.canary_requests, t.stable_events, t.stable_requests,
                              max(0.0, self.cursor - math.ceil(self.since)), self.kind)

    @property
    def starved(self) -> bool:
        """It cannot judge: the canary served requests and the stable version none, so nothing was
        compared (and nothing will be while the stable version gets no traffic)."""
        t = self.test
        return not t.rejected and t.informative == 0 and t.canary_requests > 0 and t.stable_requests == 0

    def evaluation(self, now: float) -> Evaluation:
        t = self.test
        ev = self.evidence()
        state = ALARM if t.rejected else (OK if t.informative else INSUFFICIENT_DATA)
        if state == INSUFFICIENT_DATA:
            detail = f"{self._label()} on {self.subject}: no second with requests on both versions yet"
        else:
            detail = f"{self._label()} on {self.subject}: {ev.sentence(named=False)}"
        return Evaluation(self.name, state, ev.e_value, t.threshold, "GreaterThanOrEqualToThreshold", ev.seconds,
                          detail, now, numerator=t.canary_events, denominator=t.canary_requests,
                          samples=t.canary_requests, breaching=int(t.rejected), evaluated=1, evidence=ev)

    def evaluate(self, source: MetricSource, now: float | None = None) -> Evaluation:
        """plan + one `source.metrics` call + decide."""
        now = time.time() if now is None else now
        return self.decide(Fetched.fetch(source, self.plan(now)), now)


@dataclass(frozen=True)
class Signal:
    """One version's events and requests per second: `events` minus `minus` (clipped at 0)."""

    events: MetricStat
    requests: MetricStat
    minus: tuple[MetricStat, ...] = ()

    @property
    def stats(self) -> list[MetricStat]:
        return [self.events, self.requests, *self.minus]

    def at(self, series: dict[MetricStat, dict[int, Datapoint]], second: int) -> tuple[float, float]:
        def v(st: MetricStat) -> float:
            p = series[st].get(second)
            return 0.0 if p is None else p.value

        return max(0.0, v(self.events) - sum(v(m) for m in self.minus)), v(self.requests)


@dataclass
class CountJudge(_Judge):
    """Events of the canary against the stable version's, per second (errors, 5xx)."""

    canary: Signal | None = None
    stable: Signal | None = None
    label: str = "errors"

    def _stats(self) -> list[MetricStat]:
        assert self.canary is not None and self.stable is not None
        return [*self.canary.stats, *self.stable.stats]

    def _observe(self, series: dict[MetricStat, dict[int, Datapoint]], second: int) -> None:
        assert self.canary is not None and self.stable is not None
        now = (*self.canary.at(series, second), *self.stable.at(series, second))
        before = self._seen.get(second, (0.0, 0.0, 0.0, 0.0))
        c, n_c, e, n_s = (max(0.0, x - b) for x, b in zip(now, before, strict=True))  # what came since
        self._seen[second] = now
        if c or n_c or e or n_s:
            self.test.observe(c, n_c, e, n_s)

    def _label(self) -> str:
        return self.label


@dataclass
class LatencyJudge(_Judge):
    """Is the canary's slowest request of a second slower than max((1 + tolerance) ×, + min_delta_ms)
    the stable version's slowest of the same second? (See the module docstring.)"""

    function: str = ""
    canary: str = ""
    stable: str = ""
    tolerance: float = 0.25
    min_delta_ms: float = 25.0
    kind: ClassVar[str] = "latency"

    def _stat(self, version: str) -> MetricStat:
        return MetricStat.of(NS_LAMBDA, "Duration", {"FunctionName": self.function, "ExecutedVersion": version},
                             "Maximum")

    def _stats(self) -> list[MetricStat]:
        return [self._stat(self.canary), self._stat(self.stable)]

    def _observe(self, series: dict[MetricStat, dict[int, Datapoint]], second: int) -> None:
        c = series[self._stat(self.canary)].get(second)
        s = series[self._stat(self.stable)].get(second)
        n_c = 0.0 if c is None else c.sample_count
        n_s = 0.0 if s is None else s.sample_count
        if c is None or s is None or n_c <= 0 or n_s <= 0:
            if n_c > 0 or n_s > 0:  # one version alone: its requests counted, nothing compared
                self.test.observe(0.0, n_c, 0.0, n_s)
            return
        slower = c.value > max(s.value * (1.0 + self.tolerance), s.value + self.min_delta_ms)
        self.test.observe(float(slower), c.sample_count, float(not slower), s.sample_count)

    def _label(self) -> str:
        return f"slowest request (> {1 + self.tolerance:g}× and +{self.min_delta_ms:g} ms)"


@dataclass
class DlqJudge(_Judge):
    """DLQ arrivals of the messages the canary received last, against the stable version's (see the
    module docstring): events per second from `{QueueName: dlq, ExecutedVersion}`, q from the consumer's
    invocations of each version over the trailing `window` seconds."""

    queue: str = ""  # the dead-letter queue
    function: str = ""  # the consumer of its source queue(s)
    canary: str = ""
    stable: str = ""
    window: int = 60

    def _arrivals(self, version: str) -> MetricStat:
        return MetricStat.of(NS_BACKOUT, DLQ_ARRIVALS, {"QueueName": self.queue, "ExecutedVersion": version})

    def _invocations(self, version: str) -> MetricStat:
        return MetricStat.of(NS_LAMBDA, "Invocations", {"FunctionName": self.function, "ExecutedVersion": version})

    def _stats(self) -> list[MetricStat]:
        return [self._arrivals(self.canary), self._arrivals(self.stable),
                self._invocations(self.canary), self._invocations(self.stable)]

    def _start(self) -> int:
        """The window before the first second not yet judged: the invocations that can have sent a
        message there (none before the deployment started)."""
        return max(math.ceil(self.since), self.cursor - self.window + 1)

    def _observe(self, series: dict[MetricStat, dict[int, Datapoint]], second: int) -> None:
        def total(st: MetricStat, seconds: range) -> float:
            return sum(p.value for s in seconds if (p := series[st].get(s)) is not None)

        now, window = range(second, second + 1), range(second - self.window + 1, second + 1)
        self.test.observe(total(self._arrivals(self.canary), now), total(self._invocations(self.canary), now),
                          total(self._arrivals(self.stable), now), total(self._invocations(self.stable), now),
                          share=(total(self._invocations(self.canary), window),
                                 total(self._invocations(self.stable), window)))

    def _label(self) -> str:
        return f"DLQ arrivals ({self.queue}, received last by {self.function})"


Judge = CountJudge | LatencyJudge | DlqJudge


def default_judges(manifest: Manifest, env_name: str, canary: dict[str, str], stable: dict[str, str],
                   since: float, open_seconds: bool = False) -> list[Judge]:
    """The judges of a deployment from `canary` (function → its new version) and `stable` versions.

    Only functions whose version changes and that have an event source (HTTP or queue) get judges:
    nothing else routes traffic to two versions during a deployment, and every judge costs the others
    a share of α. Each judge confirms the threshold alarms watching the same signal (`default_rules`'
    names); a function with a p99 duration limit also gets a slow-requests judge (with the latency
    judges), which confirms its `duration-p99` alarm. `open_seconds` (a platform with
    `consistent_metrics`): the errors and slow-requests judges also read the second still filling (see
    the module docstring)."""
    env = manifest.environment(env_name)
    fns = [fn for fn in canary if fn in stable and canary[fn] != stable[fn] and fn in manifest.functions
           and (manifest.functions[fn].http_events or manifest.functions[fn].queue_events)]
    settle = float(env.judge_settle)
    judges: list[Judge] = []

    def consumed(fn: str) -> tuple[str, ...]:
        """Alarms on the queues `fn` consumes: their DLQ's arrivals and their message age."""
        out: list[str] = []
        for e in manifest.functions[fn].queue_events:
            q = manifest.queues.get(e.queue)
            if q is not None and q.dead_letter_queue:
                out.append(f"dlq-arrivals:{q.dead_letter_queue}")
            out.append(f"queue-age:{e.queue}")
        return tuple(out)

    def lam(fn: str, v: str) -> tuple[MetricStat, MetricStat]:
        dims = {"FunctionName": fn, "ExecutedVersion": v}
        return MetricStat.of(NS_LAMBDA, "Errors", dims), MetricStat.of(NS_LAMBDA, "Invocations", dims)

    if env.error_judge:
        http = [fn for fn in fns if manifest.functions[fn].http_events]
        versions = sorted({canary[fn] for fn in http})
        groups = [("5xx-judge", "api-5xx", http)] if len(versions) == 1 else [
            (f"5xx-judge:{fn}", f"api-5xx:{fn}", [fn]) for fn in http]
        api_alarm = {fn: alarm for _, alarm, members in groups for fn in members}
        for fn in fns:
            c, s = canary[fn], stable[fn]
            # an HTTP function's errors are 502s: they confirm the API 5xx alarm too
            confirms = (f"error-rate:{fn}", *consumed(fn), *([api_alarm[fn]] if fn in api_alarm else []))
            judges.append(CountJudge(
                f"errors-judge:{fn}", f"{fn} v{c} vs v{s}", since, settle, confirms=confirms,
                open_seconds=open_seconds, canary=Signal(*lam(fn, c)), stable=Signal(*lam(fn, s)), label="errors",
            ))
        service = manifest.service.name
        for name, alarm, members in groups:
            c, s = canary[members[0]], stable[members[0]]

            def api(v: str, ms: list[str] = members) -> Signal:
                dims = {"ApiName": service, "Stage": env_name, "ExecutedVersion": v}
                return Signal(MetricStat.of(NS_API, "5XXError", dims), MetricStat.of(NS_API, "Count", dims),
                              tuple(lam(fn, v)[0] for fn in ms))

            judges.append(CountJudge(name, f"{service} v{c} vs v{s}", since, settle, confirms=(alarm,),
                                     canary=api(c), stable=api(s), label="5xx other than its errors"))
        for dlq in sorted({q.dead_letter_queue for q in manifest.queues.values() if q.dead_letter_queue}):
            sources = {n for n, q in manifest.queues.items() if q.dead_letter_queue == dlq}
            consumers = [fn for fn in fns if any(e.queue in sources for e in manifest.functions[fn].queue_events)]
            alarms = [name for name, _ in dlq_scopes(manifest, dlq, canary)]
            for fn in consumers:
                c, s = canary[fn], stable[fn]
                confirms = tuple(a for a in alarms if a in (f"dlq-arrivals:{dlq}", f"dlq-arrivals:{dlq}:{fn}"))
                judges.append(DlqJudge(
                    f"dlq-judge:{dlq}" + (f":{fn}" if len(consumers) > 1 else ""), f"{fn} v{c} vs v{s}", since,
                    settle, confirms=confirms, queue=dlq, function=fn, canary=c, stable=s,
                    window=max(1, math.ceil(float(env.alarm_window))),
                ))
    if env.latency_judge:
        limits = manifest.duration_p99_limits(env_name)  # seconds; Duration is in ms
        for fn in (fn for fn in fns if fn in limits):
            ms = limits[fn] * 1000.0

            def slow(v: str, fn: str = fn, ms: float = ms) -> Signal:
                dims = {"FunctionName": fn, "ExecutedVersion": v}
                return Signal(MetricStat.of(NS_LAMBDA, "Duration", dims, slower_than(ms)),
                              MetricStat.of(NS_LAMBDA, "Invocations", dims))

            judges.append(CountJudge(
                f"slow-judge:{fn}", f"{fn} v{canary[fn]} vs v{stable[fn]}", since, settle,
                confirms=(f"duration-p99:{fn}", *consumed(fn)), open_seconds=open_seconds,
                canary=slow(canary[fn]), stable=slow(stable[fn]), label=f"requests slower than {ms:g} ms",
            ))
        for fn in fns:
            judges.append(LatencyJudge(
                f"latency-judge:{fn}", f"{fn} v{canary[fn]} vs v{stable[fn]}", since, settle,
                confirms=(f"duration-p99:{fn}", *consumed(fn)), function=fn, canary=canary[fn], stable=stable[fn],
                tolerance=env.latency_tolerance, min_delta_ms=env.latency_min_delta * 1000.0,
            ))
    return judges


@dataclass
class JudgeChange:
    previous: str | None
    evaluation: Evaluation


@dataclass
class JudgeSet:
    """The judges of one deployment and each one's current verdict; `evaluate` returns the changes.
    They share `alpha` (each rejects at len(judges)/alpha). When the metrics call (or one judge)
    raises, the judge keeps its verdict (logged, in `errors`)."""

    judges: list[Judge]
    alpha: float = 0.01
    current: dict[str, Evaluation] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for j in self.judges:
            j.set_alpha(self.alpha / len(self.judges))

    def plan(self, now: float) -> list[MetricQuery]:
        return [q for j in self.judges for q in j.plan(now)]

    def decide(self, fetched: Fetched, now: float) -> list[JudgeChange]:
        changes = []
        for j in self.judges:
            try:
                ev = j.decide(fetched, now)
            except Exception as e:  # one broken judge must not kill the deployer's loop
                self._failed(j, e)
                continue
            self.errors.pop(j.name, None)
            prev = self.current.get(j.name)
            self.current[j.name] = ev
            if prev is None or prev.state != ev.state:
                changes.append(JudgeChange(None if prev is None else prev.state, ev))
        return changes

    def evaluate(self, source: MetricSource, now: float | None = None) -> list[JudgeChange]:
        """plan + one `source.metrics` call + decide."""
        now = time.time() if now is None else now
        fetched = fetch_for(source, now, self)
        return [] if fetched is None else self.decide(fetched, now)

    def unavailable(self, error: Exception) -> None:
        for j in self.judges:
            self._failed(j, error)

    def _failed(self, j: Judge, e: Exception) -> None:
        self.errors[j.name] = f"{type(e).__name__}: {e}"
        log.warning("judge %s: metrics unavailable: %s", j.name, e)

    def alarming(self) -> list[Evaluation]:
        return [e for e in self.current.values() if e.state == ALARM]

    def confirming(self, alarm: str) -> list[Judge]:
        """The judges whose verdict confirms `alarm` (none: the alarm stands on its own)."""
        return [j for j in self.judges if alarm in j.confirms]

    def cannot_judge(self, alarm: str) -> bool:
        """Every judge that confirms `alarm` is starved: the canary served requests, the stable version
        none, so no judge has anything to compare (`_Judge.starved`)."""
        js = self.confirming(alarm)
        return bool(js) and all(j.starved for j in js)


def evaluate_all(
    source: MetricSource, alarms: AlarmSet, judges: JudgeSet, now: float | None = None
) -> list[StateChange | JudgeChange]:
    """One evaluation of a deployment's alarms and judges with ONE metrics call; the state changes
    (each has `previous` and `evaluation`), alarms first. A failed call changes nothing."""
    now = time.time() if now is None else now
    fetched = fetch_for(source, now, alarms, judges)
    if fetched is None:
        return []
    return [*alarms.decide(fetched, now), *judges.decide(fetched, now)]


@dataclass(frozen=True)
class Verdict:
    """What one evaluation decides. `firing`: the evaluations that roll back (empty: go on), the one
    that decided first, `trigger` its kind (`alarm` or `judge`); `waiting`: alarms in ALARM that wait for
    their judge (confirm_with_judge). Every alarm here carries its judge's evidence."""

    trigger: str | None
    firing: list[Evaluation]
    waiting: list[Evaluation]


def with_judge(e: Evaluation, judges: JudgeSet) -> Evaluation:
    """An alarm's evaluation with the evidence of the (first) judge that watches its signal."""
    js = judges.confirming(e.alarm)
    if not js or e.evidence is not None:
        return e
    ev = next((judges.current[j.name].evidence for j in js if judges.current.get(j.name) is not None
               and judges.current[j.name].state == ALARM), None)
    ev = ev or js[0].evidence()
    return replace(e, detail=f"{e.detail}; {ev.sentence()}", evidence=ev)


def unjudged(e: Evaluation, judges: JudgeSet, alone_since: float | None) -> str | None:
    """Why an alarm that a judge watches cannot wait for it (None: it can). A judge compares the canary
    with the stable version in the same seconds, so it cannot judge what the alarm saw when the canary
    had all the traffic throughout the alarm's window (`alone_since`: the instant from which no traffic
    was split, -inf when none ever was; None while it is), nor while the stable version serves no
    request at all (every confirming judge starved). Waiting then would wait forever."""
    if alone_since is not None and e.ts - e.window_seconds >= alone_since - 1e-6:
        return "no stable traffic to compare with (the canary had all of it over the window): it acts alone"
    if judges.cannot_judge(e.alarm):
        return "no stable traffic to compare with (the stable version served no request): it acts alone"
    return None


def verdict(alarms: AlarmSet, judges: JudgeSet, confirm_with_judge: bool,
            alone_since: float | None = None) -> Verdict:
    """Which of the alarms and judges in ALARM roll back now.

    Without confirmation (the procedure's default): every alarm and judge in ALARM, alarms first.
    With `confirm_with_judge`: an alarm that has a judge rolls back only together with it — the judge
    decides, the alarm is shown as confirmed; ceilings, alarms no judge watches and alarms whose judges
    cannot judge what they saw (`unjudged`: at 100 %, or no stable traffic) roll back on their own."""
    alarming = [with_judge(e, judges) for e in alarms.alarming()]
    judged = judges.alarming()
    if not confirm_with_judge:
        firing = alarming + judged
        trigger = None if not firing else ("alarm" if alarming else "judge")
        return Verdict(trigger, firing, [])
    rules = {r.name: r for r in alarms.rules}
    alone: list[Evaluation] = []
    confirmable: list[Evaluation] = []
    for e in alarming:
        if rules[e.alarm].kind == "ceiling" or not judges.confirming(e.alarm):
            alone.append(e)
        elif (why := unjudged(e, judges, alone_since)) is not None:
            alone.append(replace(e, detail=f"{e.detail}; {why}"))
        else:
            confirmable.append(e)
    confirmed = [e for e in confirmable if any(j.test.rejected for j in judges.confirming(e.alarm))]
    waiting = [e for e in confirmable if e not in confirmed]
    if alone:
        return Verdict("alarm", alone + judged + confirmed, waiting)
    if judged:
        return Verdict("judge", judged + confirmed, waiting)
    return Verdict(None, [], waiting)
