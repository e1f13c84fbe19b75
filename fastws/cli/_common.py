"""What the ``fastws`` subcommands share: the user-facing error and a few argument helpers.

:class:`CLIError` is how every part of the command reports a mistake the user can fix (a
bad flag, an unimportable module, a port in use): it carries a one-line message and an
exit code, and :func:`fastws.cli.main` turns it into ``fastws: error: ...`` on stderr and
that exit code. Nothing below ``main`` prints errors itself.

The client-side helpers (:func:`_headers`, :func:`_tls`, :func:`_add_tls_arguments`) are
used by both ``connect`` and ``bench``, which open client connections with the same
``-H``/``--token`` headers and the same ``--cafile``/``--insecure`` TLS settings.
"""

from __future__ import annotations

import argparse
from typing import Any


class CLIError(Exception):
    """A clear, one-line error for the user (exit code 2 unless given)."""

    def __init__(self, message: str, code: int = 2) -> None:
        super().__init__(message)
        self.code = code


def _positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return v


def _headers(args: argparse.Namespace) -> list[tuple[str, str]]:
    headers = []
    for h in args.header or []:
        name, sep, value = h.partition(":")
        if not sep or not name.strip():
            raise CLIError(f"header must look like 'Name: value', got {h!r}")
        headers.append((name.strip(), value.strip()))
    if getattr(args, "token", None):
        headers.append(("Authorization", f"Bearer {args.token}"))
    return headers


def _tls(args: argparse.Namespace) -> Any:
    from fastws.bench.load import tls_context

    try:
        return tls_context(args.cafile, args.insecure)
    except OSError as exc:
        raise CLIError(f"--cafile {args.cafile!r}: {exc.strerror or exc}") from None


def _add_tls_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--cafile", default=None, help="wss://: trust the CA certificates in this PEM file")
    p.add_argument("--insecure", "-k", action="store_true", help="wss://: do not verify the server's certificate")
