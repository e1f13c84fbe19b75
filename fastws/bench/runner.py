"""Compatibility: the load generator's former module, split into :mod:`fastws.bench.load`
(the configuration, the tally, the :class:`~fastws.bench.load.Load` base class) and
:mod:`fastws.bench.modes` (one module per mode). Its public names are importable from
here as before; new code imports them from their modules.
"""

from __future__ import annotations

from fastws.bench.load import MODES, BenchConfig
from fastws.bench.load import TICK as TICK
from fastws.bench.load import Load as Load
from fastws.bench.load import Tally as Tally
from fastws.bench.load import payload_for as payload_for
from fastws.bench.load import proc_cpu_seconds as proc_cpu_seconds
from fastws.bench.load import proc_rss_bytes as proc_rss_bytes
from fastws.bench.load import tls_context as tls_context
from fastws.bench.modes import LOADS as LOADS
from fastws.bench.modes import run_load
from fastws.bench.modes.chat import ChatLoad as ChatLoad
from fastws.bench.modes.echo import EchoLoad as EchoLoad
from fastws.bench.modes.fanout import PUBLISH, Coord
from fastws.bench.modes.fanout import FanoutLoad as FanoutLoad
from fastws.bench.modes.storm import StormLoad as StormLoad

__all__ = ["BenchConfig", "Coord", "MODES", "run_load", "PUBLISH"]
