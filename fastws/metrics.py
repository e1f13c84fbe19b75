"""Observability: Prometheus metrics (``/metrics``), ``/analytics`` JSON, the live
dashboard, ``/healthz`` / ``/readyz`` and the access log.

Where the numbers come from:

- the engine keeps its counters and histograms in a C struct per endpoint
  (``Endpoint.stats()``); they are read when someone scrapes, nothing runs per
  message here;
- the layers above the engine (guards, rooms, storage, alarms) count into
  :data:`fastws.recorder`, a :class:`Recorder` of plain integers: recording is a dict
  update, and aioprometheus is imported only when ``/metrics`` is rendered.

A :class:`fastws.Server` built with ``metrics=True`` (the default) answers the paths of
an :class:`Observability` before the app sees the request.
"""

from __future__ import annotations

import asyncio
import bisect
import hmac
import json
import logging
import time
from collections.abc import Callable, Iterable
from importlib import resources
from typing import Any, NamedTuple

import orjson

from fastws.accept import Accept
from fastws.exceptions import ConnectionClosed, HandshakeError
from fastws.handshake import Request, Response, _HeadResponse

__all__ = [
    "Recorder",
    "RoomInfo",
    "recorder",
    "Observability",
    "AccessFormatter",
    "JSONAccessFormatter",
    "access_logger",
    "quantile",
]

#: The ``fastws.access`` logger: one record per upgrade (at close) and per refused or plain HTTP request.
access_logger = logging.getLogger("fastws.access")
logger = logging.getLogger("fastws")

#: storage latency buckets (seconds; +Inf is implicit)
STORAGE_BOUNDS = (0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1.0)


class RoomInfo(NamedTuple):
    """One room, as a rooms source reports it (see :meth:`Recorder.add_rooms_source`)."""

    name: str
    sessions: int
    messages: int
    hibernated: bool = False


class Recorder:
    """Plain counters for the layers above the engine, read at scrape time.

    Every method is a dict or integer update: call them where the event
    happens (a refusal, a storage commit, an alarm), never per message on a
    fast path that has no event.

    Guard outcomes (``outcome``, ``rule``) the guards record: ``rate_limited``
    (``connection_rate``, ``message_rate``), ``banned``, ``blocked``
    (``firewall``), ``origin_rejected`` (``origin``), ``auth_failed``
    (``missing_token``, ``invalid_token``, ``expired``), ``queue_wait``,
    ``queue_timeout`` and ``queue_full`` (``max_connections``).
    """

    def __init__(self) -> None:
        self.guards: dict[tuple[str, str], int] = {}
        self.backpressure: dict[str, int] = {"drop": 0, "close": 0}
        self.storage_ops: dict[str, int] = {}
        self.storage_errors: dict[str, int] = {}
        self._storage_lat: dict[str, list[float]] = {}   # op -> bucket counts (+Inf last) + [sum]
        self.alarms = {"fired": 0, "retried": 0}
        self._rooms: list[Callable[[], Iterable[RoomInfo | tuple[Any, ...]]]] = []

    # ------------------------------------------------------------ recording API

    def guard(self, outcome: str, rule: str = "") -> None:
        """Count one guard outcome, e.g. ``guard("rate_limited", "connection_rate")``."""
        key = (outcome, rule)
        self.guards[key] = self.guards.get(key, 0) + 1

    def backpressure_drop(self, n: int = 1) -> None:
        """Messages dropped for a peer that does not read (a slow consumer)."""
        self.backpressure["drop"] += n

    def backpressure_close(self) -> None:
        """A connection closed because its peer does not read."""
        self.backpressure["close"] += 1

    def storage(self, op: str, seconds: float, ok: bool = True) -> None:
        """One storage operation (``"get"``, ``"put"``, ``"commit"``, ...) and how long it took."""
        self.storage_ops[op] = self.storage_ops.get(op, 0) + 1
        if not ok:
            self.storage_errors[op] = self.storage_errors.get(op, 0) + 1
        lat = self._storage_lat.get(op)
        if lat is None:
            lat = self._storage_lat[op] = [0.0] * (len(STORAGE_BOUNDS) + 2)
        lat[bisect.bisect_left(STORAGE_BOUNDS, seconds)] += 1
        lat[-1] += seconds

    def alarm_fired(self) -> None:
        """A room alarm ran."""
        self.alarms["fired"] += 1

    def alarm_retried(self) -> None:
        """A room alarm failed and was scheduled again."""
        self.alarms["retried"] += 1

    def add_rooms_source(self, source: Callable[[], Iterable[RoomInfo | tuple[Any, ...]]]) -> None:
        """Register a callable listing the live rooms (called at scrape time only).

        It returns :class:`RoomInfo` tuples ``(name, sessions, messages, hibernated)``:
        messages is the room's running total of messages handled.
        """
        if source not in self._rooms:
            self._rooms.append(source)

    def remove_rooms_source(self, source: Callable[[], Iterable[Any]]) -> None:
        """Undo :meth:`add_rooms_source` (a router that shuts down)."""
        if source in self._rooms:
            self._rooms.remove(source)

    # ------------------------------------------------------------ reading

    def rooms(self) -> list[RoomInfo]:
        """Every room the sources report now."""
        out: list[RoomInfo] = []
        for source in list(self._rooms):
            try:
                out.extend(RoomInfo(*r) for r in source())
            except Exception:  # a broken source must not break a scrape
                logger.exception("fastws: a rooms metrics source failed")
        return out

    def storage_histograms(self) -> dict[str, tuple[list[tuple[float, int]], float, int]]:
        """``{op: (cumulative buckets, sum, count)}``."""
        out = {}
        for op, lat in self._storage_lat.items():
            acc = 0
            buckets = []
            for bound, n in zip((*STORAGE_BOUNDS, float("inf")), lat[:-1], strict=False):
                acc += int(n)
                buckets.append((bound, acc))
            out[op] = (buckets, lat[-1], acc)
        return out

    def reset(self) -> None:
        """Zero every counter (tests); rooms sources stay registered."""
        sources = self._rooms
        self.__init__()  # type: ignore[misc]
        self._rooms = sources


#: The process-wide recorder the guards and rooms count into.
recorder = Recorder()


def quantile(buckets: list[tuple[float, int]] | list[list[float]], q: float) -> float:
    """The ``q`` quantile (0..1) of a cumulative histogram, interpolated inside its bucket
    (Prometheus' ``histogram_quantile``). 0.0 when empty."""
    if not buckets:
        return 0.0
    total = buckets[-1][1]
    if total <= 0:
        return 0.0
    rank = q * total
    prev_bound, prev_count = 0.0, 0.0
    for bound, count in buckets:
        if count >= rank:
            if bound == float("inf"):
                return float(prev_bound)
            width = count - prev_count
            if width <= 0:
                return float(bound)
            return float(prev_bound + (bound - prev_bound) * (rank - prev_count) / width)
        prev_bound, prev_count = bound, count
    return float(prev_bound)


def _delta_buckets(now: list[Any], before: list[Any] | None) -> list[tuple[float, int]]:
    if not before:
        return [(b, c) for b, c in now]
    return [(b, c - c0) for (b, c), (_, c0) in zip(now, before, strict=False)]


# ---------------------------------------------------------------- access log


class AccessFormatter(logging.Formatter):
    """Plain access lines: ``127.0.0.1 "GET /chat" 101 1000 1523.4ms``.

    A record of :data:`access_logger` carries ``client``, ``method``, ``path``,
    ``status``, ``close_code`` (None for a refused request) and ``duration_ms``.
    """

    def __init__(self, fmt: str | None = None, datefmt: str | None = None) -> None:
        super().__init__(fmt or "%(asctime)s %(message)s", datefmt)


class JSONAccessFormatter(logging.Formatter):
    """One JSON object a line: ``{"time", "level", "logger", "message"}`` plus, for access
    records, ``client``, ``method``, ``path``, ``status``, ``close_code``, ``duration_ms``
    (``fastws serve --log-format json``)."""

    FIELDS = ("client", "method", "path", "status", "close_code", "duration_ms")

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in self.FIELDS:
            if hasattr(record, name):
                out[name] = getattr(record, name)
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, separators=(",", ":"), default=str)


def _client(request: Request) -> str:
    ip = request.scope.get("client_ip")
    if ip:
        return str(ip)
    addr = request.remote_address
    return str(addr[0]) if addr else "-"


def log_access(request: Request, status: int, close_code: int | None, started: float) -> None:
    """Write one access line (the server calls this; see :class:`AccessFormatter`)."""
    ms = round((time.monotonic() - started) * 1000.0, 3)
    client = _client(request)
    code = "-" if close_code is None else str(close_code)
    access_logger.info('%s "%s %s" %d %s %.1fms', client, request.method, request.path, status, code, ms,
                       extra={"client": client, "method": request.method, "path": request.path,
                              "status": status, "close_code": close_code, "duration_ms": ms})


# ---------------------------------------------------------------- the endpoints

_TEXT = "text/plain; charset=utf-8"


def _http_route(fn: Callable[[Any, Request], Response]) -> Callable[[Any, Request], Response]:
    """GET and HEAD (the same response without its body) only; no upgrades."""

    def route(ws: Any, request: Request) -> Response:
        if request.is_websocket:
            raise HandshakeError(400, "HTTP endpoint only")
        if request.method not in ("GET", "HEAD"):
            raise HandshakeError(405, "Method Not Allowed", [("Allow", "GET, HEAD")])
        response = fn(ws, request)
        if request.method == "HEAD":  # the GET's head, its Content-Length included, without the body
            return _HeadResponse(response.status, response.body, response.headers, response.content_type)
        return response

    return route


class Observability:
    """The observability endpoints of one server, answered before the app sees a request.

    Args:
        endpoints: returns the engine endpoints whose counters are reported
            (the server's own).
        ready: returns False while the server drains (``/readyz`` says 503).
        metrics: serve ``metrics_path`` and ``/analytics``.
        metrics_path: the Prometheus endpoint's path.
        analytics_path: the JSON analytics path.
        token: when set, the metrics, analytics and dashboard paths need
            ``Authorization: Bearer <token>`` (or ``?token=<token>``); 401 otherwise.
        dashboard: serve the live dashboard page at ``dashboard_path`` (and its
            feed, a WebSocket, at ``dashboard_path + "/ws"``).
        health: serve ``/healthz`` and ``/readyz`` (never token-protected).
        interval: seconds between two dashboard updates.
        rec: the :class:`Recorder` read (the process-wide :data:`fastws.recorder`).
        top_rooms: how many of the busiest rooms ``/analytics`` lists.
    """

    def __init__(self, endpoints: Callable[[], list[Any]], ready: Callable[[], bool] = lambda: True, *,
                 metrics: bool = True, metrics_path: str = "/metrics", analytics_path: str = "/analytics",
                 token: str | None = None, dashboard: bool = False, dashboard_path: str = "/dashboard",
                 health: bool = True, interval: float = 1.0, rec: Recorder | None = None,
                 top_rooms: int = 10) -> None:
        for p in (metrics_path, analytics_path, dashboard_path):
            if not p.startswith("/"):
                raise ValueError(f"observability paths start with '/': {p!r}")
        self._endpoints = endpoints
        self._ready = ready
        self.token = token or None
        self.interval = interval
        self.recorder = rec if rec is not None else recorder
        self.top_rooms = top_rooms
        self.metrics_path = metrics_path
        self.dashboard_path = dashboard_path.rstrip("/") or "/dashboard"
        self.routes: dict[str, Callable[[Any, Request], Any]] = {}
        http = _http_route
        if metrics:
            self.routes[metrics_path] = http(self._metrics)
            self.routes[analytics_path] = http(self._analytics)
        if dashboard:
            self.routes[self.dashboard_path] = self.routes[self.dashboard_path + "/"] = http(self._dashboard)
            self.routes[self.dashboard_path + "/ws"] = self._feed
        if health:
            self.routes["/healthz"] = http(self._healthz)
            self.routes["/readyz"] = http(self._readyz)
        self._page: bytes | None = None

    # ------------------------------------------------------------ routing

    def fastws_accept(self, ws: Any, request: Request) -> Any:
        """An accept hook answering only these paths (404 for others): what a separate
        metrics port serves."""
        route = self.routes.get(request.path)
        if route is None:
            raise HandshakeError(404, "Not Found")
        return route(ws, request)

    def _authorize(self, request: Request) -> None:
        if self.token is None:
            return
        given = None
        auth = request.headers.get("authorization")
        if auth is not None:
            scheme, _, value = auth.partition(" ")
            if scheme.lower() == "bearer":
                given = value.strip()
        if given is None:
            given = request.query_param("token")
        if given is None or not hmac.compare_digest(given.encode(), self.token.encode()):
            raise HandshakeError(401, "Unauthorized", [("WWW-Authenticate", "Bearer")])

    def _healthz(self, ws: Any, request: Request) -> Response:
        return Response(200, "ok\n", [("Cache-Control", "no-store")])

    def _readyz(self, ws: Any, request: Request) -> Response:
        if self._ready():
            return Response(200, "ready\n", [("Cache-Control", "no-store")])
        return Response(503, "draining\n", [("Cache-Control", "no-store")])

    def _metrics(self, ws: Any, request: Request) -> Response:
        self._authorize(request)
        body, headers = self.render_prometheus(request.headers.get_all("accept"))
        return Response(200, body, list(headers.items()), content_type=headers.get("Content-Type", _TEXT))

    def _analytics(self, ws: Any, request: Request) -> Response:
        self._authorize(request)
        return Response(200, orjson.dumps(self.analytics()), [("Cache-Control", "no-store")],
                        content_type="application/json")

    def _dashboard(self, ws: Any, request: Request) -> Response:
        self._authorize(request)
        if self._page is None:
            self._page = resources.files("fastws").joinpath("static/dashboard.html").read_bytes()
        return Response(200, self._page, [("Cache-Control", "no-store"),
                                          ("Content-Security-Policy",
                                           "default-src 'self'; img-src data:; script-src 'unsafe-inline'; "
                                           "style-src 'unsafe-inline'; connect-src 'self' ws: wss:")],
                        content_type="text/html; charset=utf-8")

    def _feed(self, ws: Any, request: Request) -> Any:
        if not request.is_websocket:
            raise HandshakeError(426, "Expected WebSocket", [("Upgrade", "websocket")])
        self._authorize(request)
        return Accept(handler=self._run_feed, compression=False)

    async def _run_feed(self, ws: Any) -> None:
        prev: dict[str, Any] | None = None
        try:
            while ws.open:
                now = self.snapshot(prev)
                prev = now["_raw"]
                del now["_raw"]
                await ws.send(orjson.dumps(now).decode())
                await asyncio.sleep(self.interval)
        except ConnectionClosed:
            pass

    # ------------------------------------------------------------ the numbers

    def engine_stats(self) -> dict[str, Any]:
        """The engine counters summed over the endpoints (histogram buckets too)."""
        stats = [ep.stats() for ep in self._endpoints()]
        if len(stats) == 1:
            return stats[0]  # type: ignore[no-any-return]
        total: dict[str, Any] = {}
        for st in stats:
            for k, v in st.items():
                if isinstance(v, (int, float)):
                    total[k] = total.get(k, 0) + v
                elif k in ("close_codes", "refused"):
                    d = total.setdefault(k, {})
                    for code, n in v.items():
                        d[code] = d.get(code, 0) + n
                else:  # histogram
                    h = total.get(k)
                    if h is None:
                        total[k] = {"buckets": list(v["buckets"]), "sum": v["sum"], "count": v["count"]}
                    else:
                        h["buckets"] = [(b, c + c2) for (b, c), (_, c2) in zip(h["buckets"], v["buckets"], strict=False)]
                        h["sum"] += v["sum"]
                        h["count"] += v["count"]
        return total

    def _rooms_section(self, rooms: list[RoomInfo]) -> dict[str, Any]:
        busiest = sorted(rooms, key=lambda r: (r.sessions, r.messages), reverse=True)[: self.top_rooms]
        return {
            "active": sum(1 for r in rooms if not r.hibernated),
            "hibernated": sum(1 for r in rooms if r.hibernated),
            "busiest": [{"name": r.name, "sessions": r.sessions, "messages": r.messages} for r in busiest],
        }

    def analytics(self) -> dict[str, Any]:
        """The ``/analytics`` document (durations in milliseconds, bandwidth in bytes)."""
        st = self.engine_stats()
        dur, lat = st["duration"], st["latency"]
        return {
            "connections": {"attempted": st["attempted"], "established": st["established"],
                            "failed": st["failed"], "active": st["active"]},
            "messages": {"sent": st["messages_sent"], "received": st["messages_received"], "errors": st["errors"]},
            "bandwidth": {"sent": st["bytes_sent"], "received": st["bytes_received"]},
            "performance": {
                "avgConnectionDuration": dur["sum"] * 1000.0 / dur["count"] if dur["count"] else 0.0,
                "avgMessageLatency": lat["sum"] * 1000.0 / lat["count"] if lat["count"] else 0.0,
            },
            "rooms": self._rooms_section(self.recorder.rooms()),
        }

    def snapshot(self, prev: dict[str, Any] | None = None) -> dict[str, Any]:
        """One dashboard update: totals, rates since ``prev`` (the last update's ``_raw``),
        latency percentiles over that interval (milliseconds), rooms and guard hits."""
        st = self.engine_stats()
        now = time.monotonic()
        raw = {"t": now, "in": st["messages_received"], "out": st["messages_sent"],
               "bin": st["bytes_received"], "bout": st["bytes_sent"], "lat": st["latency"]["buckets"]}
        if prev is not None and now > prev["t"]:
            dt = now - prev["t"]
            rates = {"messagesIn": (raw["in"] - prev["in"]) / dt, "messagesOut": (raw["out"] - prev["out"]) / dt,
                     "bytesIn": (raw["bin"] - prev["bin"]) / dt, "bytesOut": (raw["bout"] - prev["bout"]) / dt}
            window = _delta_buckets(raw["lat"], prev["lat"])
        else:
            rates = {"messagesIn": 0.0, "messagesOut": 0.0, "bytesIn": 0.0, "bytesOut": 0.0}
            window = _delta_buckets(raw["lat"], None)
        guards: dict[str, int] = {}
        for (outcome, _rule), n in self.recorder.guards.items():
            guards[outcome] = guards.get(outcome, 0) + n
        return {
            "time": time.time(),
            "connections": {"active": st["active"], "attempted": st["attempted"],
                            "established": st["established"], "failed": st["failed"], "closed": st["closed"]},
            "messages": {"received": st["messages_received"], "sent": st["messages_sent"], "errors": st["errors"]},
            "bandwidth": {"received": st["bytes_received"], "sent": st["bytes_sent"]},
            "rates": rates,
            "latency": {f"p{int(q * 100)}": quantile(window, q) * 1000.0 for q in (0.5, 0.9, 0.99)},
            "rooms": self._rooms_section(self.recorder.rooms()),
            "guards": guards,
            "refused": st["refused"],
            "_raw": raw,
        }

    def render_prometheus(self, accept: list[str] | None = None) -> tuple[bytes, dict[str, str]]:
        """The Prometheus exposition (text format) and its response headers."""
        from aioprometheus import histogram as _histogram
        from aioprometheus.collectors import Counter, Gauge, Histogram, Registry
        from aioprometheus.renderer import render

        st = self.engine_stats()
        rec = self.recorder
        reg = Registry()

        def counter(name: str, doc: str, values: Iterable[tuple[dict[str, str], float]]) -> None:
            c = Counter(name, doc, registry=reg)
            for labels, v in values:
                c.set(labels, v)

        def gauge(name: str, doc: str, value: float) -> None:
            Gauge(name, doc, registry=reg).set({}, value)

        def histogram(name: str, doc: str, series: Iterable[tuple[dict[str, str], Any, float, int]]) -> None:
            hist = None
            for labels, buckets, total, count in series:
                if hist is None:
                    hist = Histogram(name, doc, registry=reg, buckets=[b for b, _ in buckets])
                h = _histogram.Histogram(*[b for b, _ in buckets])
                for bound, n in buckets:
                    h.buckets[float(bound)] = int(n)
                h.sum = float(total)
                h.observations = int(count)
                hist.set_value(labels, h)

        for key, doc in (("attempted", "WebSocket upgrade requests"),
                         ("established", "Opening handshakes completed"),
                         ("failed", "Upgrade requests that never reached OPEN")):
            counter(f"fastws_connections_{key}_total", doc, [({}, st[key])])
        counter("fastws_connections_closed_total", "Established connections that ended, by close code",
                [({"code": code}, n) for code, n in sorted(st["close_codes"].items())] or [({"code": "1000"}, 0)])
        gauge("fastws_connections_active", "Open WebSocket connections", st["active"])
        counter("fastws_http_requests_total", "Plain HTTP requests answered", [({}, st["http_requests"])])
        counter("fastws_requests_refused_total", "Requests refused, by HTTP status",
                [({"status": s}, n) for s, n in sorted(st["refused"].items())] or [({"status": "400"}, 0)])
        counter("fastws_messages_received_total", "Messages received", [({}, st["messages_received"])])
        counter("fastws_messages_sent_total", "Messages sent", [({}, st["messages_sent"])])
        counter("fastws_bytes_received_total", "Payload bytes received", [({}, st["bytes_received"])])
        counter("fastws_bytes_sent_total", "Payload bytes sent", [({}, st["bytes_sent"])])
        counter("fastws_errors_total", "Connections failed for a protocol violation or an error",
                [({}, st["errors"])])
        counter("fastws_auto_responses_total", "Messages answered by an auto response",
                [({}, st["auto_responses"])])
        counter("fastws_broadcasts_total", "Broadcast deliveries", [({}, st["broadcasts"])])
        lat, dur = st["latency"], st["duration"]
        histogram("fastws_message_latency_seconds",
                  "From a message's last byte read to its handler's return",
                  [({}, lat["buckets"], lat["sum"], lat["count"])])
        histogram("fastws_connection_duration_seconds", "Lifetime of established connections",
                  [({}, dur["buckets"], dur["sum"], dur["count"])])
        rooms = rec.rooms()
        gauge("fastws_rooms_active", "Rooms awake", sum(1 for r in rooms if not r.hibernated))
        gauge("fastws_rooms_hibernated", "Rooms hibernated (sockets kept, no room object)",
              sum(1 for r in rooms if r.hibernated))
        counter("fastws_guard_outcomes_total", "Guard refusals and waits, by outcome and rule",
                [({"outcome": o, "rule": r}, n) for (o, r), n in sorted(rec.guards.items())]
                or [({"outcome": "rate_limited", "rule": "connection_rate"}, 0)])
        counter("fastws_backpressure_drops_total", "Messages dropped for peers that do not read",
                [({}, rec.backpressure["drop"])])
        counter("fastws_broadcast_skipped_total", "Broadcast deliveries skipped for a full write buffer",
                [({}, st["broadcast_skipped"])])
        counter("fastws_backpressure_closes_total", "Connections closed because their peer does not read",
                [({}, st.get("backpressure_closes", 0) + rec.backpressure["close"])])
        counter("fastws_storage_operations_total", "Room storage operations, by operation",
                [({"op": op}, n) for op, n in sorted(rec.storage_ops.items())] or [({"op": "commit"}, 0)])
        counter("fastws_storage_errors_total", "Room storage operations that failed",
                [({"op": op}, n) for op, n in sorted(rec.storage_errors.items())] or [({"op": "commit"}, 0)])
        storage = rec.storage_histograms()
        if storage:
            histogram("fastws_storage_latency_seconds", "Room storage operation latency",
                      [({"op": op}, b, s, c) for op, (b, s, c) in sorted(storage.items())])
        counter("fastws_alarms_fired_total", "Room alarms run", [({}, rec.alarms["fired"])])
        counter("fastws_alarms_retried_total", "Room alarms retried after a failure", [({}, rec.alarms["retried"])])
        body, headers = render(reg, accept or [])
        return body, dict(headers)
