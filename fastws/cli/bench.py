"""``fastws bench``: the command-line face of the load generator in :mod:`fastws.bench`.

:func:`build_bench_parser` defines the flags; :func:`cmd_bench` turns them into a
:class:`~fastws.bench.BenchConfig`, checks it (a bad ``--cafile`` or setting is a usage
error, exit code 2, before any connection is made), runs it with
:func:`~fastws.bench.run_bench` (with a progress bar on a terminal), optionally adds the
comparison with a previous ``--json`` report, the capacity estimate and the HTML plot,
and prints the report as a table or as JSON. Exit code 0 for a clean run, 1 for a run
with errors, 130 when interrupted. The load generator itself is imported only when the
command runs.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from fastws.cli._common import CLIError, _add_tls_arguments, _headers, _positive_int, _tls


def cmd_bench(args: argparse.Namespace) -> int:
    from fastws.bench import BenchConfig, Progress, capacity_for, load_previous, run_bench, write_plot
    from fastws.bench.report import compare, format_table

    previous = None
    if args.compare:
        try:
            previous = load_previous(args.compare)
        except ValueError as exc:
            raise CLIError(str(exc)) from None
    cfg = BenchConfig(url=args.url, mode=args.mode, count=args.count, num=args.num, size=args.size,
                      rate=args.rate, duration=args.duration, compression=args.compression, text=args.text,
                      procs=args.procs, concurrency=args.concurrency, window=args.window, inflight=args.inflight,
                      room_size=args.room_size, open_timeout=args.timeout, drain_timeout=args.drain_timeout,
                      headers=_headers(args), subprotocols=args.subprotocol or [], cafile=args.cafile,
                      insecure=args.insecure)
    _tls(args)  # a bad --cafile is a usage error, before any connection
    try:
        cfg.validate()
    except ValueError as exc:
        raise CLIError(str(exc)) from None
    progress = Progress(cfg, sys.stderr) if sys.stderr.isatty() and not args.quiet else None
    report = run_bench(cfg, progress=progress, server_pid=args.server_pid)
    if previous is not None:
        report["compare"] = {"previous_file": args.compare, "metrics": compare(report, previous)}
    if args.capacity:
        capacity_for(report, target_connections=args.target_connections, target_rate=args.target_rate,
                     cores_per_machine=args.cores_per_machine, memory_per_machine_gb=args.memory_per_machine,
                     server_cores=args.server_cores)
    if args.plot:
        try:
            write_plot(report, args.plot)
        except OSError as exc:
            raise CLIError(f"cannot write {args.plot}: {exc.strerror or exc}") from None
    if args.json:
        import json

        sys.stdout.write(json.dumps(report, indent=2) + "\n")
    else:
        sys.stdout.write(format_table(report, previous) + "\n")
    sys.stdout.flush()
    if report["interrupted"]:
        return 130
    return 0 if report["ok"] else 1


def build_bench_parser(sub: Any, parents: list[argparse.ArgumentParser]) -> argparse.ArgumentParser:
    b: argparse.ArgumentParser = sub.add_parser("bench", parents=parents, help="load-test a WebSocket server",
                       description="Load-test a WebSocket server (every run is bounded by --num and --duration).")
    b.add_argument("url", help="ws://host:port/path")
    b.add_argument("--mode", "-m", choices=["echo", "storm", "fanout", "chat"], default="echo")
    b.add_argument("--count", "-c", type=_positive_int, default=10,
                   help="connections (fanout: subscribers, plus one publisher; chat: members). Default 10")
    b.add_argument("--num", "-n", type=int, default=100,
                   help="messages per connection (fanout: publishes; 0: until --duration). Default 100")
    b.add_argument("--size", "-s", type=int, default=64, help="payload bytes (default 64)")
    b.add_argument("--rate", "-r", type=float, default=0.0,
                   help="messages/s over all connections (fanout: publishes/s; storm: connections/s); 0 (default): as fast as "
                        "the server answers, one message in flight per connection")
    b.add_argument("--duration", "-d", type=float, default=10.0, help="seconds of load at most (default 10)")
    b.add_argument("--compression", action="store_true", help="offer permessage-deflate (compressible payloads)")
    b.add_argument("--text", action="store_true", help="echo: TEXT frames instead of BINARY")
    b.add_argument("--procs", "-p", type=_positive_int, default=1,
                   help="spread the connections over this many processes (one event loop each)")
    b.add_argument("--concurrency", type=_positive_int, default=100, help="handshakes in flight (default 100)")
    b.add_argument("--window", type=_positive_int, default=16,
                   help="fanout: publishes in flight ahead of the slowest subscriber (default 16)")
    b.add_argument("--room-size", type=_positive_int, default=10, help="chat: members per room (default 10)")
    b.add_argument("--inflight", type=_positive_int, default=1,
                   help="echo: messages in flight per connection (default 1: strict request/response)")
    b.add_argument("--timeout", type=float, default=10.0, help="handshake timeout per connection (s)")
    b.add_argument("--drain-timeout", type=float, default=5.0,
                   help="wait at most this long for replies in flight at the end (s)")
    b.add_argument("-H", "--header", action="append", help="extra header 'Name: value'")
    b.add_argument("--token", default=None, help="send 'Authorization: Bearer TOKEN'")
    b.add_argument("--subprotocol", action="append", help="offer this subprotocol")
    _add_tls_arguments(b)
    b.add_argument("--json", action="store_true", help="print the report as JSON (schema fastws-bench/1)")
    b.add_argument("--compare", metavar="PREVIOUS.json", default=None,
                   help="show the change against a report written by --json")
    b.add_argument("--plot", metavar="FILE.html", default=None,
                   help="write a latency histogram and throughput over time (self-contained HTML)")
    b.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    b.add_argument("--server-pid", type=int, default=0,
                   help="a local server's PID: measure its CPU and memory during the run")
    cap = b.add_argument_group("capacity")
    cap.add_argument("--capacity", action="store_true",
                     help="estimate per-core capacity and the machines a target load needs")
    cap.add_argument("--target-connections", type=int, default=0)
    cap.add_argument("--target-rate", type=float, default=0.0, help="messages/s (storm: connections/s)")
    cap.add_argument("--cores-per-machine", type=int, default=0, help="default: this machine's")
    cap.add_argument("--memory-per-machine", type=float, default=0.0, metavar="GB",
                     help="with --server-pid: size machines for memory too")
    cap.add_argument("--server-cores", type=float, default=0.0,
                     help="cores the server used in the run when not measured (default 1)")
    b.set_defaults(func=cmd_bench)
    return b
