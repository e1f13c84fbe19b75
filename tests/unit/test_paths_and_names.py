"""The one path normalisation (routing, firewall, room names) and the room-name rules and
file-name mapping (fastws.rooms.names)."""

from __future__ import annotations

import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fastws.exceptions import HandshakeError
from fastws.handshake import Headers, Request, normalize_path
from fastws.rooms.names import (
    MAX_ROOM_NAME,
    InvalidRoomName,
    check_room_name,
    legacy_room_file_stem,
    room_file_stem,
)
from fastws.rooms.storage import room_path


@pytest.mark.parametrize("raw", ["/admin", "//admin", "/%61dmin", "/admin/", "/./admin", "/x/../admin",
                                 "/%2e/admin", "///admin//", "/../admin", "/%2E%2E/admin", "/a/%2e%2e/admin",
                                 "http://example.com/admin", "/admin/.", "/x/y/../../admin"])
def test_every_spelling_of_a_path_is_the_same_path(raw):
    assert normalize_path(raw) == "/admin"


@pytest.mark.parametrize("raw,want", [("/", "/"), ("", None), ("//", "/"), ("/..", "/"), ("/a%2Fb", "/a/b"),
                                      ("/caf%C3%A9", "/café"), ("/.hidden", "/.hidden"), ("/a..b", "/a..b"),
                                      ("/a\\b", "/a\\b"), ("/%25", "/%"), ("/a b", "/a b")])
def test_normal_paths(raw, want):
    if want is None:
        with pytest.raises(HandshakeError) as info:
            normalize_path(raw)
        assert info.value.status == 400
    else:
        assert normalize_path(raw) == want


@pytest.mark.parametrize("raw,reason", [("/a%00b", "control character"), ("/a%0Ab", "control character"),
                                        ("/a\x01", "control character"), ("/%7F", "control character"),
                                        ("/%C3", "not UTF-8"), ("/%FF%FE", "not UTF-8"), ("admin", "start with"),
                                        ("*", "start with")])
def test_bad_paths_are_400_with_a_reason(raw, reason):
    with pytest.raises(HandshakeError) as info:
        normalize_path(raw)
    assert info.value.status == 400 and reason in info.value.reason and "\n" not in info.value.reason


def test_request_path_is_normalised_and_target_kept():
    r = Request("GET", "//chat/./lobby/?x=1", Headers([]))
    assert r.path == "/chat/lobby" and r.target == "//chat/./lobby/?x=1" and r.query_param("x") == "1"


@settings(max_examples=500, deadline=None)
@given(st.lists(st.sampled_from(list("/.%2eEfF0a\\") + ["%2f", "%2e", "%2F", "..", "%00"]), max_size=40).map("".join))
def test_normalised_paths_have_no_dot_segments_and_are_stable(raw):
    try:
        p = normalize_path("/" + raw)
    except HandshakeError as exc:
        assert exc.status == 400
        return
    assert p.startswith("/")
    segs = p.split("/")[1:]
    assert p == "/" or all(s not in ("", ".", "..") for s in segs)
    assert "\x00" not in p
    # normalising again changes nothing once the escapes are gone
    if "%" not in p:
        assert normalize_path(p) == p


# ------------------------------------------------------------------ room names

@pytest.mark.parametrize("name,reason", [("", "empty"), ("a\x00b", "control"), ("a\nb", "control"),
                                         ("\x85", "control"), ("x" * (MAX_ROOM_NAME + 1), "too long"),
                                         ("é" * 128, "too long"), ("\ud800", "Unicode"), (5, "string")])
def test_invalid_room_names(name, reason):
    with pytest.raises(InvalidRoomName) as info:
        check_room_name(name)
    assert reason in info.value.reason


@pytest.mark.parametrize("name", ["lobby", "a/b", "..", ".", "../../etc/passwd", "a\\b", "CON", "con", "nul.txt",
                                  "com1", "x" * MAX_ROOM_NAME, "é" * 127, "ｌｏｂｂｙ", "%2e%2e%2f", "~", " "])
def test_valid_room_names(name):
    assert check_room_name(name) == name


HOSTILE = ["..", ".", "../x", "..\\x", "%2e%2e%2f", "%2E%2E%2F", "a//b", "/", "\\", "C:\\x", "CON", "con", "Con",
           "nul", "NUL.txt", "aux.sqlite3", "com1", "lpt9", "Lobby", "lobby", "LOBBY", "é", "e\u0301", "ｌｏｂｂｙ",
           "lobby\u200b", "．．／", "~", "%7E", "%", "%25", "a~b", "x" * 255, "X" * 255, "é" * 127,
           ".hidden", "%2Ehidden", "-", "_", "a.sqlite3", "a%2Esqlite3"]


def test_hostile_names_map_to_distinct_safe_files_even_case_folded(tmp_path):
    base = str(tmp_path / "Chat")
    paths = [room_path(str(tmp_path), "Chat", n) for n in HOSTILE]
    assert len({p.lower() for p in paths}) == len(HOSTILE)  # distinct on a case-insensitive file system
    for p in paths:
        name = os.path.basename(p)
        assert os.path.dirname(p) == base and os.path.realpath(p).startswith(base + os.sep)
        assert len(name.encode()) < 255 and name.isascii() and not name.startswith(".")
        assert "/" not in name and "\\" not in name and ":" not in name
        assert name.split(".", 1)[0].lower() not in ("con", "prn", "aux", "nul", "com1", "lpt9")


def test_a_short_name_cannot_take_a_long_names_file():
    long = "x" * 200
    stem = room_file_stem(long)
    assert "~" in stem
    forged = stem  # a name spelled like the long name's stem
    assert room_file_stem(forged) != stem


@settings(max_examples=1000, deadline=None)
@given(st.text(min_size=1, max_size=60), st.text(min_size=1, max_size=60))
def test_file_stems_are_injective(a, b):
    for n in (a, b):
        try:
            check_room_name(n)
        except InvalidRoomName:
            return
    if a != b:
        assert room_file_stem(a).lower() != room_file_stem(b).lower()


def test_legacy_stem_is_the_old_quoting():
    assert legacy_room_file_stem("a/b") == "a%2Fb" and legacy_room_file_stem("Lobby") == "Lobby"
    assert room_file_stem("Lobby") == "%4Cobby"
