"""``{fastws-bars}``: a Markdown table of figures, rendered as the table and as a bar chart.

    ```{fastws-bars}
    :rows: 1,2,3
    :baseline: 3
    :title: server CPU per echoed message, relative to the raw TCP echo (lower is better)

    | 64 connections | 16 B | 256 B |
    |---|---|---|
    | fastws (µs) | 6.89 | 7.45 |
    ...
    ```

The content is one pipe table; it is rendered as written, then the rows named by ``:rows:``
(1-based, data rows) are drawn as grouped bars, one group per column, each value divided by the
same column's value in the ``:baseline:`` row (or drawn as is without one). The chart is an
inline SVG built here, so the figures exist once, in the page.
"""

from __future__ import annotations

import html
from typing import Any

from docutils import nodes
from docutils.parsers.rst import Directive, directives
from docutils.statemachine import StringList

COLORS = ["#2f6fde", "#e0533d", "#7a7a7a", "#2a9d5b", "#a05bd6"]


def _cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


def chart(header: list[str], rows: list[list[str]], pick: list[int], baseline: int | None, title: str) -> str:
    cols = header[1:]
    series = []
    for i in pick:
        row = rows[i - 1]
        vals = [float(v.replace(",", "")) for v in row[1:]]
        if baseline:
            base = [float(v.replace(",", "")) for v in rows[baseline - 1][1:]]
            vals = [v / b for v, b in zip(vals, base)]
        series.append((row[0], vals))
    top = max(max(v) for _, v in series) * 1.15
    w, h, left, bottom, pad = 720, 300, 50, 40, 30
    gw = (w - left - 10) / len(cols)
    bw = (gw - 16) / len(series)
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {w} {h + 24 * len(series)}" '
           f'role="img" aria-label="{html.escape(title)}" style="max-width:100%;font:12px sans-serif">',
           f'<text x="{left}" y="16" font-weight="bold">{html.escape(title)}</text>']
    y0 = h - bottom
    for k in range(5):
        v = top * k / 4
        y = y0 - (y0 - pad) * k / 4
        out.append(f'<line x1="{left}" x2="{w - 10}" y1="{y:.1f}" y2="{y:.1f}" stroke="#ccc" stroke-width="0.5"/>')
        out.append(f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end">{v:.2f}</text>')
    if baseline:
        y = y0 - (y0 - pad) / top
        out.append(f'<line x1="{left}" x2="{w - 10}" y1="{y:.1f}" y2="{y:.1f}" stroke="#555" stroke-dasharray="4 3"/>')
    for c, col in enumerate(cols):
        x = left + c * gw + 8
        for s, (_name, vals) in enumerate(series):
            bh = (y0 - pad) * vals[c] / top
            out.append(f'<rect x="{x + s * bw:.1f}" y="{y0 - bh:.1f}" width="{bw - 2:.1f}" height="{bh:.1f}" '
                       f'fill="{COLORS[s % len(COLORS)]}"><title>{html.escape(_name)}: {vals[c]:.2f}</title></rect>')
        out.append(f'<text x="{x + gw / 2 - 8:.1f}" y="{y0 + 16}" text-anchor="middle">{html.escape(col)}</text>')
    for s, (name, _vals) in enumerate(series):
        y = h + 24 * s
        out.append(f'<rect x="{left}" y="{y - 10}" width="12" height="12" fill="{COLORS[s % len(COLORS)]}"/>')
        out.append(f'<text x="{left + 18}" y="{y}">{html.escape(name)}</text>')
    out.append("</svg>")
    return "\n".join(out)


class FastwsBars(Directive):
    has_content = True
    option_spec = {"rows": directives.unchanged_required, "baseline": directives.positive_int,
                   "title": directives.unchanged}

    def run(self) -> list[Any]:
        lines = [line for line in self.content if line.strip()]
        header, rows = _cells(lines[0]), [_cells(line) for line in lines[2:]]
        pick = [int(x) for x in self.options["rows"].split(",")]
        svg = chart(header, rows, pick, self.options.get("baseline"), self.options.get("title", ""))
        node = nodes.section()
        node.document = self.state.document
        self.state.nested_parse(StringList(list(self.content), source="fastws-bars"), self.content_offset, node)
        return [*node.children, nodes.raw("", f'<figure class="fastws-bars">{svg}</figure>', format="html")]


def setup(app: Any) -> dict[str, Any]:
    app.add_directive("fastws-bars", FastwsBars)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
