"""The per-second metric store: statistics, periods, dimensions, persistence, Prometheus output."""

from __future__ import annotations

import random
import sqlite3
import statistics
import sys
import threading
import time

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from backout.errors import UsageError
from backout.platforms.base import MetricQuery
from backout.platforms.local.metrics import MetricStore, prometheus_name

NS = "AWS/Lambda"
DIMS = {"FunctionName": "api", "ExecutedVersion": "2"}


def _base(period: int = 60) -> int:
    """A recent epoch second aligned to `period` (recent so that retention keeps it on reload)."""
    now = int(time.time()) - 3 * period
    return now - now % period


def _one(store: MetricStore, stat: str, start: float, end: float, period: int = 60, dims=DIMS) -> float:
    dps = store.query(MetricQuery.of(NS, "Duration", dims, start, end, period, stat))
    assert len(dps) == 1, dps
    return dps[0].value


@pytest.mark.parametrize("seal", [False, True], ids=["hot", "packed"])
def test_statistics_match_numpy(seal: bool) -> None:
    rnd = random.Random(7)
    t0 = _base()
    values = [rnd.lognormvariate(3, 0.8) for _ in range(997)] + [5.0] * 50  # repeats exercise run-length
    store = MetricStore()
    for i, v in enumerate(values):
        store.record(NS, "Duration", DIMS, v, "Milliseconds", ts=t0 + (i % 60) + 0.25)
    if seal:
        store.flush(now=t0 + 600)  # every second settled → packed arrays
    arr = np.array(values)
    end = t0 + 60
    assert _one(store, "SampleCount", t0, end) == len(values)
    assert _one(store, "Sum", t0, end) == pytest.approx(arr.sum(), rel=1e-12)
    assert _one(store, "Average", t0, end) == pytest.approx(statistics.fmean(values), rel=1e-12)
    assert _one(store, "Minimum", t0, end) == arr.min()
    assert _one(store, "Maximum", t0, end) == arr.max()
    for p in (50, 90, 99, 99.9, 0, 100):
        name = f"p{p:g}"
        assert _one(store, name, t0, end) == pytest.approx(np.percentile(arr, p), rel=1e-12), name
    dp = store.query(MetricQuery.of(NS, "Duration", DIMS, t0, end, 60, "p90"))[0]
    assert dp.sample_count == len(values)


@pytest.mark.parametrize("seal", [False, True], ids=["hot", "packed"])
def test_trimmed_count_between_absolute_values_counts_as_cloudwatch_does(seal: bool) -> None:
    """`TC(X:Y)`: the samples with X < value <= Y (CloudWatch's bounds: lower exclusive, upper inclusive),
    a bound left out for none — what the slow-requests judge asks of Duration per second."""
    rnd = random.Random(11)
    t0 = _base()
    values = [rnd.choice([100.0, 250.0, 500.0, 750.0, 1000.0]) for _ in range(400)]  # repeats: run-length
    values += [rnd.random() * 2000 for _ in range(300)]
    store = MetricStore()
    for i, v in enumerate(values):
        store.record(NS, "Duration", DIMS, v, "Milliseconds", ts=t0 + (i % 60) + 0.5)
    if seal:
        store.flush(now=t0 + 600)  # packed, the repeated values run-length encoded
    arr = np.array(values)
    end = t0 + 60
    assert _one(store, "TC(500:)", t0, end) == np.count_nonzero(arr > 500)
    assert _one(store, "TC(:500)", t0, end) == np.count_nonzero(arr <= 500)
    assert _one(store, "TC(250:1000)", t0, end) == np.count_nonzero((arr > 250) & (arr <= 1000))
    assert _one(store, "tc(499.5:)", t0, end) == np.count_nonzero(arr > 499.5)
    per_second = store.query(MetricQuery.of(NS, "Duration", DIMS, t0, end, 1, "TC(500:)"))
    assert sum(d.value for d in per_second) == np.count_nonzero(arr > 500), "counts add up over periods"
    assert sum(d.sample_count for d in per_second) == len(values), "each datapoint's samples, all of them"
    for bad in ("TC(10%:90%)", "TC(:)", "TC(900:100)", "TC(abc:)"):
        with pytest.raises(UsageError, match="trimmed count"):
            store.query(MetricQuery.of(NS, "Duration", DIMS, t0, end, 60, bad))


def test_counts_of_zero_and_one_stay_exact_after_packing() -> None:
    t0 = _base()
    store = MetricStore()
    flags = [1.0 if i % 7 == 0 else 0.0 for i in range(700)]
    for i, f in enumerate(flags):
        store.record(NS, "Errors", {"FunctionName": "api"}, f, "Count", ts=t0 + i / 100)
    store.flush(now=t0 + 100)
    q = MetricQuery.of(NS, "Errors", {"FunctionName": "api"}, t0, t0 + 60, 60, "Sum")
    assert store.query(q)[0].value == sum(flags)
    assert store.query(q)[0].sample_count == 700


def test_periods_are_aligned_to_epoch_and_window_is_half_open() -> None:
    t0 = _base(60)
    store = MetricStore()
    for s in range(180):  # one sample per second over three aligned minutes
        store.record(NS, "Invocations", DIMS, 1, "Count", ts=t0 + s + 0.5)
    q = MetricQuery.of(NS, "Invocations", DIMS, t0, t0 + 180, 60, "Sum")
    assert [(d.timestamp, d.value) for d in store.query(q)] == [(t0, 60), (t0 + 60, 60), (t0 + 120, 60)]
    # a window that starts mid-period: the first datapoint keeps its aligned stamp, holds only [start, ...)
    q = MetricQuery.of(NS, "Invocations", DIMS, t0 + 30, t0 + 150, 60, "Sum")
    assert [(d.timestamp, d.value) for d in store.query(q)] == [(t0, 30), (t0 + 60, 60), (t0 + 120, 30)]
    # end is exclusive, period 1 gives per-second datapoints
    q = MetricQuery.of(NS, "Invocations", DIMS, t0 + 10, t0 + 13, 1, "SampleCount")
    assert [d.timestamp for d in store.query(q)] == [t0 + 10, t0 + 11, t0 + 12]
    # a 30 s period is aligned to multiples of 30 since the epoch, not to the window
    q = MetricQuery.of(NS, "Invocations", DIMS, t0 + 7, t0 + 180, 30, "Sum")
    assert [d.timestamp for d in store.query(q)] == [t0 + 30 * k for k in range(6)]
    assert [d.value for d in store.query(q)] == [23, 30, 30, 30, 30, 30]


def test_only_periods_with_samples_are_returned() -> None:
    t0 = _base(10)
    store = MetricStore()
    store.record(NS, "Errors", DIMS, 1, "Count", ts=t0 + 1)
    store.record(NS, "Errors", DIMS, 1, "Count", ts=t0 + 95)
    q = MetricQuery.of(NS, "Errors", DIMS, t0, t0 + 100, 10, "Sum")
    assert [d.timestamp for d in store.query(q)] == [t0, t0 + 90]
    q = MetricQuery.of(NS, "Errors", DIMS, t0 + 20, t0 + 80, 10, "Sum")
    assert store.query(q) == []
    assert store.query(MetricQuery.of(NS, "Errors", DIMS, 0, time.time() + 10, 60, "Sum"))  # huge window


def test_dimensions_match_exactly() -> None:
    t0 = _base()
    store = MetricStore()
    store.record(NS, "Invocations", {"FunctionName": "api"}, 1, "Count", ts=t0)
    store.record(NS, "Invocations", {"FunctionName": "api", "ExecutedVersion": "2"}, 1, "Count", ts=t0)
    store.record(NS, "Invocations", {"FunctionName": "api", "ExecutedVersion": "2"}, 1, "Count", ts=t0)
    store.record(NS, "Invocations", {"FunctionName": "worker"}, 1, "Count", ts=t0)

    def total(dims: dict) -> float:
        q = MetricQuery.of(NS, "Invocations", dims, t0, t0 + 60, 60, "Sum")
        return sum(d.value for d in store.query(q))

    assert total({"FunctionName": "api"}) == 1
    assert total({"ExecutedVersion": "2", "FunctionName": "api"}) == 2  # key order does not matter
    assert total({"FunctionName": "api", "ExecutedVersion": 2}) == 2  # values compare as strings
    assert total({"FunctionName": "worker"}) == 1
    assert total({}) == 0
    assert total({"ExecutedVersion": "2"}) == 0
    assert store.list_metrics(NS) == [  # sorted
        (NS, "Invocations", {"ExecutedVersion": "2", "FunctionName": "api"}),
        (NS, "Invocations", {"FunctionName": "api"}),
        (NS, "Invocations", {"FunctionName": "worker"}),
    ]
    assert store.list_metrics("AWS/SQS") == []


def test_bad_statistic_is_a_usage_error_and_an_illegal_period_refused() -> None:
    store = MetricStore()
    store.record(NS, "Duration", DIMS, 1.0)
    for stat in ("Median", "p101", "tm99", "sum"):
        with pytest.raises(UsageError, match="statistic"):
            store.query(MetricQuery.of(NS, "Duration", DIMS, 0, time.time() + 1, 60, stat))
    for period in (0, 7, 45, 69, 90):  # CloudWatch's periods only: 1, 5, 10, 30 s or multiples of 60
        with pytest.raises(ValueError, match="period"):
            MetricQuery.of(NS, "Duration", DIMS, 0, time.time() + 1, period, "Sum")


def test_metrics_survive_a_new_store_on_the_same_db(tmp_path) -> None:
    db = tmp_path / "platform.db"
    t0 = _base()
    rnd = random.Random(3)
    values = [rnd.random() * 100 for _ in range(300)]
    a = MetricStore(db)
    for i, v in enumerate(values[:200]):
        a.record(NS, "Duration", DIMS, v, "Milliseconds", ts=t0 + i * 0.1)
    a.flush(now=t0 + 1)  # some seconds still open: their samples so far are written, the rest later
    for i, v in enumerate(values[200:], start=200):
        a.record(NS, "Duration", DIMS, v, "Milliseconds", ts=t0 + i * 0.1)
    a.record(NS, "Duration", DIMS, 42.0, "Milliseconds", ts=t0 + 2.5)  # late sample for a written second
    a.flush()
    a.flush()  # nothing new: writes nothing
    expected = values + [42.0]
    b = MetricStore(db)
    for stat, want in (
        ("SampleCount", len(expected)),
        ("Sum", float(np.sum(expected))),
        ("Maximum", max(expected)),
        ("p90", float(np.percentile(expected, 90))),
    ):
        for store in (a, b):
            assert _one(store, stat, t0, t0 + 60) == pytest.approx(want, rel=1e-12), stat
    per_second = MetricQuery.of(NS, "Duration", DIMS, t0, t0 + 60, 1, "SampleCount")
    assert store.query(per_second) == a.query(per_second)
    tables = {r[0] for r in sqlite3.connect(db).execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert tables == {"m_datapoints"}
    b.close()


def test_retention_drops_old_samples_in_memory_and_on_disk(tmp_path) -> None:
    db = tmp_path / "platform.db"
    now = time.time()
    a = MetricStore(db, retention=60)
    a.record(NS, "Invocations", DIMS, 1, "Count", ts=now - 3600)  # already past retention
    a.record(NS, "Invocations", DIMS, 1, "Count", ts=now - 5)
    a.flush(now=now)
    q = MetricQuery.of(NS, "Invocations", DIMS, 0, now + 1, 60, "SampleCount")
    assert sum(d.value for d in a.query(q)) == 1
    assert sum(d.value for d in MetricStore(db, retention=60).query(q)) == 1
    old = sqlite3.connect(db).execute("SELECT count(*) FROM m_datapoints WHERE ts < ?", (now - 60,))
    assert old.fetchone() == (0,)


def test_concurrent_record_and_flush_lose_nothing(tmp_path) -> None:
    db = tmp_path / "platform.db"
    store = MetricStore(db)
    stop = threading.Event()

    def flusher() -> None:
        while not stop.is_set():
            store.flush()

    def writer(k: int) -> None:
        for _ in range(5000):
            store.record(NS, "Invocations", {"FunctionName": f"f{k % 2}"}, 1, "Count")

    f = threading.Thread(target=flusher)
    f.start()
    writers = [threading.Thread(target=writer, args=(k,)) for k in range(8)]
    for w in writers:
        w.start()
    for w in writers:
        w.join()
    stop.set()
    f.join()
    store.flush()
    q0 = MetricQuery.of(NS, "Invocations", {"FunctionName": "f0"}, 0, time.time() + 5, 3600, "Sum")
    q1 = MetricQuery.of(NS, "Invocations", {"FunctionName": "f1"}, 0, time.time() + 5, 3600, "Sum")
    for s in (store, MetricStore(db)):
        assert sum(d.value for d in s.query(q0)) == 20000
        assert sum(d.value for d in s.query(q1)) == 20000


def test_prometheus_output_parses_with_last_minute_and_totals() -> None:
    now = time.time()
    store = MetricStore()
    for i in range(10):
        store.record(NS, "Invocations", {"FunctionName": "api"}, 1, "Count", ts=now - 120 + i)  # older
    for i in range(5):
        store.record(NS, "Invocations", {"FunctionName": "api"}, 1, "Count", ts=now - 10 + i)
        store.record("AWS/ApiGateway", "Latency", {"ApiName": "sda", "Stage": "prod"}, 10.0 * i, "ms")
    store.record("AWS/SQS", "ApproximateNumberOfMessagesVisible", {"QueueName": "q"}, 7, "Count", ts=now - 2)
    store.record("AWS/SQS", "ApproximateNumberOfMessagesVisible", {"QueueName": "q"}, 3, "Count", ts=now - 1)
    text = store.prometheus(now=now)
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
    }
    api = (("FunctionName", "api"),)
    assert samples[("backout_aws_lambda_invocations_last_minute_sum", api)] == 5
    assert samples[("backout_aws_lambda_invocations_last_minute_count", api)] == 5
    assert samples[("backout_aws_lambda_invocations_total", api)] == 15
    assert samples[("backout_aws_lambda_invocations_samples_total", api)] == 15
    gw = (("ApiName", "sda"), ("Stage", "prod"))
    assert samples[("backout_aws_api_gateway_latency_last_minute_sum", gw)] == 100.0
    assert samples[("backout_aws_sqs_approximate_number_of_messages_visible", (("QueueName", "q"),))] == 3
    families = {f.name: f.type for f in text_string_to_metric_families(text)}
    assert families["backout_aws_lambda_invocations"] == "counter"
    assert families["backout_aws_sqs_approximate_number_of_messages_visible"] == "gauge"


def test_prometheus_names() -> None:
    assert prometheus_name("AWS/Lambda", "Invocations") == "backout_aws_lambda_invocations"
    assert prometheus_name("AWS/ApiGateway", "5XXError") == "backout_aws_api_gateway_5xx_error"
    assert prometheus_name("Backout", "DeadLetterArrivals") == "backout_backout_dead_letter_arrivals"


def test_memory_holds_a_window_and_older_seconds_are_read_from_the_db(tmp_path) -> None:
    """Bounded memory: seconds older than `memory` leave it once on disk, and every query answers the
    same as a store that keeps everything in memory, across the boundary and after a reload."""
    rnd = random.Random(3)
    now = int(time.time())
    t0 = now - 600
    full = MetricStore()  # no db: everything in memory
    bounded = MetricStore(tmp_path / "m.db", memory=120)
    for i in range(4000):
        ts = t0 + rnd.random() * 599
        v = rnd.lognormvariate(3, 0.8)
        for store in (full, bounded):
            store.record(NS, "Duration", DIMS, v, "Milliseconds", ts=ts)
            store.record(NS, "Errors", DIMS, float(i % 7 == 0), "Count", ts=ts)
        if i % 500 == 0:
            bounded.flush(now=ts + 1)
    bounded.flush(now=now)
    in_memory = {sec for s in bounded._series.values() for sec in [*s.cold.seconds(), *s.hot]}
    assert in_memory and min(in_memory) >= now - 120  # the rest is on disk only
    for period, stat in ((60, "p99"), (60, "SampleCount"), (10, "Sum"), (1, "Maximum"), (300, "Average")):
        q = MetricQuery.of(NS, "Duration" if stat != "Sum" else "Errors", DIMS, t0 - 60, now + 1, period, stat)
        want, got = full.query(q), bounded.query(q)
        assert [(d.timestamp, d.sample_count) for d in got] == [(d.timestamp, d.sample_count) for d in want]
        assert [d.value for d in got] == pytest.approx([d.value for d in want], rel=1e-12), (period, stat)
    reloaded = MetricStore(tmp_path / "m.db", memory=120)
    q = MetricQuery.of(NS, "Duration", DIMS, t0, now, 60, "p50")
    assert [d.value for d in reloaded.query(q)] == pytest.approx([d.value for d in full.query(q)])
    assert ("AWS/Lambda", "Duration", DIMS) in bounded.list_metrics(NS)
    bounded.close()
    reloaded.close()


def test_late_samples_for_sealed_seconds_add_up_in_their_period() -> None:
    """A sample for a second already packed is packed again beside it, out of time order: queries
    see one datapoint per period with every sample, whatever the statistic."""
    t0 = _base()
    store = MetricStore()
    for sec in (10, 11, 12):
        store.record(NS, "Duration", DIMS, float(sec), "Milliseconds", ts=t0 + sec)
    store.flush(now=t0 + 30)
    store.record(NS, "Duration", DIMS, 100.0, "Milliseconds", ts=t0 + 11.5)  # late, for a sealed second
    store.record(NS, "Duration", DIMS, 5.0, "Milliseconds", ts=t0 + 3)  # later still, and earlier in time
    store.flush(now=t0 + 40)
    q = MetricQuery.of(NS, "Duration", DIMS, t0, t0 + 60, 1, "SampleCount")
    assert [(d.timestamp - t0, d.value) for d in store.query(q)] == [(3, 1), (10, 1), (11, 2), (12, 1)]
    assert _one(store, "Maximum", t0, t0 + 60) == 100.0
    assert _one(store, "Minimum", t0, t0 + 60) == 5.0
    assert _one(store, "p50", t0, t0 + 60) == 11.0
    assert _one(store, "Sum", t0 + 11, t0 + 12, period=1) == 111.0
    assert _one(store, "TC(10:)", t0, t0 + 60) == 3


def test_the_window_in_memory_is_a_few_blocks_per_series_minute_not_objects_per_second() -> None:
    """Ten minutes of ten series at 50 samples a second, sealed: the packed window lives in a few
    large numpy blocks per series, not in one small Python object per series-second (which, living
    ten minutes among short-lived ones, kept the supervisor's small-object arenas from being freed)."""
    t0 = _base()
    store = MetricStore()
    keys = [store.series_key(NS, m, {"FunctionName": f"f{i}"}) for i in range(5) for m in ("Errors", "Duration")]
    rnd = random.Random(5)
    before = sys.getallocatedblocks()
    for i in range(600 * 50):
        ts = t0 - 600 + i / 50
        store.record_many([(k, float(rnd.random() < 0.02) if k[1] == "Errors" else rnd.random(), "Count")
                           for k in keys], ts)
        if i % 50 == 0:
            store.flush(now=ts)
    store.flush(now=t0 + 10)
    grown = sys.getallocatedblocks() - before
    sealed = sum(len(s.cold.seconds()) for s in store._series.values())
    assert sealed >= 10 * 590
    assert grown < 1500, f"{grown} small-object blocks for {sealed} sealed series-seconds"


def test_one_batch_mixes_statistics_that_need_the_samples_and_those_that_do_not() -> None:
    """`query_many` reads each query's sealed seconds for its own statistic: a percentile after a
    sum, or a sum after a percentile, in one batch (the metric summary asks both)."""
    t0 = _base()
    store = MetricStore()
    for i in range(300):
        store.record(NS, "Duration", DIMS, float(i), "Milliseconds", ts=t0 + i / 5)
    store.flush(now=t0 + 120)
    arr = np.arange(300.0)
    asks = ["p99", "TC(100:)", "p50", "SampleCount", "Sum"]
    got = store.query_many([MetricQuery.of(NS, "Duration", DIMS, t0, t0 + 60, 60, s) for s in asks])
    assert [dp[0].value for dp in got] == pytest.approx(
        [np.percentile(arr, 99), np.count_nonzero(arr > 100), np.percentile(arr, 50), 300, arr.sum()])


def test_a_series_idle_longer_than_the_window_leaves_memory_but_not_the_disk(tmp_path) -> None:
    """Each release's version series stop at the next release: with a db they leave memory once
    their last sample is older than the window, and are still listed and answered from disk; a store
    without a db keeps them until retention."""
    now = int(time.time())
    old = {"FunctionName": "api", "ExecutedVersion": "1"}
    new = {"FunctionName": "api", "ExecutedVersion": "2"}
    bounded, full = MetricStore(tmp_path / "m.db", memory=60), MetricStore()
    for store in (bounded, full):
        for i in range(30):
            store.record(NS, "Invocations", old, 1, "Count", ts=now - 200 + i)
        store.record(NS, "Invocations", new, 1, "Count", ts=now - 5)
        store.flush(now=now)
    in_memory = {dict(d)["ExecutedVersion"] for _ns, _m, d in bounded._series}
    assert in_memory == {"2"}
    assert {dict(d)["ExecutedVersion"] for _ns, _m, d in full._series} == {"1", "2"}
    assert (NS, "Invocations", old) in bounded.list_metrics(NS)
    q = MetricQuery.of(NS, "Invocations", old, now - 300, now + 1, 300, "Sum")
    assert [d.value for d in bounded.query(q)] == [d.value for d in full.query(q)] != []
    bounded.record(NS, "Invocations", old, 1, "Count", ts=now)  # back again: a new entry in memory
    assert sum(d.value for d in bounded.query(q)) == 31
    bounded.close()
