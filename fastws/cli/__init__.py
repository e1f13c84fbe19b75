"""The ``fastws`` command: ``serve`` an app, ``connect`` to a server, ``bench`` a server.

``fastws serve module:attr`` imports ``attr`` from ``module`` with the current
directory on ``sys.path`` (as uvicorn does) and serves it. An app may carry a
``server_options`` dict (for example ``{"max_size": 32 << 20}``); a ``--config``
TOML file wins over it, and flags given on the command line win over both. ``--workers N`` runs N processes that share the
port with SO_REUSEPORT, each on its own uvloop, supervised by the parent.

The serve command is assembled by functions that other layers extend:
:func:`add_serve_arguments` (the flags), :func:`resolve_serve_config` (the
``--config`` file), :func:`serve_options` (server options) and
:func:`apply_guards` (guard settings).

Exit codes: 0 success; 1 a failed run (a connection that did not close cleanly,
a benchmark with errors); 2 a usage error (bad flag, unimportable module,
missing attribute, port in use); 130 interrupted (Ctrl-C).

Layout: this module holds :func:`build_parser` and :func:`main` and re-exports the names
of the submodules, so ``from fastws.cli import ...`` keeps working for all of them.

* :mod:`fastws.cli._common`: :class:`CLIError` and the argument helpers the subcommands share;
* :mod:`fastws.cli._logging`: ``--log-level`` / ``--log-format`` (:func:`setup_logging`);
* :mod:`fastws.cli.serve`: ``fastws serve`` in one process;
* :mod:`fastws.cli.workers`: ``--workers N`` (:class:`Supervisor`);
* :mod:`fastws.cli.connect`: ``fastws connect``;
* :mod:`fastws.cli.bench`: ``fastws bench``.

:func:`main` parses the command line (each subcommand's parser sets ``func``), sets up
logging, calls the subcommand and turns a :class:`CLIError` into ``fastws: error: ...``
on stderr and its exit code, and Ctrl-C into 130. At module level the submodules import
only the standard library, ``fastws`` itself and each other; what only one subcommand
needs (the config parser, the load generator, the bench client, TLS, multiprocessing)
is imported by the functions that use it, so ``fastws --help`` stays fast.
"""

from __future__ import annotations

import argparse
import sys

from fastws import __version__
from fastws.cli._common import CLIError
from fastws.cli._logging import LOG_LEVELS, JSONFormatter, setup_logging
from fastws.cli.bench import build_bench_parser, cmd_bench
from fastws.cli.connect import build_connect_parser, cmd_connect
from fastws.cli.serve import _serves_rooms as _serves_rooms  # tests/cluster/test_cluster_config.py
from fastws.cli.serve import (
    add_serve_arguments,
    apply_guards,
    build_serve_parser,
    cmd_serve,
    load_app,
    prepare_data_dir,
    resolve_serve_config,
    serve_one,
    serve_options,
)
from fastws.cli.workers import Supervisor

__all__ = ["main", "build_parser", "CLIError", "LOG_LEVELS", "JSONFormatter", "setup_logging", "load_app",
           "add_serve_arguments", "build_serve_parser", "resolve_serve_config", "apply_guards", "serve_options",
           "prepare_data_dir", "serve_one", "cmd_serve", "Supervisor", "cmd_connect", "build_connect_parser",
           "cmd_bench", "build_bench_parser"]


def _common_parent() -> argparse.ArgumentParser:
    """--log-level / --log-format, accepted before or after the subcommand."""
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--log-level", choices=LOG_LEVELS, default=argparse.SUPPRESS,
                   help="logging threshold (default: info)")
    p.add_argument("--log-format", choices=["plain", "json"], default=argparse.SUPPRESS,
                   help="plain text or one JSON object per line (default: plain)")
    return p


def build_parser() -> argparse.ArgumentParser:
    common = _common_parent()
    p = argparse.ArgumentParser(prog="fastws", description="fastws: a fast WebSocket platform")
    p.add_argument("--version", action="version", version=f"fastws {__version__}")
    p.add_argument("--log-level", choices=LOG_LEVELS, default="info", help="logging threshold (default: info)")
    p.add_argument("--log-format", choices=["plain", "json"], default="plain")
    sub = p.add_subparsers(dest="command", required=True)
    build_serve_parser(sub, [common])
    build_connect_parser(sub, [common])
    build_bench_parser(sub, [common])
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.log_level, args.log_format)
    try:
        return int(args.func(args) or 0)
    except CLIError as exc:
        print(f"fastws: error: {exc}", file=sys.stderr)
        return exc.code
    except KeyboardInterrupt:
        return 130

