"""The layer below does not know the one above: no import (at module level, inside a function or
for type checking) from a lower module to a higher one."""

from __future__ import annotations

import ast
import os

import pytest

ROOT = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "fastws")

# (module file, modules it must not import)
RULES = [
    ("metrics.py", {"fastws.server", "fastws.app", "fastws.cli"}),
    ("accept.py", {"fastws.server", "fastws.metrics", "fastws.app"}),
    ("handshake.py", {"fastws.server", "fastws.metrics", "fastws.app", "fastws.rooms"}),
    ("rooms/room.py", {"fastws.rooms.router", "fastws.server", "fastws.app"}),
    ("rooms/storage.py", {"fastws.rooms.room", "fastws.rooms.router", "fastws.server"}),
    ("rooms/names.py", {"fastws.rooms.room", "fastws.rooms.router", "fastws.rooms.storage"}),
    # the load generator: the base knows no mode, a mode no other mode, neither the orchestration
    ("bench/load.py", {"fastws.bench.modes", "fastws.bench.orchestrate", "fastws.bench.runner", "fastws.cli"}),
    ("bench/modes/echo.py", {"fastws.bench.modes", "fastws.bench.orchestrate", "fastws.bench.runner", "fastws.cli"}),
    ("bench/modes/storm.py", {"fastws.bench.modes", "fastws.bench.orchestrate", "fastws.bench.runner", "fastws.cli"}),
    ("bench/modes/fanout.py", {"fastws.bench.modes", "fastws.bench.orchestrate", "fastws.bench.runner", "fastws.cli"}),
    ("bench/modes/chat.py", {"fastws.bench.modes", "fastws.bench.orchestrate", "fastws.bench.runner", "fastws.cli"}),
    ("bench/modes/__init__.py", {"fastws.bench.orchestrate", "fastws.bench.runner", "fastws.cli"}),
    ("bench/orchestrate.py", {"fastws.bench.runner", "fastws.cli"}),
    # ASGI sits beside the App: the server knows it only as an app with fastws_http
    ("server.py", {"fastws.asgi", "fastws.app", "fastws.cli"}),
    ("asgi/__init__.py", {"fastws.server", "fastws.app", "fastws.cli"}),
    ("asgi/_http.py", {"fastws.server", "fastws.app", "fastws.cli", "fastws.asgi._mount"}),
    ("asgi/_websocket.py", {"fastws.server", "fastws.app", "fastws.cli", "fastws.asgi._http"}),
    ("asgi/_lifespan.py", {"fastws.server", "fastws.app", "fastws.cli", "fastws.asgi._http"}),
    # the command line: the shared helpers and the logging setup know no subcommand
    ("cli/_common.py", {"fastws.cli.serve", "fastws.cli.workers", "fastws.cli.connect", "fastws.cli.bench"}),
    ("cli/_logging.py", {"fastws.cli.serve", "fastws.cli.workers", "fastws.cli.connect", "fastws.cli.bench"}),
    ("cli/connect.py", {"fastws.cli.serve", "fastws.cli.workers", "fastws.cli.bench"}),
    ("cli/bench.py", {"fastws.cli.serve", "fastws.cli.workers", "fastws.cli.connect"}),
]


def imported(path: str) -> set[str]:
    with open(path) as f:
        tree = ast.parse(f.read())
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            out.add(node.module)
    return out


@pytest.mark.parametrize("module,forbidden", RULES)
def test_no_upward_imports(module, forbidden):
    names = imported(os.path.join(ROOT, module))
    bad = {n for n in names for f in forbidden if n == f or n.startswith(f + ".")}
    assert not bad, f"fastws/{module} imports {sorted(bad)}"


# The engine's extension modules, bottom to top: each may cimport or import only the ones before it
# (fastws/_protocol.pyx explains the layers). _limits sits beside them (the message gate).
ENGINE = ["_clock", "_frames", "_limits", "_stats", "_message", "_transport", "_endpoint", "_output", "_input",
          "_fanout", "_protocol"]


def engine_imports(name: str) -> set[str]:
    import re

    out = set()
    for ext in (".pyx", ".pxd"):
        path = os.path.join(ROOT, name + ext)
        if os.path.exists(path):
            with open(path) as f:
                out |= set(re.findall(r"^\s*(?:from|cimport|import)\s+fastws\.(_\w+)", f.read(), re.M))
    out.discard(name)
    return out


@pytest.mark.parametrize("name", ENGINE)
def test_engine_layers(name):
    assert os.path.exists(os.path.join(ROOT, name + ".pxd")) or os.path.exists(os.path.join(ROOT, name + ".pyx"))
    below = set(ENGINE[:ENGINE.index(name)])
    bad = engine_imports(name) - below
    assert not bad, f"fastws/{name} uses {sorted(bad)}, which are not below it"
