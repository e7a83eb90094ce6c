"""Drawing a "shapes" image: label sets, backgrounds, objects and their anti-aliased rendering."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageDraw

from difffeat_tune._errors import DataError
from difffeat_tune.data.shapes._words import _Words
from difffeat_tune.data.shapes._config import RGB, ShapesConfig
from difffeat_tune.data.shapes._geometry import _UNIT_SHAPES

# --------------------------------------------------------------------------------------------
# Sampling
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Object:
    category: int
    colour: RGB
    colour_name: str
    centre: tuple[float, float]  # in pixels at image_size
    radius: float
    angle: float
    aspect: float


@dataclass(frozen=True)
class _Background:
    kind: str
    colour_name: str
    pixels: np.ndarray = field(repr=False)  # float32 [size, size, 3]


def _sample_label_sets(rng: np.random.Generator, n: int, cfg: ShapesConfig) -> np.ndarray:
    """Bernoulli label sets with the configured prevalences, 1..max_labels labels per row,
    then topped up so that every category has ``min_positives`` positives."""
    prevalence = np.asarray(cfg.prevalence)
    n_cat = len(prevalence)
    labels = rng.random((n, n_cat)) < prevalence
    weights = prevalence / prevalence.sum()
    for i in range(n):
        present = np.flatnonzero(labels[i])
        if len(present) == 0:
            labels[i, rng.choice(n_cat, p=weights)] = True
        elif len(present) > cfg.max_labels:
            drop = rng.choice(present, size=len(present) - cfg.max_labels, replace=False)
            labels[i, drop] = False
    need = min(cfg.min_positives, n)
    for c in range(n_cat):
        missing = need - int(labels[:, c].sum())
        if missing <= 0:
            continue
        room = np.flatnonzero(~labels[:, c] & (labels.sum(axis=1) < cfg.max_labels))
        if len(room) < missing:
            raise DataError(f"shapes: split of {n} images is too small for {need} positives per category",
                            "use larger split sizes")
        labels[rng.choice(room, size=missing, replace=False), c] = True
    return labels.astype(np.int8)


@dataclass(frozen=True)
class _Context:
    """Everything computed once per generation: grammar, palette arrays and pixel grids."""

    cfg: ShapesConfig
    words: _Words
    colour_names: tuple[str, ...]
    colour_values: np.ndarray = field(repr=False)  # float [K, 3]
    xs: np.ndarray = field(repr=False)  # float32 [size, size], pixel centres in [0, 1)
    ys: np.ndarray = field(repr=False)
    mention_probs: tuple[float, ...]  # per category

    @classmethod
    def build(cls, cfg: ShapesConfig) -> _Context:
        size = cfg.image_size
        ys, xs = (np.mgrid[0:size, 0:size].astype(np.float32) + 0.5) / size
        n_cat = len(cfg.categories)
        rank = np.empty(n_cat)
        rank[np.argsort(-np.asarray(cfg.prevalence), kind="stable")] = np.arange(n_cat) / max(n_cat - 1, 1)
        lo, hi = cfg.mention_prob_range
        return cls(cfg=cfg, words=_Words.build(cfg), colour_names=tuple(name for name, _ in cfg.palette),
                   colour_values=np.asarray([rgb for _, rgb in cfg.palette], dtype=float), xs=xs, ys=ys,
                   mention_probs=tuple(float(lo + (hi - lo) * r) for r in rank))

    def nearest_colour_name(self, colour: np.ndarray) -> str:
        return self.colour_names[int(np.argmin(((self.colour_values - colour) ** 2).sum(axis=1)))]

    def colour(self, rng: np.random.Generator, name: str | None = None) -> np.ndarray:
        index = rng.integers(len(self.colour_names)) if name is None else self.colour_names.index(name)
        return self.colour_values[index]


def _background(rng: np.random.Generator, ctx: _Context) -> _Background:
    cfg = ctx.cfg
    size = cfg.image_size
    mix = rng.uniform(*cfg.background_grey_mix)
    c1 = (1 - mix) * ctx.colour(rng) + mix * 128.0
    c2 = (1 - mix) * ctx.colour(rng) + mix * 128.0
    kind = cfg.background_kinds[rng.choice(len(cfg.background_kinds), p=cfg.background_weights)]
    xs, ys = ctx.xs, ctx.ys
    phi = rng.uniform(0, 2 * math.pi)
    along = xs * math.cos(phi) + ys * math.sin(phi)
    if kind == "plain":
        t = np.zeros_like(xs)
    elif kind == "gradient":
        t = (along - along.min()) / max(float(along.max() - along.min()), 1e-6)
    elif kind == "stripes":
        t = (((along / rng.uniform(*cfg.stripe_period_range)) % 1.0) < 0.5).astype(np.float32)
    elif kind == "checker":
        period = rng.uniform(*cfg.checker_period_range)
        t = (((np.floor(xs / period) + np.floor(ys / period)) % 2) == 0).astype(np.float32)
    else:  # blotches: a coarse random field, upsampled smoothly
        coarse = int(rng.integers(*cfg.blotch_grid_range))
        field_ = (rng.random((coarse, coarse)) * 255).astype(np.uint8)
        t = np.asarray(Image.fromarray(field_, "L").resize((size, size), Image.BICUBIC), dtype=np.float32) / 255
    t = t[..., None]
    pixels = (c1 * (1 - t) + c2 * t).astype(np.float32)
    colour_name = ctx.nearest_colour_name(c1 if kind == "plain" else (c1 + c2) / 2)
    return _Background(kind=kind, colour_name=colour_name, pixels=pixels)


def _sample_objects(rng: np.random.Generator, label_row: np.ndarray, background: _Background,
                    ctx: _Context) -> list[_Object]:
    cfg = ctx.cfg
    present = np.flatnonzero(label_row)
    counts = 1 + rng.choice(len(cfg.instance_count_probs), size=len(present), p=cfg.instance_count_probs)
    while counts.sum() > cfg.max_objects:
        counts[int(np.argmax(counts))] -= 1
    categories = np.repeat(present, counts)
    rng.shuffle(categories)  # drawing order: later objects may hide earlier ones
    size = cfg.image_size
    log_lo, log_hi = math.log(cfg.radius_range[0]), math.log(cfg.radius_range[1])
    objects = []
    for c in categories:
        radius = math.exp(rng.uniform(log_lo, log_hi))
        lo, hi = radius * cfg.margin, size - radius * cfg.margin
        centre = (float(rng.uniform(lo, hi)), float(rng.uniform(lo, hi)))
        if rng.random() < cfg.low_contrast_prob:
            local = background.pixels[min(int(centre[1]), size - 1), min(int(centre[0]), size - 1)]
            colour = local + rng.uniform(-cfg.low_contrast_delta, cfg.low_contrast_delta, 3)
        else:
            preferred = cfg.preferred_colours[c]
            name = preferred[rng.integers(2)] if rng.random() < cfg.colour_affinity else None
            colour = ctx.colour(rng, name) + rng.uniform(-cfg.colour_jitter, cfg.colour_jitter, 3)
        colour = np.clip(colour, 0, 255)
        objects.append(_Object(
            category=int(c),
            colour=(int(colour[0]), int(colour[1]), int(colour[2])),
            colour_name=ctx.nearest_colour_name(colour),
            centre=centre,
            radius=radius,
            angle=float(rng.uniform(0, 2 * math.pi)),
            aspect=float(rng.uniform(*cfg.aspect_range)),
        ))
    return objects


# --------------------------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------------------------

#: Half-side of an object's drawing box, in radii (unit shapes fit in radius 1; aspect <= 1.15).
_EXTENT = 1.25


def _render(rng: np.random.Generator, background: _Background, objects: Sequence[_Object],
            cfg: ShapesConfig) -> np.ndarray:
    """Draw each object's mask at ``supersample`` x resolution inside its own box, downsample it
    (anti-aliased coverage) and paste the object's colour through it."""
    s = cfg.supersample
    canvas = Image.fromarray(background.pixels.clip(0, 255).astype(np.uint8), "RGB")
    for obj in objects:
        half = obj.radius * _EXTENT
        x0, y0 = math.floor(obj.centre[0] - half), math.floor(obj.centre[1] - half)
        side = math.ceil(2 * half) + 1
        mask = Image.new("L", (side * s, side * s), 0)
        draw = ImageDraw.Draw(mask)
        cos, sin = math.cos(obj.angle), math.sin(obj.angle)
        rot = np.array([[cos, -sin], [sin, cos]])
        scale = np.array([obj.aspect, 1.0 / obj.aspect]) * obj.radius * s
        offset = (np.asarray(obj.centre) - (x0, y0)) * s
        for points, additive in _UNIT_SHAPES[cfg.categories[obj.category]]:
            xy = (points * scale) @ rot.T + offset
            draw.polygon([tuple(p) for p in xy.tolist()], fill=255 if additive else 0)
        if s > 1:
            mask = mask.resize((side, side), Image.BOX)
        canvas.paste(obj.colour, (x0, y0, x0 + side, y0 + side), mask)
    pixels = np.asarray(canvas, dtype=np.float32)
    if cfg.pixel_noise_std > 0:
        pixels = pixels + rng.normal(0, cfg.pixel_noise_std, pixels.shape)
    return pixels.clip(0, 255).round().astype(np.uint8)


@dataclass(frozen=True)
class _RawSplit:
    pixels: np.ndarray
    labels: np.ndarray
    captions: tuple[str, ...]
