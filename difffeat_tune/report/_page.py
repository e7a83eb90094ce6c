"""The report as text: one self-contained HTML page, and the Markdown note saved in the study.

The page embeds plotly.js once, inline, and loads nothing from the network (it opens offline,
from a file, and in an archive years later).
"""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import MappingProxyType

import plotly.graph_objects as go
from plotly.offline import get_plotlyjs

from difffeat_tune.report._spec import FigureSpec, Table

#: plotly's per-figure options on the page: no logo link, figures follow the window's width.
PLOT_CONFIG: Mapping[str, object] = MappingProxyType({"displaylogo": False, "responsive": True})
_STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 1.5em auto; max-width: 1400px;
       padding: 0 1em; color: #222; }
h1 { font-size: 1.5em; margin-bottom: 0.2em; } h2 { font-size: 1.2em; margin-top: 1.8em; }
p.caption { color: #444; max-width: 70em; }
table.facts, table.scores { border-collapse: collapse; font-size: 0.9em; margin: 0.6em 0; }
table.facts td, table.scores td, table.scores th { padding: 0.2em 0.8em; border-bottom: 1px solid #ddd;
       text-align: left; }
ul.skipped li { color: #7a4b00; }
nav a { margin-right: 1em; }
"""


def html_table(table: Table, css: str = "scores") -> str:
    """An HTML table of ``table`` (text escaped)."""
    head = "".join(f"<th>{html.escape(h)}</th>" for h in table.header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in table.rows)
    return f'<table class="{css}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def markdown_table(table: Table) -> str:
    """A Markdown table of ``table`` (``|`` in cells escaped)."""
    def row(cells: Sequence[str]) -> str:
        return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"

    return "\n".join([row(table.header), row(["---"] * len(table.header)), *(row(r) for r in table.rows)])


def render_page(title: str, facts: Sequence[tuple[str, str]], summary: Table | None,
                figures: Sequence[tuple[FigureSpec, go.Figure]], skipped: Mapping[str, str]) -> str:
    """The report page: facts about the study, the scores table, each figure with its caption, what was skipped."""
    parts = [f"<h1>{html.escape(title)}</h1>",
             '<table class="facts">' + "".join(f"<tr><td>{html.escape(k)}</td><td>{html.escape(v)}</td></tr>"
                                                for k, v in facts) + "</table>"]
    if figures:
        parts.append("<nav>" + "".join(f'<a href="#{spec.key}">{html.escape(spec.title)}</a>'
                                       for spec, _ in figures) + "</nav>")
    if summary is not None:
        parts.append(html_table(summary))
    for spec, fig in figures:
        div = fig.to_html(full_html=False, include_plotlyjs=False, config=dict(PLOT_CONFIG), div_id=f"fig-{spec.key}")
        parts.append(f'<section id="{spec.key}"><h2>{html.escape(spec.title)}</h2>'
                     f'<p class="caption">{html.escape(spec.caption)}</p>{div}</section>')
    if skipped:
        parts.append('<h2>Not shown</h2><ul class="skipped">'
                     + "".join(f"<li><b>{html.escape(k)}</b>: {html.escape(v)}</li>" for k, v in skipped.items())
                     + "</ul>")
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{html.escape(title)}</title><style>{_STYLE}</style>"
            f"<script type=\"text/javascript\">{get_plotlyjs()}</script></head>\n<body>\n"
            + "\n".join(parts) + "\n</body></html>\n")


def render_note(title: str, facts: Sequence[tuple[str, str]], summary: Table | None, comparison: Table | None,
                clusters: Table | None, report: Path, skipped: Mapping[str, str]) -> str:
    """The study's Markdown note: best image / text / fusion scores, the comparison, cluster scores, the report's path."""
    lines = [f"# {title}", ""]
    lines += [f"- **{k}**: {v}" for k, v in facts]
    if summary is not None:
        lines += ["", "## Best image, text and fusion (%)", "", markdown_table(summary)]
    if comparison is not None:
        lines += ["", "## Heuristic vs grid", "", markdown_table(comparison)]
    if clusters is not None:
        lines += ["", "## Cluster scores of the t-SNE", "", markdown_table(clusters)]
    lines += ["", f"Report with every figure: `{report}` (HTML; PNG, PDF and plotly JSON beside it). The figures "
                  "are also on this study's page in the dashboard (their tables are in this note)."]
    if skipped:
        lines += ["", "Not shown:"] + [f"- {k}: {v}" for k, v in skipped.items()]
    return "\n".join(lines) + "\n"
