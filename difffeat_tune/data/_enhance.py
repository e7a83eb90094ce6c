"""The paper's COCO-enhanced caption rule, shared by every data set that builds "enhanced" captions.

Each caption gets "In this photo, there are also some c1, c2, ..., cK." naming every label
category of the image in plural form and, for categories present in under 1% of the training
images, "In the photo's subtle background, you can also spot some ...".
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

#: Categories present in under this fraction of the training images are "rare" (the paper's 1%).
RARE_FRACTION = 0.01
ALSO_SENTENCE = "In this photo, there are also some {}."
RARE_SENTENCE = "In the photo's subtle background, you can also spot some {}."
#: Plurals of COCO category names where ``inflect`` is wrong or ambiguous: names that already are
#: plural ("skis", "scissors"; inflect says "skiss"), mass nouns ("broccoli"), irregular plurals
#: stated explicitly rather than trusted to the library ("person", "sheep", "mouse" the device).
PLURAL_OVERRIDES: Mapping[str, str] = {
    "person": "people",
    "skis": "skis",
    "scissors": "scissors",
    "broccoli": "broccoli",
    "sheep": "sheep",
    "mouse": "mice",
    "tv": "TVs",
}
_TERMINAL_PUNCTUATION = ".!?"


def plurals(names: Sequence[str]) -> list[str]:
    """The plurals of category names: :data:`PLURAL_OVERRIDES`, else ``inflect`` (which handles
    multi-word names by their head noun: "hair drier" -> "hair driers")."""
    import inflect

    engine = inflect.engine()
    return [PLURAL_OVERRIDES[n] if n in PLURAL_OVERRIDES else str(engine.plural_noun(n)) for n in names]


def rare_mask(train_labels: np.ndarray, fraction: float = RARE_FRACTION) -> np.ndarray:
    """Per label column, whether the category is positive in under ``fraction`` of the rows."""
    if len(train_labels) == 0:
        return np.zeros(train_labels.shape[1], dtype=bool)
    return (train_labels > 0).mean(axis=0) < fraction


def enhance_caption(caption: str, plurals: Sequence[str], rare: Sequence[bool]) -> str:
    """Append the paper's COCO-enhanced sentences to one caption.

    Args:
        caption: the base caption (a final period is added if it has no terminal punctuation).
        plurals: the plural names of the image's categories, in the order to list them.
        rare: per entry of ``plurals``, whether that category is rare.

    Returns:
        ``caption`` unchanged if ``plurals`` is empty, else with "In this photo, there are also
        some c1, c2, ..., cK." and, if some are rare, "In the photo's subtle background, you can
        also spot some r1, ...".
    """
    if not plurals:
        return caption
    text = terminate(caption) + " " + ALSO_SENTENCE.format(", ".join(plurals))
    rare_names = [p for p, r in zip(plurals, rare) if r]
    if rare_names:
        text += " " + RARE_SENTENCE.format(", ".join(rare_names))
    return text


def terminate(text: str) -> str:
    """``text`` with a final period unless it already ends in ".", "!" or "?"."""
    return text if not text or text[-1] in _TERMINAL_PUNCTUATION else text + "."
