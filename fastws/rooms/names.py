"""Room names: what a valid one is, and the file name it maps to. The one place that decides both.

A room name is what :class:`~fastws.RoomRouter` derives from the request (by default the
normalised path without its leading ``/``; see :func:`fastws.handshake.normalize_path`) or what
your ``room_name`` function or :meth:`~fastws.RoomRouter.forward` call gives it.

Valid: any string of 1 to :data:`MAX_ROOM_NAME` bytes in UTF-8 with no control character (C0,
DEL, C1). Slashes, dots, spaces, ``%`` and any other Unicode are fine: names are compared as
code points (no Unicode normalisation: ``"é"`` and ``"e\\u0301"`` are two rooms). A request for
an invalid name gets ``400`` with a one-line reason.

File names (:func:`room_file_stem`): every byte of the UTF-8 name outside ``[a-z0-9_.-]`` is
written ``%XX`` (upper-case hex), so the stem is plain ASCII with no separator, no ``..`` and no
upper-case letter outside an escape: distinct names give distinct files even on a
case-insensitive or Unicode-normalising file system (macOS, Windows). A leading ``.`` and the
Windows device names (``con``, ``nul``, ``com1``, ...) get their first character escaped too. A
stem over 180 characters keeps its first 100 and adds ``~`` and the SHA-256 of the whole name
(``~`` is always escaped otherwise, so a short name cannot take a long one's file).
"""

from __future__ import annotations

import hashlib

__all__ = ["MAX_ROOM_NAME", "InvalidRoomName", "check_room_name", "room_file_stem", "legacy_room_file_stem"]

#: The longest room name, in bytes of UTF-8.
MAX_ROOM_NAME = 255  # bytes of UTF-8

_SAFE = frozenset(b"abcdefghijklmnopqrstuvwxyz0123456789_.-")
_ESC = tuple(chr(b) if b in _SAFE else "%%%02X" % b for b in range(256))
_WINDOWS_DEVICES = frozenset(
    ["con", "prn", "aux", "nul", "conin$", "conout$"]
    + [f"{d}{i}" for d in ("com", "lpt") for i in "0123456789"])
_CONTROL = frozenset((*range(0x20), *range(0x7F, 0xA0)))


class InvalidRoomName(ValueError):
    """A room name :func:`check_room_name` refuses; ``reason`` is the one-line answer (400)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def check_room_name(name: object) -> str:
    """``name`` when it is a valid room name.

    Raises:
        InvalidRoomName: empty, not a string, not encodable as UTF-8 (a lone surrogate), over
            :data:`MAX_ROOM_NAME` bytes, or holding a control character.
    """
    if not isinstance(name, str):
        raise InvalidRoomName(f"Room name must be a string, not {type(name).__name__}")
    if not name:
        raise InvalidRoomName("Room name is empty")
    try:
        size = len(name.encode("utf-8"))
    except UnicodeEncodeError:
        raise InvalidRoomName("Room name is not valid Unicode") from None
    if size > MAX_ROOM_NAME:
        raise InvalidRoomName(f"Room name too long ({size} bytes, at most {MAX_ROOM_NAME})")
    if not _CONTROL.isdisjoint(map(ord, name)):
        raise InvalidRoomName("Room name holds a control character")
    return name


def room_file_stem(name: str) -> str:
    """The file name (without ``.sqlite3``) of room ``name``; see the module docstring."""
    raw = name.encode("utf-8", "surrogatepass")
    stem = "".join([_ESC[b] for b in raw]) or "%00"
    if stem[0] == ".":
        stem = "%2E" + stem[1:]
    if stem.split(".", 1)[0] in _WINDOWS_DEVICES:
        stem = "%%%02X" % ord(stem[0]) + stem[1:]
    if len(stem) > 180:
        stem = stem[:100] + "~" + hashlib.sha256(raw).hexdigest()
    return stem


def legacy_room_file_stem(name: str) -> str:
    """The file name rooms had before :func:`room_file_stem` (fastws <= wave 2): a storage found
    under it is moved to the new name when the room opens."""
    import urllib.parse

    quoted = urllib.parse.quote(name, safe="") or "%00"
    if quoted.startswith("."):
        quoted = "%2E" + quoted[1:]
    if len(quoted) > 180:
        quoted = quoted[:100] + "~" + hashlib.sha256(name.encode("utf-8", "surrogatepass")).hexdigest()
    return quoted
