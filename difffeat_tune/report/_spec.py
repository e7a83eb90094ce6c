"""What a figure shows, as plain data: drawn by plotly (HTML, dashboard) and matplotlib (PNG, PDF).

One description per figure keeps the interactive and the static versions identical in content:
the two renderers only decide how it looks.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Literal, Union

#: How a marked cell is drawn: the optimum of a landscape, the pair a search chose, a pair the
#: heuristic evaluated (on the grid's landscape), the grid's own best, a configuration the
#: proxy-guided search trained (on a landscape of proxy scores).
MarkKind = Literal["best", "chosen", "evaluated", "grid_best", "trained"]
#: Mark kinds whose cell label gets a star.
STARRED = frozenset({"best", "chosen", "grid_best"})
#: Mark kinds that share one legend entry (by the kind's name), not one per mark.
GROUPED = frozenset({"evaluated", "trained"})
#: How each kind of mark is named in legends.
MARK_NAMES: Mapping[str, str] = MappingProxyType({
    "best": "optimum", "chosen": "chosen", "evaluated": "evaluated by the heuristic", "grid_best": "grid's best",
    "trained": "trained by the proxy-guided search"})
Cell = Union[str, int]


@dataclass(frozen=True)
class Mark:
    """A marked heatmap cell, at column ``x`` and row ``y`` (axis labels), with a legend label."""

    x: Cell
    y: Cell
    label: str
    kind: MarkKind = "best"

    @property
    def legend(self) -> str:
        """Its legend entry: the kind's name for :data:`GROUPED` kinds, else its own label."""
        return MARK_NAMES[self.kind] if self.kind in GROUPED else self.label


@dataclass(frozen=True)
class Heatmap:
    """Scores on a grid: ``z[i][j]`` is the cell of row ``y[i]`` and column ``x[j]`` (None: not run).

    ``text`` optionally replaces a cell's label (e.g. "pruned"). Marked cells are outlined.
    """

    title: str
    x: tuple[Cell, ...]
    y: tuple[Cell, ...]
    z: tuple[tuple[float | None, ...], ...]
    x_title: str
    y_title: str
    colorbar: str
    marks: tuple[Mark, ...] = ()
    text: tuple[tuple[str, ...], ...] | None = None

    def labels(self) -> list[list[str]]:
        """Cell labels: ``text`` (else the value), a star before the optimum's and the chosen pair's."""
        starred = {(str(m.x), str(m.y)) for m in self.marks if m.kind in STARRED}
        out = []
        for i, row in enumerate(self.z):
            labels = []
            for j, value in enumerate(row):
                label = self.text[i][j] if self.text is not None else ("" if value is None else f"{value:.1f}")
                labels.append(f"\u2605 {label}" if (str(self.x[j]), str(self.y[i])) in starred else label)
            out.append(labels)
        return out

    def position(self, mark: Mark) -> tuple[int, int] | None:
        """``(column, row)`` index of a mark's cell, None if the mark is off this grid."""
        xs, ys = [str(v) for v in self.x], [str(v) for v in self.y]
        if str(mark.x) not in xs or str(mark.y) not in ys:
            return None
        return xs.index(str(mark.x)), ys.index(str(mark.y))


@dataclass(frozen=True)
class Bars:
    """Grouped bars: one value per (series, category); ``horizontal`` puts categories on the y axis."""

    title: str
    categories: tuple[str, ...]
    series: tuple[tuple[str, tuple[float | None, ...]], ...]
    value_title: str
    horizontal: bool = False


@dataclass(frozen=True)
class Curves:
    """Lines: ``(name, x values, y values)`` per series."""

    title: str
    series: tuple[tuple[str, tuple[float, ...], tuple[float, ...]], ...]
    x_title: str
    y_title: str


@dataclass(frozen=True)
class Scatter:
    """Points coloured by group (a t-SNE embedding)."""

    title: str
    x: tuple[float, ...]
    y: tuple[float, ...]
    group: tuple[str, ...]


@dataclass(frozen=True)
class Table:
    """A table of text cells."""

    title: str
    header: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]


Panel = Union[Heatmap, Bars, Curves, Scatter, Table]


@dataclass(frozen=True)
class FigureSpec:
    """One figure of the report: panels side by side, and a caption that says how to read it.

    Panel titles may hold line breaks (``\n``). Tables are drawn below the other panels.

    Attributes:
        key: file stem and dashboard graph id (letters, digits, ``-``).
        title: the figure's title.
        caption: what is shown (including what is missing and why).
        panels: the panels, left to right.
    """

    key: str
    title: str
    caption: str
    panels: tuple[Panel, ...]


def series_names(panels: tuple[Panel, ...] | list[Panel]) -> list[str]:
    """Names of the bar and curve series and the point groups of ``panels``, in first-seen order."""
    names: dict[str, None] = {}
    for panel in panels:
        if isinstance(panel, Bars):
            names.update(dict.fromkeys(name for name, _ in panel.series))
        elif isinstance(panel, Curves):
            names.update(dict.fromkeys(name for name, _, _ in panel.series))
        elif isinstance(panel, Scatter):
            names.update(dict.fromkeys(panel.group))
    return list(names)
