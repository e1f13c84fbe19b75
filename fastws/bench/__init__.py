"""``fastws bench``: a load generator on the fastws engine.

Modes: ``echo`` (round trips), ``storm`` (connection rate), ``fanout`` (one
publisher, N subscribers in a room) and ``chat`` (the chat example's
protocol). :func:`run_bench` runs one configuration, in this process or spread
over ``procs`` worker processes, and returns the report (the document that
``--json`` prints, schema ``fastws-bench/1``, see benchmarks/README.md).

Every run stops by itself: ``num`` messages per connection and ``duration``
seconds bound the load, ``open_timeout`` each handshake and ``drain_timeout``
the wait for replies in flight and the closing handshakes. Ctrl-C (SIGINT)
ends the load early; the report then says ``"interrupted": true``.

Layout: this module is the package's face; it re-exports what callers import.

* :mod:`fastws.bench.load`: :class:`BenchConfig`, the tally, and the :class:`~fastws.bench.load.Load`
  base class with its three phases (connect, load, drain);
* :mod:`fastws.bench.modes`: one module per mode and the table of modes (:func:`run_load`);
* :mod:`fastws.bench.orchestrate`: :func:`run_bench`, the worker processes, the progress bar;
* :mod:`fastws.bench.report` and :mod:`fastws.bench.stats`: the report, its table, plot and
  comparison, and the latency arithmetic;
* :mod:`fastws.bench.runner`: the former home of the load generator, kept for imports.
"""

from __future__ import annotations

from fastws.bench.load import BenchConfig
from fastws.bench.load import Tally as Tally
from fastws.bench.modes import MODES
from fastws.bench.modes import run_load as run_load
from fastws.bench.modes.fanout import Coord as Coord
from fastws.bench.orchestrate import Progress, run_bench
from fastws.bench.orchestrate import _shares as _shares
from fastws.bench.orchestrate import capacity_for as capacity_for
from fastws.bench.orchestrate import die_with_parent as die_with_parent
from fastws.bench.orchestrate import print_report as print_report
from fastws.bench.orchestrate import raise_nofile as raise_nofile
from fastws.bench.report import SCHEMA, capacity, compare, format_table, load_previous, write_plot
from fastws.bench.report import build_report as build_report

__all__ = ["BenchConfig", "MODES", "SCHEMA", "run_bench", "format_table", "compare", "capacity", "write_plot",
           "load_previous", "Progress"]
