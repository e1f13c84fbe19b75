"""Turning tallies into a report: the JSON document, the summary table, ``--compare``,
``--capacity`` and the ``--plot`` HTML page.

The JSON document (``"schema": "fastws-bench/1"``) is described in
benchmarks/README.md; :data:`METRIC_KEYS` lists the metrics each mode fills.
"""

from __future__ import annotations

import datetime as _dt
import html
import json
import math
import os
import platform
import sys
from typing import Any

from fastws.bench.stats import histogram, latency_summary

__all__ = ["SCHEMA", "build_report", "format_table", "compare", "capacity", "write_plot", "METRIC_KEYS",
           "load_previous"]

SCHEMA = "fastws-bench/1"
TICK = 0.05

_COMMON = ["connections", "connect_failures", "dropped", "errors", "elapsed_s"]
METRIC_KEYS: dict[str, list[str]] = {
    "echo": ["messages_sent", "messages_received", "msgs_per_s", "mb_per_s", "latency_p50_ms",
             "latency_p90_ms", "latency_p99_ms", "latency_max_ms", "lost"],
    "storm": ["connects_per_s", "connect_p50_ms", "connect_p90_ms", "connect_p99_ms", "connect_max_ms"],
    "fanout": ["subscribers", "publishes", "publishes_per_s", "deliveries", "deliveries_per_s",
               "latency_p50_ms", "latency_p90_ms", "latency_p99_ms", "latency_max_ms", "lost"],
    "chat": ["rooms", "messages_sent", "msgs_per_s", "deliveries", "deliveries_per_s", "latency_p50_ms",
             "latency_p90_ms", "latency_p99_ms", "latency_max_ms", "lost"],
}

LABELS = {
    "connections": ("connections opened", ""), "connect_failures": ("connect failures", ""),
    "dropped": ("dropped by the server", ""), "errors": ("errors", ""), "elapsed_s": ("load time", "s"),
    "messages_sent": ("messages sent", ""), "messages_received": ("messages received", ""),
    "msgs_per_s": ("messages/s", ""), "mb_per_s": ("MB/s received", ""),
    "latency_p50_ms": ("latency p50", "ms"), "latency_p90_ms": ("latency p90", "ms"),
    "latency_p99_ms": ("latency p99", "ms"), "latency_max_ms": ("latency max", "ms"),
    "lost": ("lost", ""), "connects_per_s": ("connections/s", ""),
    "connect_p50_ms": ("handshake p50", "ms"), "connect_p90_ms": ("handshake p90", "ms"),
    "connect_p99_ms": ("handshake p99", "ms"), "connect_max_ms": ("handshake max", "ms"),
    "subscribers": ("subscribers", ""), "publishes": ("publishes", ""), "publishes_per_s": ("publishes/s", ""),
    "deliveries": ("deliveries", ""), "deliveries_per_s": ("deliveries/s", ""), "rooms": ("rooms", ""),
    "server_cpu_cores": ("server CPU (cores busy)", ""),
    "client_cpu_cores": ("bench CPU (cores busy)", ""),
    "compressed_connections": ("with permessage-deflate", ""),
}
#: metrics where a smaller value is an improvement (for --compare)
LOWER_IS_BETTER = {"connect_failures", "dropped", "errors", "lost", "elapsed_s"} | {
    k for k in LABELS if k.endswith("_ms")}


def merge(tallies: list[dict[str, Any]]) -> dict[str, Any]:
    """Sum the tallies of several processes (latencies are concatenated, timelines added)."""
    from array import array

    out: dict[str, Any] = {"latency": array("d"), "connect_latency": array("d"), "errors": {}, "timeline": [],
                           "extra": {}, "close_codes": {}}
    for t in tallies:
        for k in ("requested", "opened", "failed", "dropped", "sent", "received", "bytes_sent", "bytes_received",
                  "lost", "compressed"):
            out[k] = out.get(k, 0) + t[k]
        out["client_cpu"] = out.get("client_cpu", 0.0) + t.get("client_cpu", 0.0)
        for k in ("connect_seconds", "load_seconds"):
            out[k] = max(out.get(k, 0.0), t[k])
        out["interrupted"] = out.get("interrupted", False) or t["interrupted"]
        out["latency"].extend(t["latency"])
        out["connect_latency"].extend(t["connect_latency"])
        out["latency_stride"] = max(out.get("latency_stride", 1), t.get("latency_stride", 1))
        for k, v in t["errors"].items():
            out["errors"][k] = out["errors"].get(k, 0) + v
        for k, v in t["close_codes"].items():
            out["close_codes"][k] = out["close_codes"].get(k, 0) + v
        tl = out["timeline"]
        for i, v in enumerate(t["timeline"]):
            if i < len(tl):
                tl[i] += v
            else:
                tl.append(v)
        for k, v in t["extra"].items():
            if k in ("connects_per_s",):
                continue
            out["extra"][k] = out["extra"].get(k, 0.0) + v
        if t.get("server_cpu") is not None:
            out["server_cpu"] = t["server_cpu"]
        if t.get("fan_sent") is not None:
            out["fan_sent"] = t["fan_sent"]
        if t.get("fan_comp") is not None:
            out.setdefault("fan_comps", []).append(t["fan_comp"])
        if t.get("server_rss") is not None:
            out["server_rss"] = t["server_rss"]
    if out.get("fan_sent") is not None and out.get("fan_comps"):
        # fan-out over processes: publish n is complete when the last worker's last subscriber has it
        sent = out["fan_sent"]
        comps = out["fan_comps"]
        n = min([len(sent)] + [len(c) for c in comps])
        out["latency"].extend(max(c[i] for c in comps) - sent[i] for i in range(n))
    return out


def build_report(cfg: Any, tallies: list[dict[str, Any]], *, started_at: float, procs_used: int,
                 worker_errors: list[str] = ()) -> dict[str, Any]:  # type: ignore[assignment]
    """The JSON document of one run."""
    import fastws

    t = merge(tallies)
    for e in worker_errors:
        t["errors"][e] = t["errors"].get(e, 0) + 1
    mode = cfg.mode
    load = t.get("load_seconds") or 0.0
    m: dict[str, float] = {
        "connections": t.get("opened", 0),
        "connect_failures": t.get("failed", 0),
        "dropped": t.get("dropped", 0),
        "errors": sum(t["errors"].values()),
        "elapsed_s": round(load, 6),
        "compressed_connections": t.get("compressed", 0),
    }
    lat = latency_summary(t["latency"])
    con = latency_summary(t["connect_latency"])
    for k in ("p50", "p90", "p99", "max", "mean"):
        if k in lat:
            m[f"latency_{k}_ms"] = lat[k]
        if k in con:
            m[f"connect_{k}_ms"] = con[k]
    def rate(n: float) -> float:
        return n / load if load > 0 else 0.0

    if mode == "echo":
        m.update(messages_sent=t.get("sent", 0), messages_received=t.get("received", 0),
                 msgs_per_s=rate(t.get("received", 0)), mb_per_s=rate(t.get("bytes_received", 0)) / 1e6,
                 lost=t.get("lost", 0))
    elif mode == "storm":
        cs = t.get("connect_seconds") or 0.0
        m["connects_per_s"] = t.get("opened", 0) / cs if cs > 0 else 0.0
        m["elapsed_s"] = round(cs, 6)
    elif mode == "fanout":
        m.update(subscribers=int(t["extra"].get("subscribers", 0)), publishes=t.get("sent", 0),
                 publishes_per_s=rate(t["extra"].get("publishes_complete", 0)), deliveries=t.get("received", 0),
                 deliveries_per_s=rate(t.get("received", 0)), lost=t.get("lost", 0))
    elif mode == "chat":
        m.update(rooms=int(t["extra"].get("rooms", 0)), messages_sent=t.get("sent", 0), msgs_per_s=rate(t.get("sent", 0)),
                 deliveries=t.get("received", 0), deliveries_per_s=rate(t.get("received", 0)),
                 lost=t.get("lost", 0))
    if load > 0 and t["client_cpu"] > 0:
        m["client_cpu_cores"] = t["client_cpu"] / load
    if "server_cpu" in t and load > 0:
        m["server_cpu_cores"] = t["server_cpu"] / load
    if "server_rss" in t:
        m["server_rss_per_conn_bytes"] = t["server_rss"]
    timeline = t["timeline"]
    series = []
    prev = 0
    for i, v in enumerate(timeline):
        series.append({"t": round((i + 1) * TICK, 3), "total": v, "per_s": (v - prev) / TICK})
        prev = v
    ok = m["errors"] == 0 and m["connections"] > 0 and not t.get("interrupted")
    errors = sorted(t["errors"].items(), key=lambda kv: -kv[1])
    return {
        "schema": SCHEMA,
        "fastws_version": fastws.__version__,
        "mode": mode,
        "url": cfg.url,
        "options": cfg.as_dict() | {"procs_used": procs_used},
        "started_at": _dt.datetime.fromtimestamp(started_at, _dt.timezone.utc).isoformat(),
        "ok": ok,
        "interrupted": bool(t.get("interrupted")),
        "metrics": {k: (round(v, 6) if isinstance(v, float) else v) for k, v in m.items()},
        "errors": [{"message": k, "count": v} for k, v in errors],
        "close_codes": {str(k): v for k, v in sorted(t["close_codes"].items())},
        # storm has no message latency: its histogram is of handshake latencies
        "latency_histogram": histogram(t["connect_latency"] if mode == "storm" else t["latency"]),
        "latency_sampled_every": t.get("latency_stride", 1),
        "timeline": series,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": sys.platform},
    }


def _fmt(v: Any, unit: str = "") -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        if unit == "ms" or abs(v) < 100:
            s = f"{v:,.3f}" if abs(v) < 10 else f"{v:,.2f}" if abs(v) < 100 else f"{v:,.1f}"
        else:
            s = f"{v:,.0f}"
    else:
        s = f"{v:,}"
    return f"{s} {unit}".rstrip()


def _change(key: str, new: Any, old: Any) -> str:
    if not isinstance(new, (int, float)) or not isinstance(old, (int, float)):
        return ""
    if old == 0:
        return "" if new == 0 else "new"
    pct = (new - old) / abs(old) * 100
    better = (pct < 0) if key in LOWER_IS_BETTER else (pct > 0)
    mark = "" if abs(pct) < 0.5 else (" better" if better else " worse")
    return f"{pct:+.1f}%{mark}"


def format_table(report: dict[str, Any], previous: dict[str, Any] | None = None) -> str:
    """The human summary: one row per metric (with the previous run and the change when given)."""
    o = report["options"]
    what = (f"{o['count']:,} connections" if report["mode"] == "storm" else
            f"{o['count']:,} connections x {o['num'] or 'unbounded'} messages, {o['size']} B")
    head = (f"fastws bench {report['mode']} {report['url']}: {what}, {o['duration']:g} s max, "
            f"{o['procs_used']} process{'es' if o['procs_used'] != 1 else ''}")
    if report["interrupted"]:
        head += "  [INTERRUPTED: partial results]"
    extra = [] if report["mode"] == "storm" else ["connect_p50_ms"]
    if report["options"].get("compression"):
        extra.append("compressed_connections")
    keys = [k for k in _COMMON[:3] + extra + METRIC_KEYS[report["mode"]] + ["server_cpu_cores", "client_cpu_cores", "errors",
                                                                          "elapsed_s"]
            if k in report["metrics"]]
    rows = []
    pm = (previous or {}).get("metrics", {})
    for k in keys:
        label, unit = LABELS.get(k, (k, ""))
        row = [label, _fmt(report["metrics"][k], unit)]
        if previous is not None:
            row += [_fmt(pm.get(k), unit), _change(k, report["metrics"][k], pm.get(k))]
        rows.append(row)
    header = ["metric", "value"] + (["previous", "change"] if previous is not None else [])
    widths = [max(len(r[i]) for r in rows + [header]) for i in range(len(header))]
    lines = [head, ""]
    lines.append("  " + "  ".join(h.ljust(widths[i]) if i == 0 else h.rjust(widths[i]) for i, h in enumerate(header)))
    lines.append("  " + "  ".join("-" * w for w in widths))
    for r in rows:
        lines.append("  " + "  ".join(c.ljust(widths[i]) if i == 0 else c.rjust(widths[i]) for i, c in enumerate(r)))
    if report["errors"]:
        lines.append("")
        lines.append("errors:")
        for e in report["errors"][:8]:
            lines.append(f"  {e['count']:>8,}  {e['message']}")
    if "capacity" in report:
        lines.append("")
        lines.extend(format_capacity(report["capacity"]))
    return "\n".join(lines)


def load_previous(path: str) -> dict[str, Any]:
    """Read a report written by ``--json``; ValueError with a clear message otherwise."""
    try:
        with open(path, "rb") as f:
            doc = json.loads(f.read())
    except OSError as exc:
        raise ValueError(f"cannot read {path}: {exc.strerror or exc}") from None
    except ValueError:
        raise ValueError(f"{path} is not JSON (write it with fastws bench --json > {path})") from None
    if not isinstance(doc, dict) or doc.get("schema") != SCHEMA or not isinstance(doc.get("metrics"), dict):
        raise ValueError(f"{path} is not a fastws bench report (schema {SCHEMA})")
    return doc


def compare(report: dict[str, Any], previous: dict[str, Any]) -> dict[str, Any]:
    """``{metric: {"previous", "current", "change_pct"}}`` for the metrics both runs have."""
    out: dict[str, Any] = {}
    for k, v in report["metrics"].items():
        old = previous["metrics"].get(k)
        if isinstance(v, (int, float)) and isinstance(old, (int, float)):
            out[k] = {"previous": old, "current": v,
                      "change_pct": round((v - old) / abs(old) * 100, 3) if old else None}
    return out


def capacity(report: dict[str, Any], *, target_connections: int = 0, target_rate: float = 0.0,
             cores_per_machine: int = 0, memory_per_machine_gb: float = 0.0, server_cores: float = 0.0,
             utilisation: float = 0.7) -> dict[str, Any]:
    """Per-core figures from the run and the number of machines a target load needs.

    The server's CPU comes from ``/proc`` when ``--server-pid`` was given, else it is assumed
    that the run kept ``server_cores`` cores busy (1 by default: the usual case when the
    load generator saturates a single-process server). Machines are sized so that each
    runs at ``utilisation`` of its cores.
    """
    m = report["metrics"]
    mode = report["mode"]
    conns = m.get("connections", 0) or 0
    rate_key = {"echo": "msgs_per_s", "fanout": "deliveries_per_s", "chat": "deliveries_per_s",
                "storm": "connects_per_s"}[mode]
    rate = float(m.get(rate_key, 0.0) or 0.0)
    measured = "server_cpu_cores" in m
    cores = float(m["server_cpu_cores"]) if measured else (server_cores or 1.0)
    cores = max(cores, 1e-6)
    per_core_rate = rate / cores
    per_conn_rate = rate / conns if conns else 0.0
    cpm = cores_per_machine or os.cpu_count() or 1
    out: dict[str, Any] = {
        "rate_metric": rate_key,
        "server_cores": round(cores, 4),
        "server_cores_measured": measured,
        "rate_per_core": round(per_core_rate, 2),
        "connections_per_core": round(conns / cores, 2) if conns else 0,
        "per_connection_rate": round(per_conn_rate, 4),
        "cores_per_machine": cpm,
        "utilisation": utilisation,
    }
    tc = target_connections
    tr = target_rate
    if tc and not tr:
        tr = tc * per_conn_rate
    if tr and not tc and per_conn_rate:
        tc = int(math.ceil(tr / per_conn_rate))
    if tc or tr:
        cores_for_rate = tr / per_core_rate if per_core_rate else math.inf
        need_cores = cores_for_rate / utilisation
        machines_cpu = math.ceil(need_cores / cpm) if math.isfinite(need_cores) else None
        out.update(target_connections=tc, target_rate=round(tr, 2), cores_needed=round(need_cores, 2)
                   if math.isfinite(need_cores) else None, machines_for_cpu=machines_cpu)
        rss = m.get("server_rss_per_conn_bytes")
        machines_mem = None
        if rss and memory_per_machine_gb:
            machines_mem = math.ceil(tc * rss / (memory_per_machine_gb * (1 << 30) * utilisation))
            out["machines_for_memory"] = machines_mem
        candidates = [x for x in (machines_cpu, machines_mem) if x is not None]
        out["machines"] = max(1, max(candidates)) if candidates else None
    return out


def format_capacity(c: dict[str, Any]) -> list[str]:
    src = "measured from /proc" if c["server_cores_measured"] else "assumed (pass --server-pid to measure)"
    lines = ["capacity:",
             f"  server CPU during the run   {c['server_cores']:.2f} cores ({src})",
             f"  {c['rate_metric'].replace('_', ' ')} per core   {c['rate_per_core']:,.0f}",
             f"  connections per core        {c['connections_per_core']:,.0f} "
             f"(at {c['per_connection_rate']:,.2f} /s each, as in this run)"]
    if "machines" in c:
        lines.append(f"  target                      {c['target_connections']:,} connections, "
                     f"{c['target_rate']:,.0f} /s")
        if c.get("cores_needed") is not None:
            lines.append(f"  cores needed                {c['cores_needed']:,.1f} "
                         f"(at {c['utilisation']:.0%} utilisation)")
        lines.append(f"  machines ({c['cores_per_machine']} cores)         {c['machines']}")
    return lines


# ------------------------------------------------------------------ plot


def _svg_bars(points: list[tuple[str, float]], title: str, xlabel: str, ylabel: str, w: int = 720,
              h: int = 260) -> str:
    pad_l, pad_b, pad_t = 60, 40, 28
    n = max(1, len(points))
    top = max([v for _, v in points] + [1])
    bw = (w - pad_l - 10) / n
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}">',
             f'<text x="{w / 2}" y="18" text-anchor="middle" font-size="14">{html.escape(title)}</text>']
    for i, (label, v) in enumerate(points):
        bh = (h - pad_b - pad_t) * v / top
        x = pad_l + i * bw
        parts.append(f'<rect x="{x:.1f}" y="{h - pad_b - bh:.1f}" width="{max(bw - 1, 1):.1f}" height="{bh:.1f}" '
                     f'fill="#3b7dd8"><title>{html.escape(label)}: {v:,.0f}</title></rect>')
        if n <= 12 or i % max(1, n // 10) == 0:
            parts.append(f'<text x="{x + bw / 2:.1f}" y="{h - pad_b + 14}" font-size="10" '
                         f'text-anchor="middle">{html.escape(label)}</text>')
    parts.append(f'<line x1="{pad_l}" y1="{h - pad_b}" x2="{w - 10}" y2="{h - pad_b}" stroke="#333"/>')
    parts.append(f'<text x="{pad_l - 6}" y="{pad_t + 4}" font-size="10" text-anchor="end">{top:,.0f}</text>')
    parts.append(f'<text x="{w / 2}" y="{h - 6}" font-size="11" text-anchor="middle">{html.escape(xlabel)}</text>')
    parts.append(f'<text x="12" y="{h / 2}" font-size="11" transform="rotate(-90 12 {h / 2})" '
                 f'text-anchor="middle">{html.escape(ylabel)}</text></svg>')
    return "".join(parts)


def _svg_line(points: list[tuple[float, float]], title: str, xlabel: str, ylabel: str, w: int = 720,
              h: int = 260) -> str:
    pad_l, pad_b, pad_t = 60, 40, 28
    xmax = max([x for x, _ in points] + [1e-9])
    ymax = max([y for _, y in points] + [1])
    coords = " ".join(f"{pad_l + (w - pad_l - 10) * x / xmax:.1f},{h - pad_b - (h - pad_b - pad_t) * y / ymax:.1f}"
                      for x, y in points)
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}">'
            f'<text x="{w / 2}" y="18" text-anchor="middle" font-size="14">{html.escape(title)}</text>'
            f'<polyline fill="none" stroke="#d8563b" stroke-width="2" points="{coords}"/>'
            f'<line x1="{pad_l}" y1="{h - pad_b}" x2="{w - 10}" y2="{h - pad_b}" stroke="#333"/>'
            f'<line x1="{pad_l}" y1="{pad_t}" x2="{pad_l}" y2="{h - pad_b}" stroke="#333"/>'
            f'<text x="{pad_l - 6}" y="{pad_t + 4}" font-size="10" text-anchor="end">{ymax:,.0f}</text>'
            f'<text x="{pad_l - 6}" y="{h - pad_b}" font-size="10" text-anchor="end">0</text>'
            f'<text x="{w - 10}" y="{h - pad_b + 14}" font-size="10" text-anchor="end">{xmax:.1f} s</text>'
            f'<text x="{w / 2}" y="{h - 6}" font-size="11" text-anchor="middle">{html.escape(xlabel)}</text>'
            f'<text x="12" y="{h / 2}" font-size="11" transform="rotate(-90 12 {h / 2})" '
            f'text-anchor="middle">{html.escape(ylabel)}</text></svg>')


def write_plot(report: dict[str, Any], path: str) -> None:
    """A self-contained HTML page: the latency histogram and throughput over time (inline SVG)."""
    hist = [(f"{b['le_ms']:.3g}", float(b["count"])) for b in report["latency_histogram"]]
    series = report["timeline"]
    # 0.5 s bins: the 50 ms ticks are too noisy to read
    binned: list[tuple[float, float]] = []
    step = 10
    for i in range(0, len(series), step):
        chunk = series[i:i + step]
        total = chunk[-1]["total"] - (series[i - 1]["total"] if i else 0)
        binned.append((chunk[-1]["t"], total / (len(chunk) * TICK)))
    unit = "connections/s" if report["mode"] == "storm" else "messages/s"
    rows = "".join(f"<tr><td>{html.escape(LABELS.get(k, (k, ''))[0])}</td><td>{html.escape(_fmt(v, LABELS.get(k, ('', ''))[1]))}</td></tr>"
                   for k, v in report["metrics"].items())
    body = [f"<h1>fastws bench {html.escape(report['mode'])}</h1>",
            f"<p>{html.escape(report['url'])}, {html.escape(report['started_at'])}"
            f"{' (interrupted)' if report['interrupted'] else ''}</p>",
            f"<table>{rows}</table>"]
    if hist:
        body.append(_svg_bars(hist, "latency histogram", "latency (ms, bucket upper bound, log scale)", "count"))
    if binned:
        body.append(_svg_line(binned, "throughput over time", "time since the load started", unit))
    page = ("<!doctype html><html><head><meta charset='utf-8'><title>fastws bench</title><style>"
            "body{font-family:sans-serif;margin:2em}td{padding:2px 12px}svg{display:block;margin:1em 0}"
            "</style></head><body>" + "".join(body) + "</body></html>\n")
    with open(path, "w", encoding="utf-8") as f:
        f.write(page)
