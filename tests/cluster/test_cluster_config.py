"""[cluster] in the TOML config, the environment, and which apps need a Redis under --workers."""

from __future__ import annotations

import orjson
import pytest

import fastws
from fastws.cli import _serves_rooms
from fastws.cluster import Cluster, cluster_from_env
from fastws.config import ConfigError, parse_config
from fastws.rooms import Room, RoomRouter


def test_cluster_section_is_checked():
    cfg = parse_config({"cluster": {"redis": "redis://127.0.0.1:6379/0", "lease_ttl": 2, "prefix": "app1"}})
    assert cfg.cluster == {"redis": "redis://127.0.0.1:6379/0", "lease_ttl": 2, "prefix": "app1"}
    with pytest.raises(ConfigError, match="cluster.redis must be a Redis URL"):
        parse_config({"cluster": {"redis": "http://x"}})
    with pytest.raises(ConfigError, match="cluster.lease_ttl"):
        parse_config({"cluster": {"lease_ttl": 0.1}})
    with pytest.raises(ConfigError, match="unknown key 'cluster.nodes'"):
        parse_config({"cluster": {"nodes": 3}})


def test_cluster_from_env(monkeypatch):
    monkeypatch.delenv("FASTWS_REDIS_URL", raising=False)
    assert cluster_from_env() is None
    monkeypatch.setenv("FASTWS_REDIS_URL", "redis://127.0.0.1:1/0")
    monkeypatch.setenv("FASTWS_LEASE_TTL", "1.5")
    c = cluster_from_env()
    assert isinstance(c, Cluster) and c.lease_ttl == 1.5 and cluster_from_env() is c
    assert RoomRouter(Room).cluster is c          # a router without cluster= uses the environment
    with pytest.raises(ValueError):
        Cluster("redis://x", lease_ttl=0.1)


def test_which_apps_serve_rooms():
    assert _serves_rooms(RoomRouter(Room))
    app = fastws.App()
    assert not _serves_rooms(app)
    app.mount("/rooms", RoomRouter(Room))
    assert _serves_rooms(app)
    assert not _serves_rooms(lambda ws: None)


async def test_unreachable_redis_answers_503(serve):
    # nothing listens on port 1: the router answers 503 "Room unavailable", it does not crash
    server = await serve(RoomRouter(Room, cluster=Cluster("redis://127.0.0.1:1/0", lease_ttl=0.5)))
    with pytest.raises(fastws.InvalidHandshake) as info:
        await fastws.connect(server.url + "/x")
    assert info.value.status == 503


def test_request_round_trip_keeps_what_the_owner_needs():
    """What a member's node sends to the owner: method, target, headers, peer, body and the
    JSON-able scope (verified claims, path params), nothing that cannot cross as JSON."""
    from fastws.cluster import decode_request, encode_request
    from fastws.handshake import Headers, Request

    req = Request("GET", "/chat/lobby?name=ann", Headers([("Host", "x"), ("Upgrade", "websocket")]),
                  remote_address=("127.0.0.1", 5555))
    req.body = b"\x00\xff"
    req.scope.update({"user": {"sub": "u1", "roles": ["a"]}, "params": {"path": "lobby"},
                      "client_ip": "127.0.0.1", "handle": object()})
    doc = orjson.loads(orjson.dumps(encode_request(req)))
    back = decode_request(doc)
    assert (back.method, back.target, back.path, back.query_param("name")) == ("GET", "/chat/lobby?name=ann",
                                                                                "/chat/lobby", "ann")
    assert list(back.headers) == list(req.headers) and back.remote_address == ("127.0.0.1", 5555)
    assert back.body == b"\x00\xff" and back.is_websocket
    assert back.scope == {"user": {"sub": "u1", "roles": ["a"]}, "params": {"path": "lobby"},
                          "client_ip": "127.0.0.1"}
