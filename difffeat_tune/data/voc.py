"""PASCAL VOC 2007 classification (multi-label, 20 classes), image-only.

Expected folder layout (the trainval and test archives extracted into the same folder)::

    root/VOCdevkit/VOC2007/
        ImageSets/Main/trainval.txt          one image id per line ("000005")
        ImageSets/Main/test.txt
        ImageSets/Main/<class>_trainval.txt  "<id> <flag>" per line, flag 1 / -1 / 0
        ImageSets/Main/<class>_test.txt      (0 = only difficult objects of that class)
        JPEGImages/<id>.jpg

``root`` may also be the ``VOCdevkit`` folder or the ``VOC2007`` folder itself. Splits "train"
(trainval, 5,011 images) and "test" (4,952); row ids are the image ids. Captions are ``None``.

Difficult-only entries (flag 0): papers differ (ML-GCN trains them as positives and skips them in
AP). ``difficult="ignore"`` (default) stores -1, which the metrics and the BCE loss skip, so they
neither help nor hurt; "positive" stores 1, "negative" stores 0.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Literal

import numpy as np

from difffeat_tune._errors import DataError
from difffeat_tune.data._base import IGNORE, Dataset, FileImages, Split
from difffeat_tune.data._files import (
    exists_in, list_files, missing_images_error, read_lines, require_dir, require_root,
)

logger = logging.getLogger(__name__)

DATASET = "PASCAL VOC 2007"
#: The 20 classes in the standard (VOC devkit) order.
CLASSES: tuple[str, ...] = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)
#: Split name -> VOC's image-set name.
SPLITS: tuple[tuple[str, str], ...] = (("train", "trainval"), ("test", "test"))
Difficult = Literal["ignore", "positive", "negative"]
#: Label stored for a difficult-only entry (flag 0), per ``difficult`` option.
DIFFICULT_LABEL: dict[str, int] = {"ignore": IGNORE, "positive": 1, "negative": 0}
FLAG_POSITIVE, FLAG_NEGATIVE, FLAG_DIFFICULT = 1, -1, 0
_CANDIDATES: tuple[str, ...] = ("VOCdevkit/VOC2007", "VOC2007", ".")
_HINT = ("extract VOCtrainval_06-Nov-2007.tar and VOCtest_06-Nov-2007.tar into the same folder "
         "(they both create VOCdevkit/VOC2007)")


def _find_base(root: Path) -> Path:
    for candidate in _CANDIDATES:
        base = (root / candidate).resolve() if candidate != "." else root
        if (base / "ImageSets" / "Main").is_dir():
            return base
    tried = ", ".join(str(root / c / "ImageSets" / "Main") for c in _CANDIDATES)
    raise DataError(f"{DATASET}: no ImageSets/Main folder found under {root} (tried {tried})", _HINT)


def _read_ids(path: Path) -> list[str]:
    ids: list[str] = []
    seen: set[str] = set()
    for lineno, line in read_lines(path, DATASET, _HINT):
        image_id = line.split()[0]
        if image_id in seen:
            raise DataError(f"{DATASET}: {path} line {lineno}: image id {image_id!r} is listed twice", _HINT)
        seen.add(image_id)
        ids.append(image_id)
    if not ids:
        raise DataError(f"{DATASET}: {path} lists no image", _HINT)
    return ids


def _read_class(path: Path, row: dict[str, int], labels: np.ndarray, column: int, difficult_label: int) -> int:
    """Fill one label column from ``<class>_<set>.txt``; return the number of difficult-only entries."""
    seen = np.zeros(len(row), dtype=bool)
    n_difficult = 0
    for lineno, line in read_lines(path, DATASET, _HINT):
        parts = line.split()
        if len(parts) != 2:
            raise DataError(f"{DATASET}: {path} line {lineno}: expected '<image id> <flag>', got {line!r}", _HINT)
        image_id, flag_text = parts
        try:
            flag = int(flag_text)
        except ValueError:
            flag = None
        if flag not in (FLAG_POSITIVE, FLAG_NEGATIVE, FLAG_DIFFICULT):
            raise DataError(f"{DATASET}: {path} line {lineno}: image {image_id!r} has flag {flag_text!r}, "
                            "expected 1, -1 or 0", _HINT)
        if image_id not in row:
            raise DataError(f"{DATASET}: {path} line {lineno}: image {image_id!r} is not in the split's image list",
                            "use class files and image lists from the same VOC 2007 release")
        r = row[image_id]
        seen[r] = True
        if flag == FLAG_POSITIVE:
            labels[r, column] = 1
        elif flag == FLAG_DIFFICULT:
            labels[r, column] = difficult_label
            n_difficult += 1
    if not seen.all():
        missing = next(i for i, r in row.items() if not seen[r])
        raise DataError(f"{DATASET}: {path} has no line for image {missing!r} "
                        f"({int((~seen).sum())} image(s) of the split are missing)", _HINT)
    return n_difficult


def load_voc2007(root: str | Path, *, difficult: Difficult = "ignore") -> Dataset:
    """Load PASCAL VOC 2007 classification labels and image paths (layout in the module docstring).

    Args:
        root: the folder holding ``VOCdevkit/`` (or the ``VOCdevkit`` or ``VOC2007`` folder).
        difficult: label of a class whose only objects in an image are "difficult" (flag 0):
            "ignore" (-1, skipped by the metrics and loss; default), "positive" (1) or
            "negative" (0).

    Returns:
        An image-only multi-label :class:`Dataset` named "voc2007" with splits "train" (trainval)
        and "test", label columns in the standard class order.

    Raises:
        DataError: naming the file for a missing or malformed list or class file (with the line),
            or images listed but absent from ``JPEGImages/``.
    """
    if difficult not in DIFFICULT_LABEL:
        raise DataError(f"{DATASET}: unknown difficult option {difficult!r}",
                        f"use one of {', '.join(DIFFICULT_LABEL)}")
    base = _find_base(require_root(root, DATASET))
    main = base / "ImageSets" / "Main"
    images_dir = require_dir(base / "JPEGImages", DATASET, _HINT)
    listing = list_files(images_dir)
    splits: dict[str, Split] = {}
    for split, image_set in SPLITS:
        list_path = main / f"{image_set}.txt"
        ids = _read_ids(list_path)
        row = {image_id: r for r, image_id in enumerate(ids)}
        labels = np.zeros((len(ids), len(CLASSES)), dtype=np.int8)
        n_difficult = sum(_read_class(main / f"{name}_{image_set}.txt", row, labels, c, DIFFICULT_LABEL[difficult])
                          for c, name in enumerate(CLASSES))
        files = [f"{image_id}.jpg" for image_id in ids]
        missing = [(i, images_dir / f) for i, f in zip(ids, files) if not exists_in(images_dir, f, listing)]
        if missing:
            raise missing_images_error(DATASET, missing, str(list_path), _HINT)
        splits[split] = Split(name=split, ids=tuple(ids), labels=labels, captions=None,
                              images=FileImages([str(images_dir / f) for f in files], ids))
        logger.info("%s %s: %d images, %d difficult-only entries (%s)", DATASET, split, len(ids), n_difficult,
                    difficult)
    return Dataset(name="voc2007", label_names=CLASSES, task="multilabel", splits=splits,
                   options={"difficult": difficult})
