"""Run the Autobahn client cases (kosoku's fuzzing server, fastws as the client) group by group
and append one JSON line per group to a file, so ``test_autobahn.py`` can run this suite in its own
process while the server suite runs in the pytest process (the two take most of ``.ci/run``).

Usage: python tests/conformance/_client_suite.py OUT_FILE GROUP [GROUP ...]
"""

from __future__ import annotations

import asyncio
import json
import sys
import textwrap
from pathlib import Path

import kosoku

import fastws

ROOT = Path(__file__).resolve().parents[2]

CLIENT = textwrap.dedent('''
    import asyncio, sys, fastws
    base = sys.argv[1]
    cases = [int(c) for c in sys.argv[2].split(",")]
    async def echo(url):
        try:
            async with fastws.connect(url, max_size=2**26) as ws:
                async for message in ws:
                    await ws.send(message)
        except fastws.FastWSError:
            pass
    async def main():
        for i in cases:
            await asyncio.wait_for(echo(f"{base}/runCase?case={i}&agent=fastws"), 120)
        try:
            async with fastws.connect(base + "/updateReports?agent=fastws"):
                pass
        except fastws.FastWSError:
            pass
    asyncio.run(main())
''')


async def run_group(group: str) -> list[dict[str, str]]:
    """Every case of one group with fastws (in a child process) as the client."""
    async with kosoku.run_fuzzingserver(cases=[group], port=0, host="127.0.0.1") as server:
        base = f"ws://127.0.0.1:{server.port}"
        async with fastws.connect(base + "/getCaseCount") as ws:
            n = int(await ws.recv())
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-c", CLIENT, base, ",".join(str(i) for i in range(1, n + 1)), cwd=ROOT)
        try:
            try:
                results = await asyncio.wait_for(server.get_result(), 900)
            except kosoku.FailureError as failure:
                results = failure.results
        finally:
            if proc.returncode is None:
                proc.kill()
            await proc.wait()
    return [{"case_id": r.case_id, "behavior": r.behavior.value,
             "behavior_close": r.behavior_close.value, "result": str(r.result)} for r in results]


async def main(out: str, groups: list[str]) -> None:
    for group in groups:
        try:
            line = {"group": group, "results": await run_group(group)}
        except Exception as exc:  # reported by the test that reads this group's line
            line = {"group": group, "error": f"{type(exc).__name__}: {exc}"}
        with open(out, "a") as f:
            f.write(json.dumps(line) + "\n")


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2:]))
