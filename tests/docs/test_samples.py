"""Every code sample in docs/ and README.md is executed or checked here.

A fenced block is a sample unless its info string is a MyST directive (``{toctree}``,
``{eval-rst}``, ...). What happens to it depends on its language and on an optional mark, an
HTML comment on the line just before the fence (invisible on GitHub and in the built site)::

    <!-- sample: server send=hello expect=hello path=/ -->

The mark is read with shlex, as words and ``key=value`` pairs:

``skip="reason"``   not run; the reason is required (output shown, a fragment, a host-only command).
``file=NAME``       the block is written to NAME in the page's temporary directory (Python: it
                    must also compile); later blocks of the same page can import or serve it.
``server``          the block starts a server (a Python script, or one shell command): the test
                    starts it in a subprocess, waits for its port, probes it and stops it.
``run``             a shell block that runs for real in bash (``set -eo pipefail``; ``fastws`` and
                    ``python`` are this interpreter), bounded in time.
``needs=MOD:APP``   start ``fastws serve MOD:APP`` on the sample port before running the block.
``redis``           the block names ``redis://127.0.0.1:6379/0``: that URL is replaced by a
                    real Redis (``FASTWS_TEST_REDIS_URL``, or a private redis-server).
``env="K=V ..."``   environment for the server or the block.
Probe keys (with ``server`` or ``needs``): ``path=/p``, ``send=TEXT``, ``expect=TEXT`` (a received
message must contain it), ``http=/p`` (GET; the body must contain ``expect``),
``origin=URL`` (send this Origin), ``token-secret=S`` (send ``Authorization: Bearer <a fresh HS256 JWT signed with S>``),
``ready=TEXT`` (wait until the server printed this too, e.g. ``with 2 workers``: a ``--workers``
parent stopped while a worker is still starting waits out its shutdown timeout), ``tls`` (probe
with wss://, the certificate not verified).
A server must stop within 15 s of SIGTERM and log no traceback.
``FASTWS_DOCS_TIMING=1 pytest -s tests/docs`` prints how long each block took.
A ``run`` or plain Python block may also have ``expect=TEXT`` (its output must contain it).

Port 9001 in a sample (code, command or file) is the sample port: the test replaces it by one free
port on 127.0.0.1 per page.

Without a mark: ``python`` blocks run as scripts (at most 30 s, exit code 0); shell blocks
(``console``, ``shell``, ``sh``, ``bash``) may hold only ``fastws`` commands, each parsed by the
real parser (``fastws.cli.build_parser``), so every flag and choice in them exists; ``toml``
blocks go through ``fastws.config.parse_config`` (the ``--config`` loader); ``json`` is parsed;
``javascript`` blocks are ES modules: ``node --check`` parses them, and with ``run`` node runs
them (``fastws-client`` and ``ws`` importable: the package of fastws/static and the ``ws`` of
tests/js, installed by ``npm ci`` when missing; ``needs=`` gives them a server);
``nginx`` is checked for balanced blocks and terminated directives, and its ``proxy_pass`` must
name 127.0.0.1; ``ini`` (systemd units) is parsed and the ``fastws`` command in ``ExecStart`` is
parsed as above; ``dockerfile`` instructions must be real ones and the ``fastws`` command in
``CMD`` is parsed as above. A block with any other language and no mark fails the test.
"""

from __future__ import annotations

import configparser
import contextlib
import json
import os
import pathlib
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
DOCS = sorted(p for p in (ROOT / "docs").rglob("*.md") if "_build" not in p.parts)


def included(page: pathlib.Path) -> list[pathlib.Path]:
    """Markdown files a docs page pulls in with MyST's ``{include}`` directive."""
    return [(page.parent / m).resolve() for m in re.findall(r"^```\{include\}\s+(\S+\.md)\s*$", page.read_text(), re.M)]


PAGES = DOCS + sorted({inc for page in DOCS for inc in included(page)}) + [ROOT / "README.md"]
SHELL = {"console", "shell", "sh", "bash"}
JS = {"javascript", "js"}
LANGS = SHELL | JS | {"python", "toml", "json", "nginx", "ini", "dockerfile"}
SAMPLE_PORT = "9001"
SAMPLE_REDIS = "redis://127.0.0.1:6379/0"
BOUND = 30.0  # seconds: any one command or script
MARK = re.compile(r"^\s*<!--\s*sample:(.*?)-->\s*$")
FENCE = re.compile(r"^(\s*)(`{3,}|~{3,})\s*([^\s`]*)(.*)$")


@dataclass
class Block:
    page: pathlib.Path
    line: int
    lang: str
    code: str
    mark: dict[str, str] = field(default_factory=dict)
    words: set[str] = field(default_factory=set)

    def where(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"


def parse_mark(text: str) -> tuple[dict[str, str], set[str]]:
    mark: dict[str, str] = {}
    words: set[str] = set()
    for token in shlex.split(text):
        if "=" in token:
            k, v = token.split("=", 1)
            mark[k] = v
        else:
            words.add(token)
    return mark, words


def blocks_of(page: pathlib.Path) -> list[Block]:
    lines = page.read_text(encoding="utf-8").splitlines()
    out: list[Block] = []
    i = 0
    prev = ""
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            if lines[i].strip():
                prev = lines[i].strip()
            i += 1
            continue
        indent, fence, lang = len(m.group(1)), m.group(2), m.group(3).lower()
        start = i
        i += 1
        body: list[str] = []
        while i < len(lines) and not lines[i].lstrip().startswith(fence):
            line = lines[i]
            body.append(line[indent:] if not indent or line[:indent].isspace() else line.lstrip())
            i += 1
        i += 1
        mm = MARK.match(prev)
        prev = ""
        if lang.startswith("{"):  # a MyST directive, not a sample
            continue
        mark, words = parse_mark(mm.group(1)) if mm else ({}, set())
        out.append(Block(page, start + 1, lang, "\n".join(body) + "\n", mark, words))
    return out


ALL = [b for p in PAGES for b in blocks_of(p)]


def test_there_are_samples() -> None:
    assert len(ALL) > 30
    assert any(b.page.name == "README.md" for b in ALL)


def indented_code(page: pathlib.Path) -> list[int]:
    """Lines that open an indented (unfenced) code block: a sample the test could not see."""
    found = []
    fence = None
    prev = ""
    for n, line in enumerate(page.read_text(encoding="utf-8").splitlines(), 1):
        m = FENCE.match(line)
        if m and (fence is None or line.lstrip().startswith(fence)):
            fence = m.group(2) if fence is None else None
            prev = line
            continue
        if fence is None and line.startswith("    ") and line.strip() and not prev.strip():
            found.append(n)
        prev = line
    return found


@pytest.mark.parametrize("page", PAGES, ids=[str(p.relative_to(ROOT)) for p in PAGES])
def test_no_indented_code_blocks(page: pathlib.Path) -> None:
    """Samples are fenced (so they are run or marked); README's two first command lines excepted."""
    lines = indented_code(page)
    if page.name == "README.md" and page.parent == ROOT:
        lines = [n for n in lines if n != 3]  # the title's two commands, checked by the test below
    assert not lines, f"{page.relative_to(ROOT)}: indented code at lines {lines}: fence it (```lang) and mark it"


@pytest.mark.parametrize("block", ALL, ids=[b.where() for b in ALL])
def test_every_block_is_runnable_or_marked(block: Block) -> None:
    if "skip" in block.mark:
        assert block.mark["skip"].strip(), f"{block.where()}: skip needs a reason"
        return
    assert block.lang in LANGS, (
        f"{block.where()}: a ```{block.lang or '(no language)'} block is neither runnable nor marked "
        f"(add <!-- sample: skip=\"reason\" --> or use one of {sorted(LANGS)})")


# ------------------------------------------------------------------ helpers


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def base_env(tmp: pathlib.Path, extra: str = "") -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(tmp), str(ROOT)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    env["PYTHONUNBUFFERED"] = "1"
    env.setdefault("FASTWS_DATA_DIR", str(tmp / "data"))
    for pair in shlex.split(extra):
        k, v = pair.split("=", 1)
        env[k] = v
    return env


class Proc:
    """A subprocess whose output (stdout and stderr) is collected by a thread as it comes."""

    def __init__(self, argv: list[str], cwd: pathlib.Path, env: dict[str, str]) -> None:
        self.popen = subprocess.Popen(argv, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                      stdin=subprocess.DEVNULL, text=True, start_new_session=True)
        self.lines: list[str] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.popen.stdout is not None
        for line in self.popen.stdout:
            self.lines.append(line)

    def output(self) -> str:
        return "".join(self.lines)


def wait_port(port: int, proc: Proc, what: str, ready: str | None = None, timeout: float = 20.0) -> None:
    """Until something listens on ``port`` (and, with ``ready``, the output holds that text)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.popen.poll() is not None:
            proc.reader.join(5)
            pytest.fail(f"{what}: exited with {proc.popen.returncode} before listening on {port}:\n{proc.output()}")
        if ready is None or ready in proc.output():
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        time.sleep(0.05)
    pytest.fail(f"{what}: not listening on 127.0.0.1:{port} (or no {ready!r}) after {timeout} s:\n{proc.output()}")


def stop(proc: Proc) -> str:
    """SIGTERM (graceful; a --workers parent stops its workers), SIGKILL of the group after 15 s."""
    if proc.popen.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.popen.pid, signal.SIGTERM)
        try:
            proc.popen.wait(15)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.popen.pid, signal.SIGKILL)
            proc.popen.wait(5)
            proc.lines.append("\n[the test: no exit 15 s after SIGTERM, killed]\n")
    proc.reader.join(5)
    return proc.output()


def fastws_argv(words: list[str]) -> list[str]:
    """``fastws ...`` (or a path ending in /fastws) as ``sys.executable -m fastws ...``."""
    assert words and (words[0] == "fastws" or words[0].endswith("/fastws")), words
    return [sys.executable, "-m", "fastws", *words[1:]]


def check_cli(words: list[str], where: str) -> None:
    """Parse a ``fastws`` command with the real parser: every flag and choice must exist."""
    from fastws.cli import build_parser

    argv = words[1:]
    if "--help" in argv or "-h" in argv or argv == ["--version"]:
        return
    try:
        build_parser().parse_args(argv)
    except SystemExit as exc:
        pytest.fail(f"{where}: `{shlex.join(words)}` is refused by fastws' parser (exit {exc.code})")


def commands(code: str) -> list[str]:
    """Shell lines with ``$ `` prompts and comments dropped and ``\\`` continuations joined."""
    out: list[str] = []
    cur = ""
    for raw in code.splitlines():
        line = raw.strip()
        if line.startswith("$ "):
            line = line[2:]
        if not cur and (not line or line.startswith("#")):
            continue
        if line.endswith("\\"):
            cur += line[:-1] + " "
            continue
        cur += line
        out.append(cur.strip())
        cur = ""
    if cur.strip():
        out.append(cur.strip())
    return out


def split_env(words: list[str]) -> tuple[dict[str, str], list[str]]:
    env: dict[str, str] = {}
    while words and re.match(r"^[A-Z_][A-Z0-9_]*=", words[0]):
        k, v = words.pop(0).split("=", 1)
        env[k] = v
    return env, words


def mint(secret: str) -> str:
    import jwt

    return jwt.encode({"sub": "alice", "exp": int(time.time()) + 300}, secret, algorithm="HS256")


def probe(block: Block, port: int) -> None:
    mark = block.mark
    expect = mark.get("expect")
    if "http" in mark:
        import urllib.request

        with urllib.request.urlopen(f"http://127.0.0.1:{port}{mark['http']}", timeout=10) as r:
            body = r.read().decode()
        assert expect is None or expect in body, f"{block.where()}: GET {mark['http']} gave {body!r}"
        return
    from websockets.sync.client import connect

    headers = {}
    if "token-secret" in mark:
        headers["Authorization"] = f"Bearer {mint(mark['token-secret'])}"
    scheme, tls = "ws", None
    if "tls" in block.words:  # a self-signed certificate: encrypted, not verified
        import ssl

        scheme, tls = "wss", ssl.create_default_context()
        tls.check_hostname = False
        tls.verify_mode = ssl.CERT_NONE
    with connect(f"{scheme}://127.0.0.1:{port}{mark.get('path', '/')}", additional_headers=headers,
                 origin=mark.get("origin"), open_timeout=10, close_timeout=5, ssl=tls) as ws:
        if "send" in mark:
            ws.send(mark["send"])
        if expect is None:
            return
        seen = []
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            msg = ws.recv(timeout=max(0.1, deadline - time.monotonic()))
            msg = msg if isinstance(msg, str) else msg.decode(errors="replace")
            seen.append(msg)
            if expect in msg:
                return
        pytest.fail(f"{block.where()}: no message containing {expect!r}; got {seen!r}")


class Page:
    """One page's samples, run in order in one temporary directory."""

    def __init__(self, tmp: pathlib.Path) -> None:
        self.tmp = tmp
        self.port = free_port()  # the sample port (9001) of this page, in every block and file
        self.redis_url: str | None = None
        self.redis_proc: Proc | None = None

    def close(self) -> None:
        if self.redis_proc is not None:
            stop(self.redis_proc)

    def redis(self) -> str:
        if self.redis_url is None:
            url = os.environ.get("FASTWS_TEST_REDIS_URL")
            if not url:
                exe = shutil.which("redis-server")
                if not exe:
                    pytest.fail("the sample needs Redis: set FASTWS_TEST_REDIS_URL or install redis-server")
                port = free_port()
                self.redis_proc = Proc([exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                                        "--appendonly", "no", "--dir", str(self.tmp)], self.tmp, dict(os.environ))
                wait_port(port, self.redis_proc, "redis-server")
                url = f"redis://127.0.0.1:{port}/0"
            # a database of our own, so other users of that Redis are not touched
            self.redis_url = re.sub(r"/\d*$", "", url) + "/7"
            import redis

            redis.Redis.from_url(self.redis_url).flushdb()
        return self.redis_url

    def subst(self, block: Block, text: str, port: int) -> str:
        text = text.replace(SAMPLE_PORT, str(port))
        if "redis" in block.words:
            text = text.replace(SAMPLE_REDIS, self.redis())
        return text

    def popen(self, argv: list[str], env: dict[str, str]) -> Proc:
        return Proc(argv, self.tmp, env)

    def run(self, block: Block) -> None:
        t0 = time.monotonic()
        try:
            self._run_block(block)
        finally:
            if os.environ.get("FASTWS_DOCS_TIMING"):
                print(f"{block.where()}: {time.monotonic() - t0:.2f} s")

    def _run_block(self, block: Block) -> None:
        mark, words = block.mark, block.words
        if "skip" in mark:
            return
        port = self.port
        env = base_env(self.tmp, mark.get("env", ""))
        if "file" in mark:
            path = self.tmp / mark["file"]
            path.parent.mkdir(parents=True, exist_ok=True)
            code = self.subst(block, block.code, port)
            path.write_text(code)
            if path.suffix == ".py":
                compile(code, str(path), "exec")
            return
        needed = None
        if "needs" in mark:
            needed = self.popen([sys.executable, "-m", "fastws", "serve", mark["needs"], "--host", "127.0.0.1",
                                 "--port", str(port)], env)
            wait_port(port, needed, f"{block.where()}: fastws serve {mark['needs']}")
        try:
            self._run(block, port, env)
        finally:
            if needed is not None:
                out = stop(needed)
                if "Traceback" in out:
                    pytest.fail(f"{block.where()}: the server it needs logged a traceback:\n{out}")

    def _run(self, block: Block, port: int, env: dict[str, str]) -> None:
        mark, words, lang = block.mark, block.words, block.lang
        code = self.subst(block, block.code, port)
        if lang == "python":
            script = self.tmp / f"sample_{block.line}.py"
            script.write_text(code)
            if "server" in words:
                self.serve([sys.executable, str(script)], block, port, env)
                return
            r = subprocess.run([sys.executable, str(script)], cwd=self.tmp, env=env, capture_output=True,
                               text=True, timeout=BOUND, stdin=subprocess.DEVNULL)
            assert r.returncode == 0, f"{block.where()}: exit {r.returncode}\n{r.stdout}\n{r.stderr}"
            if "expect" in mark:
                assert mark["expect"] in r.stdout, f"{block.where()}: stdout {r.stdout!r}"
            return
        if lang in SHELL:
            cmds = commands(code)
            if "server" in words:
                assert len(cmds) == 1, f"{block.where()}: a server block holds one command"
                extra, argv = split_env(shlex.split(cmds[0]))
                env.update(extra)
                self.serve(fastws_argv(argv) if argv[0] == "fastws" else argv, block, port, env)
                return
            if "run" in words:
                # bash, with `fastws` and `python` meaning this interpreter and this checkout
                script = ("set -eo pipefail\n"
                          'fastws() { "$FASTWS_DOCS_PY" -m fastws "$@"; }\n'
                          'python() { "$FASTWS_DOCS_PY" "$@"; }\npython3() { "$FASTWS_DOCS_PY" "$@"; }\n'
                          + "\n".join(cmds) + "\n")
                r = subprocess.run(["bash", "-c", script], cwd=self.tmp, env={**env, "FASTWS_DOCS_PY": sys.executable},
                                   capture_output=True, text=True, timeout=BOUND, stdin=subprocess.DEVNULL)
                assert r.returncode == 0, f"{block.where()}: exit {r.returncode}\n{r.stdout}\n{r.stderr}"
                if "expect" in mark:
                    assert mark["expect"] in r.stdout + r.stderr, f"{block.where()}: output {r.stdout!r} {r.stderr!r}"
                return
            for cmd in cmds:
                _, argv = split_env(shlex.split(cmd))
                for i, word in enumerate(argv):  # a redirection or a pipe ends the command
                    if word in (">", ">>", "<", "|", "&&", "||", "2>", "2>&1"):
                        del argv[i:]
                        break
                assert argv[0] == "fastws", (
                    f"{block.where()}: `{cmd}` is not a fastws command: mark the block (run, server or skip)")
                check_cli(argv, block.where())
            return
        if lang in JS:
            self.run_js(block, code, env)
            return
        if lang == "toml":
            try:
                import tomllib
            except ModuleNotFoundError:  # Python 3.10
                import tomli as tomllib

            from fastws.config import parse_config

            parse_config(tomllib.loads(code), source=block.where())
            return
        if lang == "json":
            json.loads(code)
            return
        if lang == "nginx":
            check_nginx(code, block.where())
            return
        if lang == "ini":
            cp = configparser.ConfigParser(strict=False, interpolation=None)
            cp.optionxform = str  # type: ignore[assignment,method-assign]
            cp.read_string(code)
            if cp.has_option("Service", "ExecStart"):
                check_cli(shlex.split(cp.get("Service", "ExecStart")), block.where())
            return
        if lang == "dockerfile":
            check_dockerfile(code, block.where())
            return
        pytest.fail(f"{block.where()}: no way to run a ```{lang} block")

    def run_js(self, block: Block, code: str, env: dict[str, str]) -> None:
        node = shutil.which("node")
        if node is None:
            pytest.fail(f"{block.where()}: node not found (the JavaScript samples need Node.js)")
        script = self.tmp / f"sample_{block.line}.mjs"
        script.write_text(code)
        if "run" not in block.words:
            r = subprocess.run([node, "--check", str(script)], capture_output=True, text=True, timeout=BOUND)
            assert r.returncode == 0, f"{block.where()}: not a valid ES module\n{r.stderr}"
            return
        modules = self.tmp / "node_modules"
        if not modules.exists():
            ws = ROOT / "tests" / "js" / "node_modules" / "ws"
            if not (ws / "package.json").exists():
                r = subprocess.run([shutil.which("npm") or "npm", "ci", "--no-audit", "--no-fund"], cwd=ws.parent.parent,
                                   capture_output=True, text=True, timeout=300)
                assert r.returncode == 0, f"npm ci in tests/js failed:\n{r.stdout}\n{r.stderr}"
            modules.mkdir()
            (modules / "ws").symlink_to(ws)
            (modules / "fastws-client").symlink_to(ROOT / "fastws" / "static")
        r = subprocess.run([node, str(script)], cwd=self.tmp, env=env, capture_output=True, text=True, timeout=BOUND,
                           stdin=subprocess.DEVNULL)
        assert r.returncode == 0, f"{block.where()}: exit {r.returncode}\n{r.stdout}\n{r.stderr}"
        if "expect" in block.mark:
            assert block.mark["expect"] in r.stdout, f"{block.where()}: stdout {r.stdout!r}"

    def serve(self, argv: list[str], block: Block, port: int, env: dict[str, str]) -> None:
        proc = self.popen(argv, env)
        try:
            wait_port(port, proc, block.where(), block.mark.get("ready"))
            probe(block, port)
        except Exception as exc:
            out = stop(proc)
            raise AssertionError(f"{block.where()}: {exc!r}; the server's output:\n{out}") from exc
        out = stop(proc)
        assert "Traceback" not in out, f"{block.where()}: the server logged a traceback:\n{out}"
        assert "[the test: no exit" not in out, f"{block.where()}: the server did not stop on SIGTERM:\n{out}"


def check_nginx(code: str, where: str) -> None:
    text = re.sub(r"#[^\n]*", "", code)
    depth = 0
    for token in re.findall(r"[{};]|[^\s{};]+", text):
        if token == "{":
            depth += 1
        elif token == "}":
            depth -= 1
            assert depth >= 0, f"{where}: unbalanced }}"
    assert depth == 0, f"{where}: unbalanced {{"
    for stmt in re.split(r"[{};]", text):
        assert not stmt.strip() or re.match(r"^([a-z_]+|''|default)(\s|$)", stmt.strip()), f"{where}: bad directive {stmt!r}"
    for target in re.findall(r"proxy_pass\s+(\S+);", text):
        assert target.startswith("http://127.0.0.1:") or target.startswith("http://fastws"), (where, target)
    # what is between a directive's name and its ; : no stray braces left
    assert not re.search(r"[^\s{};]\s*\n\s*}", text), f"{where}: a directive without its ;"


DOCKER = {"FROM", "RUN", "CMD", "LABEL", "EXPOSE", "ENV", "ADD", "COPY", "ENTRYPOINT", "VOLUME", "USER",
          "WORKDIR", "ARG", "ONBUILD", "STOPSIGNAL", "HEALTHCHECK", "SHELL"}


def check_dockerfile(code: str, where: str) -> None:
    for cmd in commands(code):
        instr, _, rest = cmd.partition(" ")
        assert instr.upper() in DOCKER and instr == instr.upper(), f"{where}: {instr} is no Dockerfile instruction"
        if instr == "CMD":
            argv = json.loads(rest)
            assert isinstance(argv, list) and all(isinstance(a, str) for a in argv), (where, rest)
            if argv[0] == "fastws" or argv[0].endswith("/fastws"):
                check_cli(argv, where)


@pytest.mark.parametrize("page", PAGES, ids=[str(p.relative_to(ROOT)) for p in PAGES])
def test_samples_run(page: pathlib.Path, tmp_path: pathlib.Path) -> None:
    runner = Page(tmp_path)
    try:
        for block in blocks_of(page):
            runner.run(block)
    finally:
        runner.close()


def test_readme_commands_serve_the_echo_example(tmp_path: pathlib.Path) -> None:
    """The README's first command serves examples.echo:app: its fastws part, run as a server."""
    head = (ROOT / "README.md").read_text().splitlines()[2]
    cmd = head.split("&&")[-1].strip()
    argv = shlex.split(cmd)
    assert argv[0] == ".venv/bin/fastws"
    block = Block(ROOT / "README.md", 3, "console", cmd, {"send": "hello", "expect": "hello"}, {"server"})
    port = free_port()
    argv = [a.replace(SAMPLE_PORT, str(port)) for a in argv]
    Page(tmp_path).serve(fastws_argv(argv), block, port, base_env(ROOT))
