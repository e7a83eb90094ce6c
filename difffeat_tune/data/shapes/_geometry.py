"""The unit shapes of the "shapes" data set: polygons in unit coordinates, drawn by :mod:`._scene`."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from types import MappingProxyType

import numpy as np

# --------------------------------------------------------------------------------------------
# Geometry: every shape is a list of (polygon in unit coordinates, additive) parts, drawn into a
# mask in order (a non-additive part cuts a hole). Coordinates: x right, y down, radius ~1.
# --------------------------------------------------------------------------------------------

Part = tuple[np.ndarray, bool]


def _regular(n: int, radius: float = 1.0, phase: float = -math.pi / 2,
             centre: tuple[float, float] = (0.0, 0.0)) -> np.ndarray:
    angles = phase + 2 * math.pi * np.arange(n) / n
    return np.stack([centre[0] + radius * np.cos(angles), centre[1] + radius * np.sin(angles)], axis=1)


def _star() -> np.ndarray:
    angles = -math.pi / 2 + math.pi * np.arange(10) / 5
    radii = np.where(np.arange(10) % 2 == 0, 1.0, 0.42)
    return np.stack([radii * np.cos(angles), radii * np.sin(angles)], axis=1)


def _heart() -> np.ndarray:
    t = np.linspace(0, 2 * math.pi, 60, endpoint=False)
    x = 16 * np.sin(t) ** 3
    y = -(13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t))
    pts = np.stack([x, y + 2.5], axis=1) / 16.5
    return pts


def _flower() -> np.ndarray:
    t = np.linspace(0, 2 * math.pi, 90, endpoint=False)
    r = 0.45 + 0.55 * np.abs(np.cos(2.5 * t))
    return np.stack([r * np.cos(t), r * np.sin(t)], axis=1)


def _leaf() -> np.ndarray:
    x = np.linspace(-1.0, 0.75, 24)
    half = 0.45 * np.sin(math.pi * (x + 1.0) / 1.75) ** 0.8
    upper = np.stack([x, -half], axis=1)
    lower = np.stack([x[::-1], half[::-1]], axis=1)
    stem = np.array([[0.75, -0.06], [1.0, -0.06], [1.0, 0.06], [0.75, 0.06]])
    return np.concatenate([upper, stem, lower])


def _poly(points: Sequence[tuple[float, float]]) -> np.ndarray:
    return np.asarray(points, dtype=float)


def _frozen(shapes: dict[str, tuple[Part, ...]]) -> Mapping[str, tuple[Part, ...]]:
    """A read-only view of the shape table with read-only point arrays."""
    for parts in shapes.values():
        for points, _ in parts:
            points.flags.writeable = False
    return MappingProxyType(shapes)


_W = 0.32  # half-width of the cross's arms
_UNIT_SHAPES: Mapping[str, tuple[Part, ...]] = _frozen({
    "circle": ((_regular(40), True),),
    "square": ((_regular(4, phase=math.pi / 4), True),),
    "triangle": ((_regular(3, centre=(0.0, 0.15)), True),),
    "star": ((_star(), True),),
    "cross": ((_poly([(-_W, -1), (_W, -1), (_W, -_W), (1, -_W), (1, _W), (_W, _W), (_W, 1), (-_W, 1),
                      (-_W, _W), (-1, _W), (-1, -_W), (-_W, -_W)]), True),),
    "ring": ((_regular(40), True), (_regular(40, radius=0.58), False)),
    "heart": ((_heart(), True),),
    "diamond": ((_poly([(0, -1), (0.55, 0), (0, 1), (-0.55, 0)]), True),),
    "arrow": ((_poly([(-1, -0.2), (0.15, -0.2), (0.15, -0.62), (1, 0), (0.15, 0.62), (0.15, 0.2),
                      (-1, 0.2)]), True),),
    "moon": ((_regular(40), True), (_regular(40, radius=0.85, centre=(0.5, -0.2)), False)),
    "hexagon": ((_regular(6, phase=0.0), True),),
    "bolt": ((_poly([(0.25, -1), (-0.55, 0.12), (-0.05, 0.12), (-0.3, 1), (0.55, -0.2), (0.05, -0.2)]),
              True),),
    "flower": ((_flower(), True),),
    "leaf": ((_leaf(), True),),
})
