"""fastws.bench's arithmetic without sockets: percentiles, histogram, merging, compare,
capacity, the share of each worker, the HTML plot."""

from __future__ import annotations

import math
from array import array

import pytest

from fastws.bench import _shares
from fastws.bench.report import capacity, compare, format_table, load_previous, merge, write_plot
from fastws.bench.runner import BenchConfig, Tally
from fastws.bench.stats import MAX_SAMPLES, Samples, histogram, latency_summary, percentiles


def test_percentiles_nearest_rank():
    values = [i / 1000 for i in range(1, 101)]  # 1..100 ms
    p = percentiles(values)
    assert p["p50"] == 0.050 and p["p90"] == 0.090 and p["p99"] == 0.099 and p["max"] == 0.100
    assert math.isclose(p["mean"], 0.0505)
    assert percentiles([]) == {}
    assert latency_summary([0.002])["p99"] == 2.0  # milliseconds


def test_histogram_log_buckets():
    h = histogram([0.001, 0.001, 0.0011, 0.010, 0.5])
    assert sum(b["count"] for b in h) == 5
    assert [b["le_ms"] for b in h] == sorted(b["le_ms"] for b in h)
    assert h[0] == {"le_ms": 1.0, "count": 2}  # 1 ms falls in the bucket whose upper bound is 1 ms


def test_samples_are_thinned_in_place_when_over_the_cap():
    s = Samples()
    add = s.add  # listeners bind this once: it must stay valid after thinning
    for _ in range(MAX_SAMPLES + 2):
        add(1.0)
    s.check()
    assert len(s.data) == (MAX_SAMPLES + 2 + 1) // 2 and s.stride == 2
    add(2.0)
    assert s.data[-1] == 2.0


def _tally(**kw) -> dict:
    t = Tally()
    for k, v in kw.items():
        setattr(t, k, v)
    return t.to_dict()


def test_merge_sums_counts_and_adds_timelines():
    a = _tally(opened=2, received=10, load_seconds=1.0, timeline=[1, 5, 10])
    a["latency"] = array("d", [0.001, 0.002])
    b = _tally(opened=3, received=20, load_seconds=2.0, timeline=[4, 20])
    b["latency"] = array("d", [0.003])
    b["errors"] = {"connection refused": 2}
    m = merge([a, b])
    assert m["opened"] == 5 and m["received"] == 30 and m["load_seconds"] == 2.0
    assert m["timeline"] == [5, 25, 10]
    assert list(m["latency"]) == [0.001, 0.002, 0.003]
    assert m["errors"] == {"connection refused": 2}


def test_merge_fanout_latency_is_to_the_last_worker():
    w0 = _tally()
    w0["fan_sent"] = array("d", [10.0, 11.0])
    w0["fan_comp"] = array("d", [10.5, 11.1])
    w1 = _tally()
    w1["fan_comp"] = array("d", [10.2, 11.4])
    m = merge([w0, w1])
    assert [round(x, 6) for x in m["latency"]] == [0.5, 0.4]


def _report(**metrics) -> dict:
    base = {"connections": 10, "connect_failures": 0, "dropped": 0, "errors": 0, "elapsed_s": 1.0}
    return {"schema": "fastws-bench/1", "mode": "echo", "url": "ws://127.0.0.1:1/", "interrupted": False,
            "options": {"count": 10, "num": 100, "size": 64, "duration": 10.0, "procs_used": 1},
            "metrics": base | metrics, "errors": []}


def test_compare_and_table_columns():
    old = _report(msgs_per_s=1000.0, latency_p99_ms=2.0)
    new = _report(msgs_per_s=1500.0, latency_p99_ms=1.0)
    c = compare(new, old)
    assert c["msgs_per_s"] == {"previous": 1000.0, "current": 1500.0, "change_pct": 50.0}
    assert c["latency_p99_ms"]["change_pct"] == -50.0
    table = format_table(new, old)
    row = next(ln for ln in table.splitlines() if ln.strip().startswith("messages/s"))
    assert row.split()[-2:] == ["+50.0%", "better"]
    row = next(ln for ln in table.splitlines() if ln.strip().startswith("latency p99"))
    assert row.split()[-2:] == ["-50.0%", "better"]  # lower latency is better


def test_capacity_sizes_machines_from_the_measured_core_usage():
    r = _report(msgs_per_s=50_000.0, server_cpu_cores=0.5)
    c = capacity(r, target_connections=100_000, target_rate=1_000_000, cores_per_machine=8)
    assert c["server_cores_measured"] is True
    assert c["rate_per_core"] == 100_000.0
    assert c["connections_per_core"] == 20.0
    # 1M msgs/s at 100k per core is 10 cores, at 70% utilisation 14.29 cores: 2 machines of 8
    assert c["cores_needed"] == pytest.approx(14.29, abs=0.01)
    assert c["machines"] == 2
    # only a connection target: the run's per-connection rate (5,000/s each) sets the message rate
    c = capacity(_report(msgs_per_s=50_000.0), target_connections=20, cores_per_machine=2)
    assert c["server_cores_measured"] is False and c["target_rate"] == 100_000.0
    assert c["machines"] == math.ceil(100_000 / 50_000 / 0.7 / 2)


def test_shares_keep_chat_rooms_in_one_worker():
    cfg = BenchConfig("ws://127.0.0.1:1/", mode="chat", count=25, room_size=10)
    assert _shares(cfg, 2) == [(0, 20), (20, 5)]
    cfg = BenchConfig("ws://127.0.0.1:1/", count=5)
    assert _shares(cfg, 2) == [(0, 3), (3, 2)]
    assert _shares(cfg, 8) == [(i, 1) for i in range(5)]  # never an empty worker


@pytest.mark.parametrize("bad, message", [
    ({"mode": "nope"}, "mode must be one of"),
    ({"count": 0}, "--count must be at least 1"),
    ({"duration": 0}, "--duration"),
    ({"num": -1}, "cannot be negative"),
    ({"mode": "fanout", "size": 0}, "--size of at least 1"),
])
def test_config_validation(bad, message):
    with pytest.raises(ValueError, match=message):
        BenchConfig("ws://127.0.0.1:1/", **bad).validate()


def test_load_previous_rejects_other_documents(tmp_path):
    p = tmp_path / "x.json"
    p.write_text('{"schema": "other"}')
    with pytest.raises(ValueError, match="not a fastws bench report"):
        load_previous(str(p))


def test_plot_is_self_contained_html(tmp_path):
    r = _report(msgs_per_s=10.0) | {"started_at": "2026-01-01T00:00:00+00:00",
                                    "latency_histogram": [{"le_ms": 1.0, "count": 3}, {"le_ms": 2.0, "count": 1}],
                                    "timeline": [{"t": 0.05 * (i + 1), "total": 10 * (i + 1), "per_s": 200.0}
                                                 for i in range(30)]}
    out = tmp_path / "p.html"
    write_plot(r, str(out))
    page = out.read_text()
    assert page.count("<svg") == 2 and "<script" not in page and "<link" not in page
    assert page.count("<rect") == 2  # one bar per histogram bucket
