"""Coverage-guided fuzzing (atheris, libFuzzer) of the three parsers, each for a fixed time.

    .venv/bin/pip install atheris
    .venv/bin/python -m benchmarks.fuzz [--seconds 120] [--targets handshake,frames,deflate] [--jobs 1]

Not in CI's time budget (a benchmark-style job). Targets:

- ``handshake``: ``ServerHandshake.feed_data`` on the input cut in two, then ``validate_upgrade``;
  allowed outcome: a Request (with a normalised path) or ``HandshakeError`` with a 4xx status and
  a one-line reason.
- ``frames``: a server ``FrameParser`` (max_size 4 KiB) fed the input as frames after a handshake,
  in two pieces; allowed: events, or ``ProtocolError`` with code 1002, 1007 or 1009.
- ``deflate``: the same with permessage-deflate negotiated (compressed messages, RSV1), max_size
  64 KiB: a small input inflating past it must be 1009, never an allocation past the limit
  (libFuzzer's ``-rss_limit_mb`` makes one a crash).

Anything else (another exception, a crash, a hang past ``-timeout``, RSS over ``-rss_limit_mb``) is
a finding: libFuzzer writes the input to ``benchmarks/fuzz-findings/<target>/``; copy it to
``tests/unit/fuzz_corpus/<target>/`` once fixed, where ``tests/unit/test_handshake_fuzz.py`` and
``tests/unit/test_frames.py`` replay it. A merged, minimised corpus of what the run covered goes to
``--corpus-out`` if given. Atheris instruments the Python modules it imports (the handshake); with
clang installed (Debian's ``clang``), the C frame engine is rebuilt in a temporary copy of the
package with ``-fsanitize=fuzzer-no-link`` and libFuzzer preloaded, so its branches guide the
mutations too (``--no-native`` skips that).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

STATUSES = {400, 405, 413, 414, 426, 431}


def target_handshake(data: bytes) -> None:
    from fastws.exceptions import HandshakeError
    from fastws.handshake import ServerHandshake, validate_upgrade

    cut = data[0] if data else 0
    body = data[1:]
    hs = ServerHandshake(max_header_size=4096, max_body_size=1024)
    try:
        req = hs.feed_data(body[:cut])
        if req is None:
            req = hs.feed_data(body[cut:])
        if req is not None:
            assert req.path.startswith("/") and "//" not in req.path and "\x00" not in req.path, req.path
            if req.is_websocket:
                validate_upgrade(req)
    except HandshakeError as exc:
        if exc.status not in STATUSES or "\n" in exc.reason or not exc.reason:
            raise AssertionError(f"bad refusal {exc.status} {exc.reason!r}") from None


def _frames(data: bytes, deflate: bool) -> None:
    from fastws._frames import Deflate, FrameParser
    from fastws.exceptions import ProtocolError

    cut = data[0] if data else 0
    body = data[1:]
    parser = FrameParser(is_client=False, max_size=(64 << 10) if deflate else 4096,
                         deflate=Deflate(is_client=False) if deflate else None)
    try:
        parser.feed_data(body[:cut])
        parser.feed_data(body[cut:])
    except ProtocolError as exc:
        if exc.code not in (1002, 1007, 1009):
            raise AssertionError(f"close code {exc.code}") from None


def target_frames(data: bytes) -> None:
    _frames(data, False)


def target_deflate(data: bytes) -> None:
    _frames(data, True)


TARGETS = {"handshake": target_handshake, "frames": target_frames, "deflate": target_deflate}


def seeds(name: str) -> list[bytes]:
    """A few valid inputs to start from."""
    import zlib

    if name == "handshake":
        return [b"\x20" + b"GET /chat HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
                b"\x10POST /h HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"]

    def frame(op: int, payload: bytes, rsv1: bool = False, fin: bool = True) -> bytes:
        head = bytes([(0x80 if fin else 0) | (0x40 if rsv1 else 0) | op])
        n = len(payload)
        head += bytes([0x80 | n]) if n < 126 else bytes([0x80 | 126]) + n.to_bytes(2, "big")
        return head + b"\x00\x00\x00\x00" + payload

    if name == "frames":
        return [b"\x03" + frame(1, b"hello") + frame(9, b"p") + frame(8, b"\x03\xe8"),
                b"\x05" + frame(2, b"ab", fin=False) + frame(0, b"cd")]
    c = zlib.compressobj(6, zlib.DEFLATED, -15)
    z = c.compress(b"hello hello hello") + c.flush(zlib.Z_SYNC_FLUSH)
    return [b"\x04" + frame(1, z[:-4], rsv1=True), b"\x02" + frame(2, z[:-4], rsv1=True) + frame(1, b"plain")]


def native_tree(tmp: str) -> tuple[str, str] | None:
    """A copy of the package whose frame engine (``_frames.c``, which Cython generated) is built
    by clang with ``-fsanitize=fuzzer-no-link``, and a shared libFuzzer (from clang's
    ``libclang_rt.fuzzer_no_main``) to LD_PRELOAD, so libFuzzer sees the C engine's coverage.
    None when clang or the runtime is missing (the C engine is then fuzzed without guidance)."""
    import shutil
    import sysconfig

    clang = shutil.which("clang")
    src = os.path.join(ROOT, "fastws", "_frames.c")
    if not clang or not os.path.exists(src):
        return None
    res = subprocess.run([clang, "-print-resource-dir"], capture_output=True, text=True).stdout.strip()
    rt = os.path.join(res, "lib", "linux", "libclang_rt.fuzzer_no_main-x86_64.a")
    if not os.path.exists(rt):
        return None
    tree = os.path.join(tmp, "tree")
    shutil.copytree(os.path.join(ROOT, "fastws"), os.path.join(tree, "fastws"),
                    ignore=shutil.ignore_patterns("*.c", "*.html", "__pycache__"))
    so = next(f for f in os.listdir(os.path.join(ROOT, "fastws")) if f.startswith("_frames.") and f.endswith(".so"))
    subprocess.run([clang, "-shared", "-fPIC", "-O1", "-fsanitize=fuzzer-no-link",
                    "-I" + sysconfig.get_paths()["include"], "-I" + os.path.join(ROOT, "fastws"), src,
                    "-o", os.path.join(tree, "fastws", so), "-lz"], check=True)
    lib = os.path.join(tmp, "libfuzzer.so")
    subprocess.run([clang + "++" if os.path.exists(clang + "++") else "clang++", "-shared", "-fPIC", "-o", lib,
                    "-Wl,--whole-archive", rt, "-Wl,--no-whole-archive"], check=True)
    return tree, lib


def child(name: str, seconds: int, corpus: str, findings: str) -> None:
    tree = os.environ.get("FASTWS_FUZZ_TREE")
    if tree:
        sys.path.insert(0, tree)   # the instrumented engine first
    import atheris

    with atheris.instrument_imports():
        import fastws.handshake  # noqa: F401

    fn = TARGETS[name]

    def one(data: bytes) -> None:
        fn(data)

    argv = [sys.argv[0], corpus, f"-max_total_time={seconds}", "-timeout=5", "-rss_limit_mb=1024",
            f"-artifact_prefix={findings}/", "-print_final_stats=1"]
    atheris.Setup(argv, one)
    atheris.Fuzz()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=int, default=120, help="per target")
    p.add_argument("--targets", default=",".join(TARGETS))
    p.add_argument("--corpus-out", default="", help="write the merged corpus of each target under this directory")
    p.add_argument("--no-native", action="store_true", help="do not build the instrumented C engine")
    p.add_argument("--child", default="", help=argparse.SUPPRESS)
    p.add_argument("--corpus", default="", help=argparse.SUPPRESS)
    p.add_argument("--findings", default="", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.child:
        child(a.child, a.seconds, a.corpus, a.findings)
        return
    summary = []
    build = tempfile.mkdtemp(prefix="fuzz-build-")
    native = None if a.no_native else native_tree(build)
    env = dict(os.environ)
    if native is not None:
        env["FASTWS_FUZZ_TREE"], env["LD_PRELOAD"] = native
    print(f"C engine: {'instrumented (clang -fsanitize=fuzzer-no-link)' if native else 'not instrumented'}",
          file=sys.stderr)
    for name in a.targets.split(","):
        corpus = tempfile.mkdtemp(prefix=f"fuzz-{name}-")
        for i, s in enumerate(seeds(name)):
            with open(os.path.join(corpus, f"seed{i}"), "wb") as f:
                f.write(s)
        keep = os.path.join(ROOT, "tests", "unit", "fuzz_corpus", name)
        if os.path.isdir(keep):
            for fn in os.listdir(keep):
                with open(os.path.join(keep, fn), "rb") as src, open(os.path.join(corpus, "kept-" + fn), "wb") as dst:
                    dst.write(src.read())
        findings = os.path.join(ROOT, "benchmarks", "fuzz-findings", name)
        os.makedirs(findings, exist_ok=True)
        t0 = time.monotonic()
        proc = subprocess.run([sys.executable, "-m", "benchmarks.fuzz", "--child", name, "--seconds", str(a.seconds),
                               "--corpus", corpus, "--findings", findings], cwd=ROOT, capture_output=True, text=True,
                              timeout=a.seconds + 120, env=env)
        wall = time.monotonic() - t0
        stats = [ln for ln in proc.stderr.splitlines() if ln.startswith("stat::") or "DONE" in ln]
        found = sorted(os.listdir(findings))
        execs = next((ln.split(":")[-1].strip() for ln in stats if "number_of_executed_units" in ln), "?")
        cov = [ln for ln in proc.stderr.splitlines() if " cov: " in ln]
        summary.append((name, wall, execs, len(os.listdir(corpus)), found, cov[-1].strip() if cov else "",
                        proc.returncode))
        if a.corpus_out:
            out = os.path.join(a.corpus_out, name)
            os.makedirs(out, exist_ok=True)
            for fn in os.listdir(corpus):
                with open(os.path.join(corpus, fn), "rb") as src, open(os.path.join(out, fn), "wb") as dst:
                    dst.write(src.read())
        if proc.returncode != 0 and not found:
            print(proc.stderr[-3000:], file=sys.stderr)
    print("| target | seconds | inputs run | corpus | findings | last status line | exit |")
    print("|---|---|---|---|---|---|---|")
    for name, wall, execs, ncorp, found, cov, rc in summary:
        print(f"| {name} | {wall:.0f} | {execs} | {ncorp} | {len(found)} {found[:3]} | `{cov[:90]}` | {rc} |")


if __name__ == "__main__":
    main()
