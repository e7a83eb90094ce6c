"""Every constant of the "shapes" generator, in one frozen dataclass."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass

from difffeat_tune._errors import DataError
from difffeat_tune.data._enhance import RARE_FRACTION
from difffeat_tune.data.shapes._geometry import _UNIT_SHAPES

#: Bump whenever the generator's output changes for a given seed and configuration: it is part of
#: the cache key and of ``Dataset.options`` (so feature stores built on older data are not reused).
GENERATOR_VERSION = 2

SPLITS: tuple[str, ...] = ("train", "val", "test")

RGB = tuple[int, int, int]


@dataclass(frozen=True)
class ShapesConfig:
    """Every constant of the "shapes" generator. Per-category tuples follow ``categories``' order.

    Attributes:
        n_train: default number of training images.
        n_val: default number of validation images.
        n_test: default number of test images.
        image_size: side of the square RGB images, in pixels.
        supersample: drawing happens at ``image_size * supersample`` and is then downsampled
            (anti-aliasing).
        categories: the label names, in label-matrix column order.
        prevalence: per category, the probability that an image contains it (before the "at least
            one label" and "at most ``max_labels``" corrections): a long tail like COCO's.
        synonyms: per category, the nouns captions may use for it (the first is the label name).
        max_labels: most categories in one image.
        max_objects: most objects (instances) in one image.
        instance_count_probs: probabilities of 1, 2, 3, ... instances of a present category.
        min_positives: fewest images holding each category in every split (rare categories are
            added to random images until this holds).
        radius_range: object radius range in pixels at ``image_size`` (sampled log-uniformly).
        aspect_range: range of the per-object horizontal stretch.
        margin: fraction of an object's radius that may leave the image at the borders.
        palette: named colours (objects and backgrounds; captions name the nearest one).
        preferred_colours: per category, two palette colours it favours; the first is its own (no
            other category's first), so an object's colour says something of what it is, as
            appearance does in photographs (version 2; version 1 let categories share them).
        colour_affinity: probability that an object takes one of its category's preferred colours
            (otherwise any palette colour).
        colour_jitter: maximal per-channel jitter of an object's colour.
        low_contrast_prob: probability that an object's colour is close to the background's.
        low_contrast_delta: maximal per-channel difference of a low-contrast object.
        background_kinds: kinds of background ("plain", "gradient", "stripes", "blotches",
            "checker").
        background_weights: probability of each kind of background.
        background_grey_mix: range of the mix of background colours towards grey (muted
            backgrounds).
        stripe_period_range: range of the stripes' period, as a fraction of the image side.
        checker_period_range: range of the checkerboard's square side, as a fraction of the side.
        blotch_grid_range: the blotchy texture is a random ``k x k`` field upsampled, with ``k``
            in this half-open range.
        pixel_noise_std: standard deviation of the Gaussian pixel noise added at the end.
        mention_prob_range: probability that a caption mentions a present category, from the
            most frequent category to the rarest (linear in the frequency rank): like people,
            captions mention the unusual more often than the commonplace.
        colour_word_prob: probability that a mention names the object's colour.
        count_word_prob: probability that a mention of several instances gives their number
            ("two stars"), rather than "some stars".
        position_word_prob: probability that a mention says where the object is.
        position_bands: an object whose centre is left of the first fraction of the side is "on
            the left", right of the second "on the right" (likewise top and bottom).
        background_word_prob: probability that a caption describes the background.
        filler_prob: probability that a caption gets a filler phrase.
        vague_prob: probability that a mention uses a vague noun ("a red shape on the left")
            instead of the category's: the caption then says something is there, not what.
        vague_nouns: the vague nouns (not labels).
        distractor_prob: probability that a caption mentions a distractor (not a label).
        distractors: nouns of things that are not labels.
        faint_prob: probability that a distractor is called "faint".
        templates: caption templates; ``{objs}`` is the list of mentions, ``{Objs}`` the same
            capitalised, ``{extra}`` the optional background, filler and distractor phrases.
        fillers: filler phrases (each starts with its own separator).
        rare_fraction: categories present in under this fraction of the training images get the
            enhanced "subtle background" sentence (the paper's 1%).
    """

    n_train: int = 2400
    n_val: int = 800
    n_test: int = 800
    image_size: int = 64
    supersample: int = 2
    categories: tuple[str, ...] = (
        "circle", "square", "triangle", "star", "cross", "ring", "heart",
        "diamond", "arrow", "moon", "hexagon", "bolt", "flower", "leaf",
    )
    prevalence: tuple[float, ...] = (
        0.45, 0.35, 0.28, 0.22, 0.17, 0.13, 0.1,
        0.075, 0.055, 0.04, 0.028, 0.011, 0.0065, 0.0045,
    )
    synonyms: tuple[tuple[str, ...], ...] = (
        ("circle", "disc", "dot"),
        ("square", "box"),
        ("triangle",),
        ("star",),
        ("cross", "plus sign"),
        ("ring", "hoop"),
        ("heart",),
        ("diamond", "rhombus"),
        ("arrow",),
        ("moon", "crescent"),
        ("hexagon",),
        ("bolt", "lightning bolt"),
        ("flower", "blossom"),
        ("leaf",),
    )
    max_labels: int = 4
    max_objects: int = 6
    instance_count_probs: tuple[float, ...] = (0.75, 0.2, 0.05)
    min_positives: int = 5
    radius_range: tuple[float, float] = (6.0, 16.0)
    aspect_range: tuple[float, float] = (0.85, 1.15)
    margin: float = 0.5
    palette: tuple[tuple[str, RGB], ...] = (
        ("red", (215, 40, 40)),
        ("orange", (240, 140, 30)),
        ("yellow", (235, 215, 45)),
        ("green", (50, 165, 60)),
        ("blue", (40, 90, 215)),
        ("purple", (135, 60, 185)),
        ("pink", (240, 125, 180)),
        ("brown", (125, 80, 40)),
        ("white", (245, 245, 245)),
        ("black", (25, 25, 25)),
        ("grey", (128, 128, 128)),
        ("teal", (30, 155, 155)),
        ("navy", (30, 40, 110)),
        ("lime", (160, 225, 60)),
    )
    preferred_colours: tuple[tuple[str, str], ...] = (
        ("red", "blue"), ("blue", "green"), ("green", "orange"), ("yellow", "white"),
        ("white", "red"), ("orange", "teal"), ("pink", "red"), ("teal", "purple"),
        ("black", "orange"), ("grey", "yellow"), ("purple", "brown"), ("lime", "yellow"),
        ("navy", "pink"), ("brown", "green"),
    )
    colour_affinity: float = 0.85
    colour_jitter: int = 20
    low_contrast_prob: float = 0.06
    low_contrast_delta: int = 28
    background_kinds: tuple[str, ...] = ("plain", "gradient", "stripes", "blotches", "checker")
    background_weights: tuple[float, ...] = (0.3, 0.3, 0.1, 0.2, 0.1)
    background_grey_mix: tuple[float, float] = (0.3, 0.8)
    stripe_period_range: tuple[float, float] = (0.12, 0.3)
    checker_period_range: tuple[float, float] = (0.15, 0.35)
    blotch_grid_range: tuple[int, int] = (3, 7)
    pixel_noise_std: float = 3.0
    mention_prob_range: tuple[float, float] = (0.4, 0.85)
    colour_word_prob: float = 0.35
    count_word_prob: float = 0.6
    position_word_prob: float = 0.3
    position_bands: tuple[float, float] = (0.36, 0.64)
    background_word_prob: float = 0.25
    filler_prob: float = 0.3
    vague_prob: float = 0.15
    vague_nouns: tuple[str, ...] = ("shape", "object", "thing", "figure")
    distractor_prob: float = 0.2
    distractors: tuple[str, ...] = (
        "cloud", "smudge", "line", "shadow", "scribble", "blob", "speck", "wave", "spiral", "grid",
    )
    faint_prob: float = 0.5
    templates: tuple[str, ...] = (
        "{Objs}{extra}.",
        "A picture of {objs}{extra}.",
        "An image showing {objs}{extra}.",
        "Here we see {objs}{extra}.",
        "I can see {objs}{extra}.",
        "Some shapes, including {objs}{extra}.",
        "A simple drawing with {objs}{extra}.",
        "This scene has {objs}{extra}.",
        "Look: {objs}{extra}!",
    )
    fillers: tuple[str, ...] = (
        " in the scene", ", nothing else stands out", " among other things", " if you look closely",
        " drawn by hand", " in this image",
    )
    rare_fraction: float = RARE_FRACTION
    #: Text token length recommended for these captions (the backbone's L): plain captions are
    #: short (99% under 24 tokens of the tiny tokenizer), enhanced ones longer (99% under 41), so
    #: the paper's COCO value of 60 would mostly pad.
    token_length: int = 32
    token_length_enhanced: int = 48

    def __post_init__(self) -> None:
        n = len(self.categories)
        for name in ("prevalence", "synonyms", "preferred_colours"):
            if len(getattr(self, name)) != n:
                raise DataError(f"ShapesConfig.{name} has {len(getattr(self, name))} entries for {n} categories")
        if len(set(self.categories)) != n:
            raise DataError("ShapesConfig.categories has duplicates")
        unknown = {c for pair in self.preferred_colours for c in pair} - {name for name, _ in self.palette}
        if unknown:
            raise DataError(f"ShapesConfig.preferred_colours names colours not in the palette: {sorted(unknown)}")
        missing = set(self.categories) - set(_UNIT_SHAPES)
        if missing:
            raise DataError(f"ShapesConfig.categories has no drawing for {sorted(missing)}",
                            f"drawable shapes: {', '.join(sorted(_UNIT_SHAPES))}")
        if not 1 <= self.max_labels <= self.max_objects:
            raise DataError("ShapesConfig needs 1 <= max_labels <= max_objects")
        for name in ("instance_count_probs", "background_weights"):
            if abs(sum(getattr(self, name)) - 1.0) > 1e-9:
                raise DataError(f"ShapesConfig.{name} must sum to 1")
        if len(self.background_weights) != len(self.background_kinds):
            raise DataError("ShapesConfig.background_weights needs one weight per background kind")

    def key(self, seed: int, sizes: Mapping[str, int]) -> str:
        """The cache key: generator version, seed, split sizes and a hash of every other constant."""
        body = json.dumps(asdict(self), sort_keys=True).encode()
        digest = hashlib.sha256(body).hexdigest()[:10]
        size_part = "-".join(str(sizes[s]) for s in SPLITS)
        return f"shapes-v{GENERATOR_VERSION}-seed{seed}-{size_part}-{digest}"
