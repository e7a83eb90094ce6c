"""Interactive figures: a :class:`FigureSpec` drawn with plotly (HTML page and optuna-dashboard).

Data go into the figure as plain lists, not numpy arrays: plotly would encode arrays as typed
binary blobs, which plotly.js builds older than optuna-dashboard's may not read.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

import plotly.graph_objects as go
from plotly.colors import qualitative
from plotly.subplots import make_subplots

from difffeat_tune.report._spec import Bars, Curves, FigureSpec, Heatmap, Panel, Scatter, Table, series_names

TEMPLATE = "plotly_white"
#: Heights in pixels: the plots, and per heatmap row beyond a dozen (tall grids stay legible); the
#: band under the plots for their axis labels (AXIS_PX of it) and the legend; a table row; margins.
PLOTS_PX, HEIGHT_PER_ROW = 380, 20
LEGEND_PX, AXIS_PX = 130, 75
TABLE_ROW_PX = 28
MARGIN_TOP, MARGIN_BOTTOM = 90, 20
#: Height of the plots in optuna-dashboard's 450-pixel card, once titles and legend are placed.
COMPACT_PLOTS_PX, COMPACT_TOP_PX = 260, 60
#: Heatmaps with more cells than this show values on hover only (labels would overlap).
MAX_CELL_LABELS = 200
PALETTE = qualitative.D3
#: Outline of a marked cell per mark kind: (colour, width, dash).
MARK_STYLE: Mapping[str, tuple[str, float, str]] = MappingProxyType({
    "best": ("black", 3, "solid"),
    "chosen": ("red", 4, "solid"),
    "evaluated": ("fuchsia", 2, "solid"),
    "grid_best": ("black", 3, "dash"),
    "trained": ("darkorange", 3, "solid"),
})


def to_plotly(spec: FigureSpec, *, compact: bool = False) -> go.Figure:
    """The plotly figure of ``spec``: its plots side by side, the legend below them, the table below that.

    Args:
        spec: the figure.
        compact: for optuna-dashboard, which shows each figure in a fixed 450-pixel-high card:
            no table (the study note holds them), no fixed height (plotly fills the card).
    """
    plots = [p for p in spec.panels if not isinstance(p, Table)]
    tables = [] if compact else [p for p in spec.panels if isinstance(p, Table)]
    cols = max(1, len(plots))
    rows = max((len(p.y) for p in plots if isinstance(p, Heatmap)), default=0)
    plots_px = PLOTS_PX + HEIGHT_PER_ROW * max(0, rows - 12)
    table_px = sum(TABLE_ROW_PX * (len(t.rows) + 1) + TABLE_ROW_PX for t in tables)
    # The subplots' area holds the plots, then (with a table) the legend band and the table; without
    # a table the legend band is the bottom margin. Legend positions are in units of that area.
    area_px = plots_px + (LEGEND_PX + table_px if tables else 0)
    legend_y = (table_px + LEGEND_PX - AXIS_PX) / area_px if tables else -AXIS_PX / plots_px
    specs = [[{"type": "xy"} for _ in range(cols)]]
    if tables:
        specs.append([{"type": "table", "colspan": cols}] + [None] * (cols - 1))  # type: ignore[list-item]
    fig = make_subplots(
        rows=len(specs), cols=cols, specs=specs, column_widths=[_width(p) for p in plots] or None,
        row_heights=[plots_px, table_px] if tables else None,
        vertical_spacing=LEGEND_PX / area_px if tables else None,
        horizontal_spacing=0.13 if any(isinstance(p, Heatmap) for p in plots) else 0.07,
        subplot_titles=[_title(p.title) for p in plots] + [_title(t.title) for t in tables],
    )
    if compact:
        plots_px = COMPACT_PLOTS_PX
        legend_y = -AXIS_PX / plots_px
    legend_seen: set[str] = set()
    groups = _group_colours(spec.panels)
    for col, panel in enumerate(plots, start=1):
        for trace in _traces(panel, fig, col, legend_seen, groups):
            fig.add_trace(trace, row=1, col=col)
        if isinstance(panel, Heatmap):
            _outline_marks(fig, panel, col, legend_seen)
        _axes(fig, panel, col)
    for table in tables:
        fig.add_trace(_table(table), row=2, col=1)
    fig.update_layout(template=TEMPLATE, title={"text": spec.title}, barmode="group",
                      legend={"orientation": "h", "y": legend_y, "yanchor": "top", "x": 0},
                      margin={"t": MARGIN_TOP, "b": MARGIN_BOTTOM + (0 if tables else LEGEND_PX)})
    if compact:
        title_lines = max((p.title.count("\n") for p in plots), default=0)  # two-line panel titles need room
        fig.update_layout(margin={"t": COMPACT_TOP_PX + 16 * title_lines, "b": LEGEND_PX, "l": 40, "r": 20},
                          legend={"font": {"size": 9}})
    else:
        fig.update_layout(height=MARGIN_TOP + area_px + MARGIN_BOTTOM + (0 if tables else LEGEND_PX))
    return fig


def _title(text: str) -> str:
    return text.replace("\n", "<br>")


def _width(panel: Panel) -> float:
    if isinstance(panel, Heatmap):
        return max(1.0, 0.08 * len(panel.x))
    return 1.0


def _table(table: Table) -> go.Table:
    columns = [list(column) for column in zip(*table.rows)] if table.rows else [[] for _ in table.header]
    widths = [max([len(h)] + [len(c) for c in column]) for h, column in zip(table.header, columns)]
    return go.Table(header={"values": list(table.header), "align": "left"}, columnwidth=widths,
                    cells={"values": columns, "align": "left"})


def _group_colours(panels: tuple[Panel, ...]) -> dict[str, str]:
    """One colour per series name or point group across the figure's panels (a legend entry means one thing)."""
    return {name: PALETTE[i % len(PALETTE)] for i, name in enumerate(series_names(panels))}


def _traces(panel: Panel, fig: go.Figure, col: int, seen: set[str], groups: dict[str, str]) -> list[go.BaseTraceType]:
    if isinstance(panel, Heatmap):
        return [_heatmap(panel, fig, col)]
    if isinstance(panel, Bars):
        return [_bar(name, panel, values, seen, groups[name]) for name, values in panel.series]
    if isinstance(panel, Curves):
        return [go.Scatter(x=list(x), y=list(y), mode="lines+markers", name=name, legendgroup=name,
                           line={"color": groups[name]},
                           showlegend=_first(seen, name), hovertemplate="epoch %{x}: %{y:.2f}<extra>" + name + "</extra>")
                for name, x, y in panel.series]
    if isinstance(panel, Scatter):
        out = []
        for group in dict.fromkeys(panel.group):
            colour = groups[group]
            idx = [i for i, g in enumerate(panel.group) if g == group]
            if idx:
                out.append(go.Scatter(x=[panel.x[i] for i in idx], y=[panel.y[i] for i in idx], mode="markers",
                                      marker={"size": 4, "color": colour, "opacity": 0.75}, name=group,
                                      legendgroup=group, showlegend=_first(seen, group)))
        return out
    raise TypeError(f"no plotly trace for {type(panel).__name__}")


def _heatmap(panel: Heatmap, fig: go.Figure, col: int) -> go.Heatmap:
    subplot = fig.get_subplot(1, col)
    (_, right), (bottom, top) = subplot.xaxis.domain, subplot.yaxis.domain
    labelled = len(panel.x) * len(panel.y) <= MAX_CELL_LABELS
    return go.Heatmap(
        z=[list(row) for row in panel.z], x=[str(v) for v in panel.x], y=[str(v) for v in panel.y],
        text=panel.labels(),
        texttemplate="%{text}" if labelled else None, colorscale="Viridis", hoverongaps=False,
        colorbar={"title": {"text": panel.colorbar, "side": "right"}, "x": right + 0.005, "thickness": 12,
                  "y": (bottom + top) / 2, "len": top - bottom, "yanchor": "middle"},
        hovertemplate=f"{panel.y_title} %{{y}}<br>{panel.x_title} %{{x}}<br>%{{z:.2f}}<extra></extra>",
    )


def _outline_marks(fig: go.Figure, panel: Heatmap, col: int, seen: set[str]) -> None:
    """Outline each marked cell (on category axes, shape coordinates are category indices)."""
    for mark in panel.marks:
        where = panel.position(mark)
        if where is None:
            continue
        j, i = where
        colour, width, dash = MARK_STYLE[mark.kind]
        name = mark.legend
        fig.add_shape(type="rect", x0=j - 0.5, x1=j + 0.5, y0=i - 0.5, y1=i + 0.5, row=1, col=col,
                      line={"color": colour, "width": width, "dash": dash}, name=name, legendgroup=mark.kind,
                      showlegend=_first(seen, name))


def _bar(name: str, panel: Bars, values: tuple[float | None, ...], seen: set[str], colour: str) -> go.Bar:
    cats, vals = list(panel.categories), list(values)
    fmt = "%{y:.2f}" if not panel.horizontal else "%{x:.2f}"
    return go.Bar(x=vals if panel.horizontal else cats, y=cats if panel.horizontal else vals, name=name,
                  orientation="h" if panel.horizontal else "v", legendgroup=name, showlegend=_first(seen, name),
                  marker={"color": colour},
                  hovertemplate=f"{fmt}<extra>{name}</extra>")


def _axes(fig: go.Figure, panel: Panel, col: int) -> None:
    if isinstance(panel, Heatmap):
        fig.update_xaxes(type="category", title_text=panel.x_title, row=1, col=col)
        fig.update_yaxes(type="category", title_text=panel.y_title, row=1, col=col)
    elif isinstance(panel, Bars):
        fig.update_xaxes(title_text=panel.value_title if panel.horizontal else None, row=1, col=col)
        fig.update_yaxes(title_text=None if panel.horizontal else panel.value_title,
                         autorange="reversed" if panel.horizontal else None, row=1, col=col)
    elif isinstance(panel, Curves):
        fig.update_xaxes(title_text=panel.x_title, row=1, col=col)
        fig.update_yaxes(title_text=panel.y_title, row=1, col=col)
    elif isinstance(panel, Scatter):
        fig.update_xaxes(showticklabels=False, row=1, col=col)
        fig.update_yaxes(showticklabels=False, row=1, col=col)


def _first(seen: set[str], name: str) -> bool:
    """Show a legend entry once per figure (panels repeat series)."""
    if name in seen:
        return False
    seen.add(name)
    return True
