"""MS-COCO 2014 (multi-label, 80 categories), plain or "COCO-enhanced" as in the Diff-Feat paper.

Expected folder layout (the official 2014 archives extracted into one folder)::

    root/
        annotations/
            instances_train2014.json    images[id, file_name], annotations[image_id, category_id],
            instances_val2014.json      categories[id, name] (80 categories, ids 1..90 with gaps)
            captions_train2014.json     annotations[image_id, id, caption] (about 5 per image)
            captions_val2014.json
        train2014/COCO_train2014_000000000009.jpg ...
        val2014/COCO_val2014_000000000042.jpg ...

Splits "train" (82,783 images) and "val" (40,504; the evaluation split of every COCO multi-label
paper). Row ids are the COCO image ids as strings; rows are sorted by image id.

Two published protocols differ, both are options recorded in ``Dataset.options``:

- Query2Label (the default, and the image counts the Diff-Feat paper quotes): images without any
  object annotation are kept as all-zero rows; label columns in COCO category-id order.
- ML-GCN: ``keep_empty=False`` (drops them: 82,081 / 40,137 images) and
  ``class_order="alphabetical"``.

COCO-enhanced (``enhanced=True``, the paper's data set): each caption gets
"In this photo, there are also some c1, c2, ..., cK." naming every label category of the image in
plural form (in COCO category-id order, whatever the column order, so a caption does not depend on
``class_order``), and, for the image's categories present in under 1% of the *training* images
(counted over every image of ``instances_train2014.json``, empty ones included, whatever
``keep_empty``, so the denominator is the paper's 82,783), "In the photo's subtle background, you
can also spot some ...". The paper names hot dog, toothbrush, scissors, bear, parking meter,
toaster and hair drier; the set is computed, never hard-coded, and recorded in
``Dataset.options["rare_categories"]``. Captions are whitespace-normalised; a final period is
added before the appended sentences when the caption has no terminal punctuation.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from difffeat_tune._errors import DataError
from difffeat_tune.data._base import Dataset, FileImages, Split
from difffeat_tune.data._enhance import RARE_FRACTION, enhance_caption, plurals, rare_mask, terminate
from difffeat_tune.data._files import (
    exists_in, get_key, get_list, list_files, missing_images_error, read_json, require_dir, require_root,
)

logger = logging.getLogger(__name__)

DATASET = "MS-COCO 2014"
#: Split name -> COCO's file suffix.
SPLITS: Mapping[str, str] = {"train": "train2014", "val": "val2014"}
ClassOrder = Literal["coco-id", "alphabetical"]
CaptionChoice = Literal["first", "random", "all"]
CLASS_ORDERS: tuple[str, ...] = ("coco-id", "alphabetical")
CAPTION_CHOICES: tuple[str, ...] = ("first", "random", "all")

_HINT_DOWNLOAD = ("download the COCO 2014 train/val images and the 2014 train/val annotations from "
                  "cocodataset.org and extract them into the data folder")


def _clean(caption: str) -> str:
    """Collapse COCO's stray newlines and repeated spaces."""
    return re.sub(r"\s+", " ", caption).strip()


@dataclass(frozen=True)
class _Categories:
    ids: tuple[int, ...]  # COCO-id order
    names: tuple[str, ...]


@dataclass(frozen=True)
class _RawSplit:
    image_ids: tuple[int, ...]  # sorted
    file_names: tuple[str, ...]
    labels: np.ndarray  # [N, C] int8, columns in COCO-id order
    captions: Mapping[int, tuple[str, ...]]  # image id -> captions by ascending annotation id


def _read_categories(data: object, path: Path) -> _Categories:
    cats = get_list(data, "categories", path, DATASET, "the top level")
    pairs: dict[int, str] = {}
    for i, cat in enumerate(cats):
        cid = get_key(cat, "id", path, DATASET, f"categories[{i}]")
        name = get_key(cat, "name", path, DATASET, f"categories[{i}]")
        if not isinstance(cid, int) or not isinstance(name, str) or cid in pairs:
            raise DataError(f"{DATASET}: {path}: categories[{i}] has a bad or duplicate id/name ({cid!r}, {name!r})",
                            "re-download the original annotation file")
        pairs[cid] = name
    if not pairs:
        raise DataError(f"{DATASET}: {path} lists no categories", "re-download the original annotation file")
    ids = tuple(sorted(pairs))
    return _Categories(ids=ids, names=tuple(pairs[c] for c in ids))


def _read_instances(path: Path) -> tuple[_Categories, tuple[int, ...], tuple[str, ...], np.ndarray]:
    data = read_json(path, DATASET, _HINT_DOWNLOAD)
    categories = _read_categories(data, path)
    column = {cid: j for j, cid in enumerate(categories.ids)}
    files: dict[int, str] = {}
    for i, image in enumerate(get_list(data, "images", path, DATASET, "the top level")):
        image_id = get_key(image, "id", path, DATASET, f"images[{i}]")
        file_name = get_key(image, "file_name", path, DATASET, f"images[{i}]")
        if not isinstance(image_id, int) or not isinstance(file_name, str) or not file_name:
            raise DataError(f"{DATASET}: {path}: images[{i}] has a bad id or file_name ({image_id!r}, {file_name!r})",
                            "re-download the original annotation file")
        if image_id in files:
            raise DataError(f"{DATASET}: {path}: image id {image_id} is listed twice",
                            "re-download the original annotation file")
        files[image_id] = file_name
    image_ids = tuple(sorted(files))
    row = {iid: r for r, iid in enumerate(image_ids)}
    labels = np.zeros((len(image_ids), len(categories.ids)), dtype=np.int8)
    for i, ann in enumerate(get_list(data, "annotations", path, DATASET, "the top level")):
        image_id = get_key(ann, "image_id", path, DATASET, f"annotations[{i}]")
        cat_id = get_key(ann, "category_id", path, DATASET, f"annotations[{i}]")
        if image_id not in row:
            raise DataError(f"{DATASET}: {path}: annotations[{i}] refers to image id {image_id!r}, "
                            "which is not in its images list", "re-download the original annotation file")
        if cat_id not in column:
            raise DataError(f"{DATASET}: {path}: annotations[{i}] (image id {image_id}) has category_id "
                            f"{cat_id!r}, which is not in its categories list",
                            "re-download the original annotation file")
        labels[row[image_id], column[cat_id]] = 1
    return categories, image_ids, tuple(files[i] for i in image_ids), labels


def _read_captions(path: Path, image_ids: Sequence[int]) -> dict[int, tuple[str, ...]]:
    data = read_json(path, DATASET, _HINT_DOWNLOAD)
    wanted = set(image_ids)
    found: dict[int, list[tuple[int, str]]] = {}
    for i, ann in enumerate(get_list(data, "annotations", path, DATASET, "the top level")):
        image_id = get_key(ann, "image_id", path, DATASET, f"annotations[{i}]")
        ann_id = get_key(ann, "id", path, DATASET, f"annotations[{i}]")
        caption = get_key(ann, "caption", path, DATASET, f"annotations[{i}]")
        if not isinstance(caption, str) or not isinstance(ann_id, int):
            raise DataError(f"{DATASET}: {path}: annotations[{i}] (image id {image_id!r}) has a bad id or caption",
                            "re-download the original annotation file")
        text = _clean(caption)
        if image_id in wanted and text:
            found.setdefault(image_id, []).append((ann_id, text))  # type: ignore[arg-type]
    missing = [i for i in image_ids if i not in found]
    if missing:
        raise DataError(f"{DATASET}: {path} has no caption for {len(missing)} image(s), e.g. image id {missing[0]}",
                        "use the captions file of the same COCO release as the instances file")
    return {iid: tuple(c for _, c in sorted(caps)) for iid, caps in found.items()}


def _choose(captions: tuple[str, ...], image_id: int, how: str, seed: int) -> str:
    if how == "first":
        return captions[0]
    if how == "all":
        return " ".join(terminate(c) for c in captions)
    # "random": a hash of (seed, image id) so the choice of one image depends on nothing else.
    digest = hashlib.blake2b(f"{seed}:{image_id}".encode(), digest_size=8).digest()
    return captions[int.from_bytes(digest, "big") % len(captions)]


def _check_images(folder: Path, split: str, ids: Sequence[int], files: Sequence[str],
                  listed_in: Path) -> list[str]:
    require_dir(folder, DATASET, _HINT_DOWNLOAD)
    listing = list_files(folder)
    missing = [(str(i), folder / f) for i, f in zip(ids, files) if not exists_in(folder, f, listing)]
    if missing:
        raise missing_images_error(DATASET, missing, f"{listed_in} (split {split!r})", _HINT_DOWNLOAD)
    return [str(folder / f) for f in files]


def load_coco(root: str | Path, *, enhanced: bool = True, class_order: ClassOrder = "coco-id",
              keep_empty: bool = True, caption: CaptionChoice = "first", caption_seed: int = 0,
              rare_fraction: float = RARE_FRACTION) -> Dataset:
    """Load MS-COCO 2014 from local files (see the module docstring for the layout and protocols).

    Args:
        root: the folder holding ``annotations/``, ``train2014/`` and ``val2014/``.
        enhanced: append the paper's COCO-enhanced sentences (the default: the paper's data set).
        class_order: label columns in "coco-id" order (Query2Label, default) or "alphabetical"
            (ML-GCN).
        keep_empty: keep images without any object as all-zero rows (Query2Label, default) or drop
            them (ML-GCN).
        caption: which of an image's ~5 captions to use: "first" (default: the caption with the
            lowest annotation id, stable across runs and machines), "random" (one per image,
            chosen by a hash of ``caption_seed`` and the image id) or "all" (joined by spaces).
        caption_seed: seed of ``caption="random"``.
        rare_fraction: the "rare category" threshold of the enhanced captions (the paper's 1%).

    Returns:
        A multi-label :class:`Dataset` named "coco-enhanced" or "coco" with splits "train" and
        "val", captions and image files.

    Raises:
        DataError: naming the file for a missing or malformed annotation file, an annotation that
            refers to an unknown image or category, an image without caption, mismatched
            category lists, or images listed but absent (checked up front); or a bad option.
    """
    if class_order not in CLASS_ORDERS:
        raise DataError(f"{DATASET}: unknown class_order {class_order!r}", f"use one of {', '.join(CLASS_ORDERS)}")
    if caption not in CAPTION_CHOICES:
        raise DataError(f"{DATASET}: unknown caption choice {caption!r}", f"use one of {', '.join(CAPTION_CHOICES)}")
    if not 0.0 < rare_fraction < 1.0:
        raise DataError(f"{DATASET}: rare_fraction must be in (0, 1), got {rare_fraction!r}")
    base = require_root(root, DATASET)
    annotations = base / "annotations"

    raw: dict[str, _RawSplit] = {}
    categories: _Categories | None = None
    reference = annotations / f"instances_{SPLITS['train']}.json"
    for split, suffix in SPLITS.items():
        path = annotations / f"instances_{suffix}.json"
        cats, image_ids, file_names, labels = _read_instances(path)
        if categories is None:
            categories = cats
        elif cats != categories:
            raise DataError(f"{DATASET}: the categories of {path} differ from those of {reference}",
                            "use the instances files of the same COCO release")
        captions = _read_captions(annotations / f"captions_{suffix}.json", image_ids)
        raw[split] = _RawSplit(image_ids, file_names, labels, captions)
    assert categories is not None

    n_cat = len(categories.ids)
    rare = rare_mask(raw["train"].labels, rare_fraction)
    plural_names = plurals(categories.names)
    if class_order == "alphabetical":
        order = np.array(sorted(range(n_cat), key=lambda j: categories.names[j]), dtype=np.int64)
    else:
        order = np.arange(n_cat)

    splits: dict[str, Split] = {}
    for split, suffix in SPLITS.items():
        r = raw[split]
        keep = np.ones(len(r.image_ids), dtype=bool) if keep_empty else r.labels.any(axis=1)
        rows = np.flatnonzero(keep)
        ids = [r.image_ids[i] for i in rows]
        files = [r.file_names[i] for i in rows]
        paths = _check_images(base / suffix, split, ids, files, annotations / f"instances_{suffix}.json")
        texts = []
        for i in rows:
            image_id = r.image_ids[i]
            text = _choose(r.captions[image_id], image_id, caption, caption_seed)
            if enhanced:
                present = np.flatnonzero(r.labels[i])  # COCO-id order
                text = enhance_caption(text, [plural_names[j] for j in present], [bool(rare[j]) for j in present])
            texts.append(text)
        str_ids = tuple(str(i) for i in ids)
        splits[split] = Split(name=split, ids=str_ids, labels=np.ascontiguousarray(r.labels[rows][:, order]),
                              captions=tuple(texts), images=FileImages(paths, str_ids))
        logger.info("%s %s: %d images (%d without objects %s)", DATASET, split, len(rows),
                    int((~r.labels.any(axis=1)).sum()), "kept" if keep_empty else "dropped")

    options: dict[str, object] = {"enhanced": enhanced, "class_order": class_order, "keep_empty": keep_empty,
                                  "caption": caption}
    if caption == "random":
        options["caption_seed"] = caption_seed
    if enhanced:
        options["rare_fraction"] = rare_fraction
        options["rare_categories"] = [categories.names[j] for j in np.flatnonzero(rare)]
    return Dataset(name="coco-enhanced" if enhanced else "coco",
                   label_names=tuple(categories.names[j] for j in order), task="multilabel",
                   splits=splits, options=options)
