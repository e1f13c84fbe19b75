"""Two directives that read the code, so these reference tables cannot drift from it.

``{fastws-cli}``: the reference of one ``fastws`` subcommand, read from the real parser.

    ```{fastws-cli} serve
    ```

renders the subcommand's usage line and one table per argument group (every flag, its
metavar or choices, its default and its help), from ``fastws.cli.build_parser()``, so the page
cannot drift from the code. Without an argument it renders the top-level command.

``{fastws-config-keys} server`` (or ``guards``, ``cluster``): the keys of that section of a
``fastws serve --config`` file and the values each takes, from ``fastws.config``.
"""

from __future__ import annotations

import argparse
from typing import Any

from docutils import nodes
from docutils.parsers.rst import Directive
from docutils.statemachine import StringList


def _parser(command: str | None) -> argparse.ArgumentParser:
    from fastws.cli import build_parser

    top = build_parser()
    if not command:
        return top
    for action in top._actions:
        if isinstance(action, argparse._SubParsersAction):
            if command in action.choices:
                return action.choices[command]
    raise ValueError(f"fastws has no subcommand {command!r}")


def _md(text: str) -> str:
    """Plain text made safe inside a Markdown table cell (the pages are MyST Markdown)."""
    for ch in "\\`*_[]<>|":
        text = text.replace(ch, "\\" + ch)
    return " ".join(text.split())


def _flag_cell(action: argparse.Action) -> str:
    names = ", ".join(f"`{o}`" for o in action.option_strings) or f"`{action.dest}`"
    if action.choices is not None and not isinstance(action.choices, dict):
        names += " `{" + ",".join(str(c) for c in action.choices) + "}`"
    elif action.nargs != 0 and action.option_strings:
        names += f" *{_md(str(action.metavar or action.dest.upper()))}*"
    return names


def _default_cell(action: argparse.Action) -> str:
    d = action.default
    if action.nargs == 0 or d is None or d is argparse.SUPPRESS or d == []:
        return ""
    return f"`{d}`"


def render(command: str | None) -> list[str]:
    """The reference of one subcommand as MyST Markdown: usage, description, a table per group."""
    p = _parser(command)
    usage = p.format_usage().strip()
    lines = ["```text", *usage.splitlines(), "```", ""]
    if p.description:
        lines += [_md(p.description), ""]
    for group in p._action_groups:
        actions = [a for a in group._group_actions
                   if a.help is not argparse.SUPPRESS and not isinstance(a, argparse._SubParsersAction)]
        if not actions:
            continue
        lines += [f"**{_md(group.title or 'arguments')}**", "", "| flag | default | what it does |", "|---|---|---|"]
        for a in actions:
            helptext = (a.help or "").replace("%(default)s", str(a.default)).replace("%%", "%")
            lines.append(f"| {_flag_cell(a)} | {_default_cell(a)} | {_md(helptext)} |")
        lines.append("")
    return lines


class FastwsCli(Directive):
    optional_arguments = 1
    has_content = False

    def run(self) -> list[Any]:
        command = self.arguments[0] if self.arguments else None
        node = nodes.section()
        node.document = self.state.document
        self.state.nested_parse(StringList(render(command), source="fastws.cli.build_parser"), 0, node)
        return node.children


class FastwsConfigKeys(Directive):
    """``{fastws-config-keys} server``: the keys of one ``--config`` section, from fastws.config."""

    required_arguments = 1
    has_content = False

    def run(self) -> list[Any]:
        from fastws import config

        keys = {"server": config.SERVER_KEYS, "guards": config.GUARD_KEYS,
                "cluster": config.CLUSTER_KEYS}[self.arguments[0]]
        lines = ["| key | value |", "|---|---|"]
        lines += [f"| `{key}` | {_md(what)} |" for key, (_check, what) in keys.items()]
        node = nodes.section()
        node.document = self.state.document
        self.state.nested_parse(StringList(lines, source="fastws.config"), 0, node)
        return node.children


def setup(app: Any) -> dict[str, Any]:
    app.add_directive("fastws-cli", FastwsCli)
    app.add_directive("fastws-config-keys", FastwsConfigKeys)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
