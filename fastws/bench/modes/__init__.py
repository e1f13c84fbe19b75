"""The modes of ``fastws bench``: one module per mode, and the table that picks one.

``echo`` (:mod:`~fastws.bench.modes.echo`, round trips), ``storm``
(:mod:`~fastws.bench.modes.storm`, connection rate), ``fanout``
(:mod:`~fastws.bench.modes.fanout`, one publisher and N subscribers in a room) and
``chat`` (:mod:`~fastws.bench.modes.chat`, the chat example's protocol). Each is a
subclass of :class:`fastws.bench.load.Load`; :data:`LOADS` maps a mode's name to it
(its keys are :data:`~fastws.bench.load.MODES`, the names
:meth:`~fastws.bench.load.BenchConfig.validate` accepts), and :func:`run_load` runs one
process's share of a configuration with it.
"""

from __future__ import annotations

from collections.abc import Callable

from fastws.bench.load import MODES, BenchConfig, Load, Tally
from fastws.bench.modes.chat import ChatLoad
from fastws.bench.modes.echo import EchoLoad
from fastws.bench.modes.fanout import Coord, FanoutLoad
from fastws.bench.modes.storm import StormLoad

__all__ = ["MODES", "LOADS", "run_load", "EchoLoad", "StormLoad", "FanoutLoad", "ChatLoad", "Coord"]

LOADS: dict[str, type[Load]] = {"echo": EchoLoad, "storm": StormLoad, "fanout": FanoutLoad, "chat": ChatLoad}


async def run_load(cfg: BenchConfig, stop: Callable[[], bool] = lambda: False,
                   progress: Callable[[Tally], None] | None = None, first_index: int = 0,
                   server_pid: int = 0, coord: Coord | None = None) -> Tally:
    """Run one process's share of the load on the running loop and return its tally."""
    load: Load
    if cfg.mode == "fanout":
        load = FanoutLoad(cfg, stop, progress, server_pid, coord=coord)
    else:
        load = LOADS[cfg.mode](cfg, stop, progress, server_pid)
    if isinstance(load, ChatLoad):
        load.room_base = first_index // cfg.room_size
    return await load.run()
