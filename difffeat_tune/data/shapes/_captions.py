"""Captions of "shapes" images: partial, varied mentions of their objects, and the enhanced sentences."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from difffeat_tune.data._enhance import RARE_FRACTION, enhance_caption, plurals, rare_mask
from difffeat_tune.data.shapes._config import ShapesConfig

if TYPE_CHECKING:
    from difffeat_tune.data.shapes._scene import _Background, _Context, _Object

# --------------------------------------------------------------------------------------------
# Captions
# --------------------------------------------------------------------------------------------

_NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


def _position_phrase(centre: tuple[float, float], cfg: ShapesConfig) -> str:
    x, y = centre[0] / cfg.image_size, centre[1] / cfg.image_size
    lo, hi = cfg.position_bands
    horizontal = "left" if x < lo else "right" if x > hi else ""
    vertical = "top" if y < lo else "bottom" if y > hi else ""
    if horizontal and vertical:
        return f" in the {vertical} {horizontal} corner"
    if horizontal:
        return f" on the {horizontal}"
    if vertical:
        return f" at the {vertical}"
    return " in the middle"


def _join(items: Sequence[str]) -> str:
    if len(items) == 1:
        return items[0]
    return ", ".join(items[:-1]) + " and " + items[-1]


def _caption(rng: np.random.Generator, objects: Sequence[_Object], background: _Background,
             ctx: _Context) -> str:
    cfg, words = ctx.cfg, ctx.words
    by_category: dict[int, list[_Object]] = {}
    for obj in objects:
        by_category.setdefault(obj.category, []).append(obj)
    categories = sorted(by_category)
    mentioned = [c for c in categories if rng.random() < ctx.mention_probs[c]]
    if not mentioned:  # a caption names at least the most salient (largest) category
        mentioned = [max(categories, key=lambda c: sum(o.radius ** 2 for o in by_category[c]))]
    order = rng.permutation(len(mentioned))
    phrases = []
    for c in (mentioned[i] for i in order):
        instances = by_category[c]
        nouns = cfg.vague_nouns if rng.random() < cfg.vague_prob else cfg.synonyms[c]
        noun = nouns[rng.integers(len(nouns))]
        if len(instances) == 1:
            obj = instances[0]
            core = f"{obj.colour_name} {noun}" if rng.random() < cfg.colour_word_prob else noun
            phrase = words.a(core)
            if rng.random() < cfg.position_word_prob:
                phrase += _position_phrase(obj.centre, cfg)
        else:
            quantity = _NUMBER_WORDS[len(instances)] if rng.random() < cfg.count_word_prob else "some"
            phrase = f"{quantity} {words.plural[noun]}"
        phrases.append(phrase)
    extra = ""
    if rng.random() < cfg.distractor_prob:
        distractor = cfg.distractors[rng.integers(len(cfg.distractors))]
        phrases.append(words.a(f"faint {distractor}" if rng.random() < cfg.faint_prob else distractor))
    if rng.random() < cfg.background_word_prob:
        extra += {
            "plain": f" on a plain {background.colour_name} background",
            "gradient": " on a colour gradient",
            "stripes": " on a striped background",
            "blotches": " over a blotchy texture",
            "checker": " on a checkered background",
        }[background.kind]
    if rng.random() < cfg.filler_prob:
        extra += cfg.fillers[rng.integers(len(cfg.fillers))]
    objs = _join(phrases)
    template = cfg.templates[rng.integers(len(cfg.templates))]
    return template.format(objs=objs, Objs=objs[0].upper() + objs[1:], extra=extra)


def enhance_captions(captions: Sequence[str], labels: np.ndarray, label_names: Sequence[str],
                     rare: Sequence[bool]) -> tuple[str, ...]:
    """Append the paper's COCO-enhanced sentences to each caption (the rule of :mod:`._enhance`).

    Args:
        captions: the base captions.
        labels: ``[N, C]`` labels aligned with ``captions`` (positive = 1).
        label_names: the ``C`` category names (singular).
        rare: per category, whether it is rare (see :func:`rare_categories`).
    """
    names = plurals(label_names)
    return tuple(enhance_caption(caption, [names[c] for c in np.flatnonzero(row > 0)],
                                 [rare[c] for c in np.flatnonzero(row > 0)])
                 for caption, row in zip(captions, labels))


def rare_categories(train_labels: np.ndarray, fraction: float = RARE_FRACTION) -> tuple[bool, ...]:
    """Per category, whether it is present in under ``fraction`` of the training images."""
    return tuple(bool(r) for r in rare_mask(train_labels, fraction))
