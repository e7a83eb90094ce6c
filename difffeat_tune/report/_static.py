"""Static figures: a :class:`FigureSpec` drawn with matplotlib and saved as PNG and PDF (for a paper).

Figures are built as :class:`matplotlib.figure.Figure` objects, never through pyplot, so no
global figure state or interactive backend is involved. Plots go in one row; tables in a row
below them.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from difffeat_tune.report._spec import Bars, Curves, FigureSpec, Heatmap, Panel, Scatter, Table, series_names

#: Resolution of the PNG files (dots per inch).
PNG_DPI = 150
#: Heatmaps with more cells than this are drawn without per-cell labels.
MAX_CELL_LABELS = 120
CMAP = "viridis"
#: Colour of the cells that were not run.
MISSING_COLOUR = "#dddddd"
#: Outline of a marked cell per mark kind: (colour, line width, line style).
MARK_STYLE: Mapping[str, tuple[str, float, str]] = MappingProxyType({
    "best": ("black", 2.5, "solid"),
    "chosen": ("red", 3.0, "solid"),
    "evaluated": ("fuchsia", 1.5, "solid"),
    "grid_best": ("black", 2.5, "dashed"),
    "trained": ("darkorange", 2.5, "solid"),
})
PALETTE = "tab10"


def to_matplotlib(spec: FigureSpec) -> Figure:
    """The matplotlib figure of ``spec``."""
    plots = [p for p in spec.panels if not isinstance(p, Table)]
    tables = [p for p in spec.panels if isinstance(p, Table)]
    widths = [_width(p) for p in plots] or [8.0]
    plot_height = max([_height(p) for p in plots], default=0.0)
    table_height = max((0.6 + 0.28 * (len(t.rows) + 1) for t in tables), default=0.0)
    width = max(sum(widths), 3.5 * len(tables), 6.0)
    fig = Figure(figsize=(width, plot_height + table_height + 0.6), layout="constrained")
    fig.suptitle(spec.title, fontsize=12)
    rows = [r for r in (plots, tables) if r]
    subfigs = fig.subfigures(len(rows), 1, height_ratios=[plot_height or 1, table_height or 1][: len(rows)],
                             squeeze=False)[:, 0]
    groups = _group_colours(plots)
    for subfig, row in zip(subfigs, rows):
        ratios = [_width(p) for p in row] if row is plots else [1.0] * len(row)
        axes = subfig.subplots(1, len(row), width_ratios=ratios, squeeze=False)[0]
        for ax, panel in zip(axes, row):
            _draw(ax, panel, groups, legend=panel is row[0])
    return fig


def save_static(spec: FigureSpec, folder: Path) -> list[Path]:
    """Write ``<key>.png`` and ``<key>.pdf`` of ``spec`` into ``folder``."""
    fig = to_matplotlib(spec)
    paths = [folder / f"{spec.key}.png", folder / f"{spec.key}.pdf"]
    fig.savefig(paths[0], dpi=PNG_DPI)
    fig.savefig(paths[1])
    return paths


def _width(panel: Panel) -> float:
    if isinstance(panel, Heatmap):
        return max(4.5, 0.55 * len(panel.x) + 2.5)
    if isinstance(panel, Bars) and not panel.horizontal:
        return max(4.5, 0.35 * len(panel.categories) * max(1, len(panel.series)))
    return 5.0


def _height(panel: Panel) -> float:
    if isinstance(panel, Heatmap):
        return max(3.8, 0.32 * len(panel.y) + 1.8)
    if isinstance(panel, Bars) and panel.horizontal:
        return max(3.8, 0.22 * len(panel.categories) + 1.2)
    return 4.0


def _group_colours(panels: list[Panel]) -> dict[str, tuple[float, ...]]:
    """One colour per series name or point group across the figure's panels."""
    from matplotlib import colormaps

    cmap = colormaps[PALETTE]
    return {name: cmap(i % cmap.N) for i, name in enumerate(series_names(panels))}


def _draw(ax: Axes, panel: Panel, groups: dict[str, tuple[float, ...]], *, legend: bool) -> None:
    ax.set_title(panel.title, fontsize=10)
    if isinstance(panel, Heatmap):
        _heatmap(ax, panel)
    elif isinstance(panel, Bars):
        _bars(ax, panel, groups)
    elif isinstance(panel, Curves):
        for name, x, y in panel.series:
            ax.plot(x, y, marker=".", label=name, color=groups[name])
        ax.set_xlabel(panel.x_title)
        ax.set_ylabel(panel.y_title)
        ax.legend(fontsize=7)
    elif isinstance(panel, Scatter):
        for group in dict.fromkeys(panel.group):
            idx = [i for i, g in enumerate(panel.group) if g == group]
            ax.scatter([panel.x[i] for i in idx], [panel.y[i] for i in idx], s=5, color=groups[group], label=group)
        ax.set_xticks([])
        ax.set_yticks([])
        if legend:
            ax.legend(fontsize=7, markerscale=2)
    else:
        _table(ax, panel)


def _heatmap(ax: Axes, panel: Heatmap) -> None:
    from matplotlib import colormaps

    z = np.array([[np.nan if v is None else v for v in row] for row in panel.z], dtype=float)
    cmap = colormaps[CMAP].with_extremes(bad=MISSING_COLOUR)
    image = ax.imshow(np.ma.masked_invalid(z), cmap=cmap, origin="lower", aspect="auto")
    ax.figure.colorbar(image, ax=ax, label=panel.colorbar, shrink=0.9)
    ax.set_xticks(range(len(panel.x)), [str(v) for v in panel.x], rotation=45 if len(panel.x) > 8 else 0,
                  ha="right" if len(panel.x) > 8 else "center", fontsize=7 if len(panel.x) > 8 else 9)
    ax.set_yticks(range(len(panel.y)), [str(v) for v in panel.y], fontsize=7 if len(panel.y) > 12 else 9)
    ax.set_xlabel(panel.x_title)
    ax.set_ylabel(panel.y_title)
    if z.size <= MAX_CELL_LABELS:
        finite = z[np.isfinite(z)]
        middle = float(finite.mean()) if finite.size else 0.0
        for i, row in enumerate(panel.labels()):
            for j, label in enumerate(row):
                if label:
                    dark = not np.isfinite(z[i, j]) or z[i, j] > middle
                    ax.text(j, i, label, ha="center", va="center", fontsize=7, color="black" if dark else "white")
    labelled: set[str] = set()
    for mark in panel.marks:
        where = panel.position(mark)
        if where is None:
            continue
        colour, width, style = MARK_STYLE[mark.kind]
        name = mark.legend
        ax.add_patch(Rectangle((where[0] - 0.5, where[1] - 0.5), 1, 1, fill=False, edgecolor=colour, linewidth=width,
                               linestyle=style, label=None if name in labelled else name, zorder=3))
        labelled.add(name)
    if panel.marks:
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(0, -0.12 if len(panel.x) <= 8 else -0.25),
                  ncol=1, frameon=False)


def _bars(ax: Axes, panel: Bars, colours: dict[str, tuple[float, ...]]) -> None:
    n = max(1, len(panel.series))
    width = 0.8 / n
    positions = np.arange(len(panel.categories))
    for k, (name, values) in enumerate(panel.series):
        heights = [np.nan if v is None else v for v in values]
        offset = positions - 0.4 + width * (k + 0.5)
        if panel.horizontal:
            ax.barh(offset, heights, height=width, label=name, color=colours[name])
        else:
            ax.bar(offset, heights, width=width, label=name, color=colours[name])
    if panel.horizontal:
        ax.set_yticks(positions, panel.categories, fontsize=7)
        ax.invert_yaxis()  # first category on top
        ax.set_xlabel(panel.value_title)
    else:
        ax.set_xticks(positions, panel.categories, fontsize=8)
        ax.set_ylabel(panel.value_title)
    ax.legend(fontsize=7)


def _table(ax: Axes, panel: Table) -> None:
    ax.axis("off")
    if not panel.rows:
        return
    table = ax.table(cellText=[list(r) for r in panel.rows], colLabels=list(panel.header), loc="center",
                     cellLoc="left")
    table.auto_set_font_size(False)
    table.set_fontsize(7)
    table.auto_set_column_width(list(range(len(panel.header))))
