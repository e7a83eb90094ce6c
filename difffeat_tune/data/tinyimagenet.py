"""Tiny-ImageNet-200 (single-label, 200 classes), image-only.

Expected folder layout (``tiny-imagenet-200.zip`` extracted)::

    root/
        wnids.txt                        the 200 WordNet ids, one per line (the class order)
        words.txt                        "<wnid>\\t<names, comma separated>" for all of WordNet
        train/<wnid>/images/<wnid>_<k>.JPEG
        val/images/val_<k>.JPEG
        val/val_annotations.txt          "<file>\\t<wnid>\\t<x0>\\t<y0>\\t<x1>\\t<y1>" per line

``root`` may also be the folder holding ``tiny-imagenet-200/``. Splits "train" (100,000 images)
and "val" (10,000; used as the evaluation split, since the test split is unlabelled and is
skipped). Row ids are the file stems ("n01443537_0", "val_0"); training rows are ordered by class
(``wnids.txt`` order) then by image number, validation rows as in ``val_annotations.txt``. Class
names are the first name of each WordNet entry ("goldfish"), made unique with the wnid when two
classes share it; a wnid missing from ``words.txt`` is named by its wnid.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import numpy as np

from difffeat_tune._errors import DataError
from difffeat_tune.data._base import Dataset, FileImages, Split
from difffeat_tune.data._files import (
    exists_in, list_files, missing_images_error, read_lines, require_dir, require_root,
)

logger = logging.getLogger(__name__)

DATASET = "Tiny-ImageNet-200"
FOLDER = "tiny-imagenet-200"
IMAGE_SUFFIX = ".JPEG"
_HINT = "download tiny-imagenet-200.zip and extract it into the data folder"
_DIGITS = re.compile(r"(\d+)")


def _natural_key(name: str) -> list[object]:
    return [int(part) if part.isdigit() else part for part in _DIGITS.split(name)]


def _class_names(path: Path, wnids: list[str]) -> tuple[str, ...]:
    wanted = set(wnids)
    words: dict[str, str] = {}
    for lineno, line in read_lines(path, DATASET, _HINT):
        wnid, _, text = line.partition("\t")
        if not text:
            raise DataError(f"{DATASET}: {path} line {lineno}: expected '<wnid>\\t<names>', got {line!r}", _HINT)
        if wnid in wanted:
            words[wnid] = text.split(",")[0].strip() or wnid
    absent = [w for w in wnids if w not in words]
    if absent:
        logger.warning("%s: %d class(es) have no entry in %s (e.g. %s): named by their wnid", DATASET, len(absent),
                       path, absent[0])
    first = [words.get(w, w) for w in wnids]
    counts: dict[str, int] = {}
    for name in first:
        counts[name] = counts.get(name, 0) + 1
    return tuple(name if counts[name] == 1 else f"{name} ({wnid})" for name, wnid in zip(first, wnids))


def load_tiny_imagenet(root: str | Path) -> Dataset:
    """Load Tiny-ImageNet-200's labelled splits (layout in the module docstring).

    Args:
        root: the ``tiny-imagenet-200`` folder (or its parent).

    Returns:
        An image-only single-label :class:`Dataset` named "tiny-imagenet" with splits "train" and
        "val".

    Raises:
        DataError: naming the file for a missing or malformed ``wnids.txt``, ``words.txt`` or
            ``val_annotations.txt`` (with the line), a missing or empty class folder, a validation
            image of an unknown class, or images listed but absent.
    """
    base = require_root(root, DATASET)
    if not (base / "wnids.txt").exists() and (base / FOLDER).is_dir():
        base = base / FOLDER
    wnids_path = base / "wnids.txt"
    wnids: list[str] = []
    for lineno, wnid in read_lines(wnids_path, DATASET, _HINT):
        if wnid in wnids:
            raise DataError(f"{DATASET}: {wnids_path} line {lineno}: wnid {wnid!r} is listed twice", _HINT)
        wnids.append(wnid)
    if not wnids:
        raise DataError(f"{DATASET}: {wnids_path} lists no class", _HINT)
    column = {w: c for c, w in enumerate(wnids)}
    names = _class_names(base / "words.txt", wnids)

    # Train: every image of every class folder.
    train_paths: list[str] = []
    train_ids: list[str] = []
    train_cls: list[int] = []
    for c, wnid in enumerate(wnids):
        folder = require_dir(base / "train" / wnid / "images", DATASET, _HINT)
        files = sorted((f for f in list_files(folder) if f.endswith(IMAGE_SUFFIX)), key=_natural_key)
        if not files:
            raise DataError(f"{DATASET}: class folder {folder} holds no {IMAGE_SUFFIX} image", _HINT)
        train_paths += [str(folder / f) for f in files]
        train_ids += [f[: -len(IMAGE_SUFFIX)] for f in files]
        train_cls += [c] * len(files)

    # Val: as listed in val_annotations.txt.
    val_dir = base / "val"
    ann_path = val_dir / "val_annotations.txt"
    images_dir = require_dir(val_dir / "images", DATASET, _HINT)
    listing = list_files(images_dir)
    val_paths: list[str] = []
    val_ids: list[str] = []
    val_cls: list[int] = []
    missing: list[tuple[str, Path]] = []
    for lineno, line in read_lines(ann_path, DATASET, _HINT):
        parts = line.split("\t")
        if len(parts) < 2:
            parts = line.split()
        if len(parts) < 2:
            raise DataError(f"{DATASET}: {ann_path} line {lineno}: expected '<file>\\t<wnid>\\t<box>', got {line!r}",
                            _HINT)
        file_name, wnid = parts[0].strip(), parts[1].strip()
        if wnid not in column:
            raise DataError(f"{DATASET}: {ann_path} line {lineno}: image {file_name!r} has class {wnid!r}, "
                            f"which is not in {wnids_path}", _HINT)
        image_id = Path(file_name).stem
        if not exists_in(images_dir, file_name, listing):
            missing.append((image_id, images_dir / file_name))
        val_paths.append(str(images_dir / file_name))
        val_ids.append(image_id)
        val_cls.append(column[wnid])
    if missing:
        raise missing_images_error(DATASET, missing, str(ann_path), _HINT)
    if not val_ids:
        raise DataError(f"{DATASET}: {ann_path} lists no image", _HINT)

    splits: dict[str, Split] = {}
    for split, ids, paths, cls in (("train", train_ids, train_paths, train_cls), ("val", val_ids, val_paths, val_cls)):
        labels = np.zeros((len(ids), len(wnids)), dtype=np.int8)
        labels[np.arange(len(ids)), cls] = 1
        splits[split] = Split(name=split, ids=tuple(ids), labels=labels, captions=None,
                              images=FileImages(paths, ids))
        logger.info("%s %s: %d images", DATASET, split, len(ids))
    return Dataset(name="tiny-imagenet", label_names=names, task="singlelabel", splits=splits)
