"""The JavaScript client (fastws/static/fastws-client.js): its node tests (tests/js/*.test.mjs,
``node --test`` with Node's ``ws`` package) against a real fastws server started here, the npm
package's contents (``npm pack --dry-run``), and the server route that serves the module.

Node and npm are required (CI machines have them): a missing one fails these tests. The ``ws``
and ``typescript`` packages (tests/js/package.json's devDependencies; the published package has
none) are installed by ``npm ci`` from tests/js/package-lock.json when tests/js/node_modules
lacks one."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys

import aiohttp
import pytest

import fastws
from fastws import jsclient

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
JS = os.path.join(ROOT, "tests", "js")
STATIC = os.path.join(ROOT, "fastws", "static")


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} not found: the JavaScript client's tests need Node.js and npm (apt-get install nodejs)")
    return path


@pytest.fixture(scope="session")
def node_modules() -> str:
    """tests/js/node_modules with the locked devDependencies (``ws``, ``typescript``), installed by
    ``npm ci`` when one is missing."""
    _tool("node")
    with open(os.path.join(JS, "package.json")) as f:
        wanted = json.load(f)["devDependencies"]
    if not all(os.path.exists(os.path.join(JS, "node_modules", name, "package.json")) for name in wanted):
        done = subprocess.run([_tool("npm"), "ci", "--no-audit", "--no-fund"], cwd=JS, capture_output=True,
                              text=True, timeout=300)
        if done.returncode != 0:
            pytest.fail(f"npm ci in tests/js failed:\n{done.stdout}\n{done.stderr}")
    return os.path.join(JS, "node_modules")


async def test_node_tests_of_the_client_pass(serve, node_modules, tmp_path, monkeypatch):
    monkeypatch.setenv("FASTWS_DATA_DIR", str(tmp_path / "shared"))
    from tests.js.app import app

    server = await serve(app)
    host, port = server.address
    env = {**os.environ, "FASTWS_URL": f"http://{host}:{port}", "FASTWS_PYTHON": sys.executable,
           "FASTWS_ROOT": ROOT, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""),
           "TMPDIR": str(tmp_path)}
    tests = sorted(f for f in os.listdir(JS) if f.endswith(".test.mjs"))
    assert tests, "no node tests found in tests/js"
    proc = await asyncio.create_subprocess_exec(
        _tool("node"), "--test", "--test-reporter=spec", "--test-timeout=60000", *tests, cwd=JS, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), 240)
    except asyncio.TimeoutError:
        proc.kill()
        out, _ = await proc.communicate()
        pytest.fail("the node tests ran past 240 s:\n" + out.decode(errors="replace"))
    text = out.decode(errors="replace")
    print(text)
    assert proc.returncode == 0, "node tests failed:\n" + text
    # the runner's summary: every test ran and passed (none skipped, none todo)
    summary = dict(line.split(" ", 1)[1].rsplit(" ", 1) for line in text.splitlines()
                   if line.startswith("\u2139 ") and line.split(" ", 1)[1].rsplit(" ", 1)[-1].isdigit())
    assert int(summary["pass"]) >= 10 and summary["fail"] == "0" and summary["skipped"] == "0" \
        and summary["todo"] == "0", summary


def test_npm_package_ships_the_module_its_types_and_nothing_else():
    with open(os.path.join(STATIC, "package.json")) as f:
        pkg = json.load(f)
    assert pkg["name"] == "fastws-client"
    assert pkg["version"] == fastws.__version__
    assert pkg["exports"]["."] == {"types": "./fastws-client.d.ts", "default": "./fastws-client.js"}
    assert pkg["type"] == "module" and pkg["license"] == "MIT"
    assert "dependencies" not in pkg and "devDependencies" not in pkg
    done = subprocess.run([_tool("npm"), "pack", "--dry-run", "--json"], cwd=STATIC, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    (packed,) = json.loads(done.stdout)
    assert packed["name"] == "fastws-client" and packed["version"] == fastws.__version__
    assert sorted(f["path"] for f in packed["files"]) == ["README.md", "fastws-client.d.ts", "fastws-client.js",
                                                         "package.json"]
    # the module's own VERSION says the same
    assert f'export const VERSION = "{fastws.__version__}";' in jsclient.source().decode()


def test_types_and_module_agree_on_the_exports():
    js = jsclient.source().decode()
    dts = jsclient.source("fastws-client.d.ts").decode()
    for name in ("FastWSClient", "backoffDelay", "parseSince", "tokenExpiry", "VERSION"):
        assert f"export function {name}(" in js or f"export class {name} " in js or f"export const {name} " in js, name
        assert f"export declare function {name}(" in dts or f"export declare class {name} " in dts \
            or f"export declare const {name}:" in dts, name
    for event in ("open", "message", "reset", "resume", "reconnecting", "close", "error", "auth"):
        assert f'event("{event}"' in js, event
        assert f"  {event}: " in dts, event


async def test_the_server_serves_the_module(serve):
    async def app(ws):
        await ws.send("hi")

    server = await serve(app)
    host, port = server.address
    body = jsclient.source()
    async with aiohttp.ClientSession() as http:
        async with http.get(f"http://{host}:{port}/fastws-client.js") as r:
            assert r.status == 200
            assert r.headers["Content-Type"] == "text/javascript; charset=utf-8"
            assert r.headers["Cache-Control"] == "public, max-age=3600"
            assert r.headers["X-Content-Type-Options"] == "nosniff"
            assert r.headers["Access-Control-Allow-Origin"] == "*"
            assert await r.read() == body
            etag = r.headers["ETag"]
        async with http.get(f"http://{host}:{port}/fastws-client.js", headers={"If-None-Match": etag}) as r:
            assert r.status == 304 and await r.read() == b""
        async with http.get(f"http://{host}:{port}/fastws-client.js", headers={"If-None-Match": '"other"'}) as r:
            assert r.status == 200
        async with http.head(f"http://{host}:{port}/fastws-client.js") as r:
            assert r.status == 200 and r.headers["Content-Length"] == str(len(body))
        async with http.get(f"http://{host}:{port}/fastws-client.d.ts") as r:
            assert r.status == 200 and "declare class FastWSClient" in await r.text()
        async with http.post(f"http://{host}:{port}/fastws-client.js") as r:
            assert r.status == 405
    with pytest.raises(fastws.InvalidHandshake) as info:
        await fastws.connect(server.url + "/fastws-client.js")
    assert info.value.status == 400


async def test_js_client_false_leaves_the_path_to_the_app(serve):
    app = fastws.App(js_client=False)

    @app.route("/fastws-client.js")
    def mine(request):
        return "the app's own"

    server = await serve(app)
    host, port = server.address
    async with aiohttp.ClientSession() as http:
        async with http.get(f"http://{host}:{port}/fastws-client.js") as r:
            assert r.status == 200 and await r.text() == "the app's own"


def test_the_declarations_type_check_a_use(node_modules):
    """tsc --strict compiles tests/js/types-check.ts against fastws-client.d.ts (its
    ``@ts-expect-error`` lines must be errors too)."""
    done = subprocess.run([_tool("node"), os.path.join(node_modules, "typescript", "bin", "tsc"), "-p",
                           os.path.join(JS, "tsconfig.json")], cwd=JS, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_python_package_ships_the_module_and_its_types(tmp_path):
    """What setuptools puts in the wheel (build_py with the package data of pyproject.toml)."""
    done = subprocess.run([sys.executable, "setup.py", "-q", "build_py", "--build-lib", str(tmp_path)], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    for name in ("fastws-client.js", "fastws-client.d.ts", "dashboard.html"):
        with open(tmp_path / "fastws" / "static" / name, "rb") as f:
            assert f.read() == jsclient.source(name), name
