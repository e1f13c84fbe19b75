"""The public surface: everything in fastws.__all__ exists and star-imports cleanly."""

from __future__ import annotations

import importlib
import types

import pytest

import fastws
import fastws.exceptions
import fastws.handshake


def test_all_names_exist():
    missing = [name for name in fastws.__all__ if not hasattr(fastws, name)]
    assert missing == []


def test_all_has_no_duplicates():
    assert len(fastws.__all__) == len(set(fastws.__all__))


def test_star_import_gives_exactly_all():
    namespace: dict = {}
    exec("from fastws import *", namespace)
    exported = {name for name in namespace if name != "__builtins__"}
    assert exported == set(fastws.__all__)
    for name in fastws.__all__:
        assert namespace[name] is getattr(fastws, name)


def test_public_names_are_not_modules():
    modules = [name for name in fastws.__all__ if isinstance(getattr(fastws, name), types.ModuleType)]
    assert modules == []


def test_version():
    assert isinstance(fastws.__version__, str)
    assert fastws.__version__.count(".") >= 1


@pytest.mark.parametrize("module", [fastws.exceptions, fastws.handshake], ids=lambda m: m.__name__)
def test_submodule_all_names_exist(module):
    missing = [name for name in module.__all__ if not hasattr(module, name)]
    assert missing == []


def test_exceptions_reexported_are_the_same_objects():
    for name in fastws.exceptions.__all__:
        if name in fastws.__all__:
            assert getattr(fastws, name) is getattr(fastws.exceptions, name)


def test_exception_hierarchy():
    for name in fastws.exceptions.__all__:
        assert issubclass(getattr(fastws.exceptions, name), fastws.FastWSError)
    assert issubclass(fastws.PayloadTooBig, fastws.ProtocolError)
    assert issubclass(fastws.ConnectionClosedOK, fastws.ConnectionClosed)
    assert issubclass(fastws.ConnectionClosedError, fastws.ConnectionClosed)


def test_protocol_error_carries_code():
    exc = fastws.ProtocolError(1007, "bad utf-8")
    assert (exc.code, exc.reason, str(exc)) == (1007, "bad utf-8", "1007 bad utf-8")
    exc = fastws.HandshakeError(426, "Expected WebSocket", [("Upgrade", "websocket")])
    assert (exc.status, exc.reason, exc.headers) == (426, "Expected WebSocket", [("Upgrade", "websocket")])
    assert fastws.HandshakeError(400, "x").headers == []


def test_opcode_and_close_code_values():
    assert [int(fastws.Opcode[n]) for n in ("CONTINUATION", "TEXT", "BINARY", "CLOSE", "PING", "PONG")] == [
        0, 1, 2, 8, 9, 10]
    assert fastws.CloseCode.NORMAL_CLOSURE == 1000
    assert fastws.CloseCode.PROTOCOL_ERROR == 1002
    assert fastws.CloseCode.INVALID_DATA == 1007
    assert fastws.CloseCode.MESSAGE_TOO_BIG == 1009


def test_frames_extension_is_compiled():
    frames = importlib.import_module("fastws._frames")
    assert frames.__file__.endswith((".so", ".pyd"))
