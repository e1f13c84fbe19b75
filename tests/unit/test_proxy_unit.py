"""Proxy request mapping without sockets: targets, forwarded headers, refusals, options."""

from __future__ import annotations

import pytest

import fastws
from fastws.handshake import Headers, Request
from fastws.proxy import Proxy, _send_close_code


def request(target: str, headers=(), remote=("198.51.100.9", 4000)) -> Request:
    return Request("GET", target, Headers(list(headers)), remote_address=remote)


@pytest.mark.parametrize("backend, target, strip, expected", [
    ("ws://b:1", "/chat?x=1", "", "/chat?x=1"),
    ("ws://b:1/", "/chat", "", "/chat"),
    ("ws://b:1/base", "/chat?x=1", "", "/base/chat?x=1"),
    ("ws://b:1/base/?k=v", "/c", "", "/base/c?k=v"),
    ("ws://b:1/base?k=v", "/c?x=1", "", "/base/c?k=v&x=1"),
    ("ws://b:1", "/api/chat?x=1", "/api", "/chat?x=1"),
    ("ws://b:1", "/api", "/api/", "/"),
    ("ws://b:1", "/apix/chat", "/api", "/apix/chat"),
    ("ws://b:1", "/a%20b?q=%C3%A9", "", "/a%20b?q=%C3%A9"),
    ("ws://b:1", "http://front.example/abs?x=1", "", "/abs?x=1"),
])
def test_backend_target(backend, target, strip, expected):
    assert Proxy(backend, strip_prefix=strip).backend_target(request(target)) == expected


def test_forwarded_headers_replace_what_the_client_sent():
    proxy = Proxy("ws://b:1", headers={"X-Api-Key": "k"})
    headers = proxy.backend_headers(request("/", [
        ("Host", "front:8080"), ("X-Forwarded-For", "6.6.6.6"), ("X-Real-IP", "6.6.6.6"),
        ("Forwarded", "for=6.6.6.6"), ("Cookie", "a=1"), ("Authorization", "Bearer t"),
        ("Origin", "https://app.example"), ("X-Other", "dropped"), ("Sec-WebSocket-Key", "dropped"),
    ]))
    assert headers == [
        ("X-Api-Key", "k"), ("Cookie", "a=1"), ("Authorization", "Bearer t"), ("Origin", "https://app.example"),
        ("X-Forwarded-For", "198.51.100.9"), ("X-Real-IP", "198.51.100.9"), ("X-Forwarded-Host", "front:8080"),
    ]


def test_client_ip_from_the_app_scope():
    req = request("/", [("Host", "h")])
    req.scope["client_ip"] = "203.0.113.4"  # what an App found behind a trusted proxy
    headers = dict(Proxy("ws://b:1").backend_headers(req))
    assert headers["X-Forwarded-For"] == headers["X-Real-IP"] == "203.0.113.4"


def test_pass_headers_cannot_forward_hop_by_hop_or_forwarding_headers():
    proxy = Proxy("ws://b:1", pass_headers=("x-forwarded-for", "connection", "x-trace"))
    headers = proxy.backend_headers(request("/", [("X-Forwarded-For", "6.6.6.6"), ("Connection", "Upgrade"),
                                                  ("X-Trace", "abc")]))
    assert headers == [("X-Trace", "abc"), ("X-Forwarded-For", "198.51.100.9"), ("X-Real-IP", "198.51.100.9")]


def test_plain_http_refused_synchronously():
    with pytest.raises(fastws.HandshakeError) as info:
        Proxy("ws://b:1").fastws_accept(None, request("/", [("Host", "h")]))
    assert (info.value.status, info.value.reason) == (400, "WebSocket endpoint only")


def test_bad_options():
    with pytest.raises(ValueError):
        Proxy("http://b:1")
    with pytest.raises(ValueError):
        Proxy("ws://b:1", headers={"X-Bad": "a\r\nInjected: 1"})


def test_close_codes_passed_on():
    assert _send_close_code(1000) == 1000
    assert _send_close_code(4001) == 4001
    assert _send_close_code(1005) == 1000   # no status: a normal close
    assert _send_close_code(1014) == 1014
    assert _send_close_code(1015) == 1011   # never on the wire
    assert fastws.Proxy is Proxy
