"""fastws.metrics without sockets: the recorder, quantiles, the exposition, the JSON access formatter."""

from __future__ import annotations

import json
import logging

import pytest

import fastws
from fastws.metrics import JSONAccessFormatter, Observability, Recorder, RoomInfo, quantile


def test_quantile_interpolates_inside_the_bucket():
    buckets = [(1.0, 0), (2.0, 10), (4.0, 20), (float("inf"), 20)]
    assert quantile(buckets, 0.5) == pytest.approx(2.0)
    assert quantile(buckets, 0.25) == pytest.approx(1.5)
    assert quantile(buckets, 0.75) == pytest.approx(3.0)
    assert quantile([(1.0, 0), (float("inf"), 0)], 0.5) == 0.0
    # everything beyond the last finite bound: the bound, as histogram_quantile does
    assert quantile([(1.0, 0), (float("inf"), 5)], 0.99) == 1.0


def test_recorder_counts_and_storage_histogram():
    rec = Recorder()
    rec.guard("rate_limited", "connection_rate")
    rec.guard("rate_limited", "connection_rate")
    rec.guard("blocked", "firewall")
    rec.storage("commit", 0.0003)
    rec.storage("commit", 0.02, ok=False)
    rec.alarm_fired()
    rec.alarm_retried()
    rec.backpressure_drop(3)
    rec.backpressure_close()
    assert rec.guards == {("rate_limited", "connection_rate"): 2, ("blocked", "firewall"): 1}
    buckets, total, count = rec.storage_histograms()["commit"]
    assert count == 2 and total == pytest.approx(0.0203)
    assert dict(buckets)[0.0005] == 1 and dict(buckets)[0.025] == 2 and buckets[-1] == (float("inf"), 2)
    assert rec.storage_errors == {"commit": 1}
    assert rec.alarms == {"fired": 1, "retried": 1} and rec.backpressure == {"drop": 3, "close": 1}
    rec.reset()
    assert rec.guards == {} and rec.storage_ops == {}


def test_exposition_from_a_recorder_and_a_rooms_source():
    rec = Recorder()
    rec.add_rooms_source(lambda: [RoomInfo("a", 2, 7), ("b", 0, 1, True)])
    rec.guard("origin_rejected", "origin")
    rec.storage("get", 0.001)
    server = fastws.Server(fastws.Listener)
    obs = Observability(lambda: [server.endpoint], rec=rec)
    body, headers = obs.render_prometheus()
    text = body.decode()
    assert headers["Content-Type"].startswith("text/plain")
    assert 'fastws_guard_outcomes_total{outcome="origin_rejected",rule="origin"} 1' in text
    assert 'fastws_storage_latency_seconds_count{op="get"} 1' in text
    assert "fastws_rooms_active 1" in text and "fastws_rooms_hibernated 1" in text
    assert obs.analytics()["rooms"]["busiest"][0] == {"name": "a", "sessions": 2, "messages": 7}


@pytest.mark.allow_errors
def test_a_failing_rooms_source_does_not_break_a_scrape(caplog):
    rec = Recorder()

    def broken():
        raise RuntimeError("boom")

    rec.add_rooms_source(broken)
    with caplog.at_level(logging.ERROR, logger="fastws"):
        assert rec.rooms() == []
    assert caplog.records[0].getMessage() == "fastws: a rooms metrics source failed"
    rec.remove_rooms_source(broken)
    assert rec.rooms() == []


def test_paths_must_be_absolute():
    with pytest.raises(ValueError):
        Observability(lambda: [], metrics_path="metrics")


def test_json_access_formatter():
    record = logging.LogRecord("fastws.access", logging.INFO, __file__, 1, '%s "%s %s" %d', ("1.2.3.4", "GET", "/x", 404),
                               None)
    for k, v in {"client": "1.2.3.4", "method": "GET", "path": "/x", "status": 404, "close_code": None,
                 "duration_ms": 0.5}.items():
        setattr(record, k, v)
    line = json.loads(JSONAccessFormatter().format(record))
    assert line["message"] == '1.2.3.4 "GET /x" 404' and line["status"] == 404 and line["close_code"] is None
    assert line["level"] == "INFO" and line["time"].endswith("Z")


def test_config_file_takes_the_observability_options(tmp_path):
    from fastws.config import ConfigError, load_config

    cfg = tmp_path / "fastws.toml"
    cfg.write_text('[server]\nmetrics_path = "/prom"\nmetrics_port = 9100\nmetrics_token = "t"\n'
                   "dashboard = true\ndrain_delay = 2.5\n")
    assert load_config(str(cfg)).server == {"metrics_path": "/prom", "metrics_port": 9100, "metrics_token": "t",
                                            "dashboard": True, "drain_delay": 2.5}
    cfg.write_text('[server]\nmetrics_path = "prom"\n')
    with pytest.raises(ConfigError, match="server.metrics_path must be a path starting with /"):
        load_config(str(cfg))
