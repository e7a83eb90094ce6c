"""Visual Genome VG500: the 500 most frequent object categories (split of Chen et al., ICCV 2019).

Expected folder layout (the SSGRL repository's ``data/VG/`` files plus the Visual Genome
images and region descriptions v1.2)::

    root/
        train_list_500.txt                  one image file name per line ("2360596.jpg")
        test_list_500.txt
        vg_category_500_labels_index.json   {"2360596.jpg": [3, 17, ...], ...}, class indices 0..499
        region_descriptions.json            [{"id": image_id, "regions": [{"phrase": ...}, ...]}, ...]
        VG_100K/2360596.jpg ...             images, split over two folders after download
        VG_100K_2/...

Splits "train" (82,904 images in the public lists) and "test" (10,000). Row ids are the file
stems ("2360596"). The caption of an image is its region phrases, in file order, joined by
". " (a trailing period of a phrase is dropped first); the paper feeds it to the text backbone
with token length 600, recorded as ``Dataset.options["recommended_token_length"]``. No class names
were ever published: columns are named "0".."499" unless ``label_names`` is given.
``region_descriptions.json`` (several GB) is streamed, not loaded whole.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from difffeat_tune._errors import DataError
from difffeat_tune.data._base import Dataset, FileImages, Split
from difffeat_tune.data._files import (
    exists_in, iter_json_array, list_files, missing_images_error, read_json, read_lines, require_root,
)

logger = logging.getLogger(__name__)

DATASET = "VG500"
NUM_CLASSES = 500
#: The paper's text token length for Visual Genome's long concatenated region descriptions.
RECOMMENDED_TOKEN_LENGTH = 600
SPLIT_LISTS: tuple[tuple[str, str], ...] = (("train", "train_list_500.txt"), ("test", "test_list_500.txt"))
LABELS_FILE = "vg_category_500_labels_index.json"
REGIONS_FILE = "region_descriptions.json"
DEFAULT_IMAGE_DIRS: tuple[str, ...] = ("VG_100K", "VG_100K_2")
PHRASE_SEPARATOR = ". "
_HINT_LISTS = "get train_list_500.txt, test_list_500.txt and vg_category_500_labels_index.json from SSGRL's data/VG/"
_HINT_REGIONS = ("download region_descriptions.json (v1.2) from the Visual Genome site, or pass captions=False "
                 "for image-only features")


def _read_label_names(label_names: Sequence[str] | str | Path | None) -> tuple[str, ...]:
    if label_names is None:
        return tuple(str(i) for i in range(NUM_CLASSES))
    if isinstance(label_names, (str, Path)):
        path = Path(label_names).expanduser()
        if path.suffix == ".json":
            names = read_json(path, DATASET)
            if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
                raise DataError(f"{DATASET}: {path} must hold a JSON list of {NUM_CLASSES} strings")
        else:
            names = [line for _, line in read_lines(path, DATASET)]
        source = str(path)
    else:
        names, source = list(label_names), "label_names"
    if len(names) != NUM_CLASSES or not all(isinstance(n, str) and n for n in names):
        raise DataError(f"{DATASET}: {source} has {len(names)} names; {NUM_CLASSES} non-empty names are needed",
                        "one name per class index 0..499, in index order")
    return tuple(names)


def _read_list(path: Path) -> list[str]:
    names = []
    seen: set[str] = set()
    for lineno, name in read_lines(path, DATASET, _HINT_LISTS):
        if name in seen:
            raise DataError(f"{DATASET}: {path} line {lineno}: image {name!r} is listed twice",
                            "re-download the original list")
        seen.add(name)
        names.append(name)
    if not names:
        raise DataError(f"{DATASET}: {path} lists no images", "re-download the original list")
    return names


def _labels(names: Sequence[str], index: dict[str, object], path: Path) -> np.ndarray:
    labels = np.zeros((len(names), NUM_CLASSES), dtype=np.int8)
    for r, name in enumerate(names):
        if name not in index:
            raise DataError(f"{DATASET}: {path} has no entry for image {name!r}",
                            "use the labels file that goes with the split lists")
        classes = index[name]
        if not isinstance(classes, list):
            raise DataError(f"{DATASET}: {path}: the entry of image {name!r} is not a list of class indices")
        for c in classes:
            if isinstance(c, bool) or not isinstance(c, int) or not 0 <= c < NUM_CLASSES:
                raise DataError(f"{DATASET}: {path}: image {name!r} has class index {c!r}, outside 0..{NUM_CLASSES - 1}",
                                "the file is corrupt or not the VG500 labels file: re-download it")
            labels[r, c] = 1
    return labels


def _image_id(name: str, listed_in: Path) -> int:
    try:
        return int(Path(name).stem)
    except ValueError:
        raise DataError(f"{DATASET}: {listed_in}: image {name!r} is not named <image id>.jpg",
                        "use the original split lists") from None


def _read_captions(path: Path, wanted: set[int]) -> dict[int, str]:
    captions: dict[int, str] = {}
    for i, record in enumerate(iter_json_array(path, DATASET, _HINT_REGIONS)):
        if not isinstance(record, dict):
            raise DataError(f"{DATASET}: {path}: element {i} is not an object", _HINT_REGIONS)
        image_id = record.get("id", record.get("image_id"))
        if image_id not in wanted:
            continue
        regions = record.get("regions")
        if not isinstance(regions, list):
            raise DataError(f"{DATASET}: {path}: image id {image_id} has no 'regions' list", _HINT_REGIONS)
        phrases = []
        for region in regions:
            phrase = region.get("phrase") if isinstance(region, dict) else None
            if not isinstance(phrase, str):
                raise DataError(f"{DATASET}: {path}: image id {image_id} has a region without a 'phrase' string",
                                _HINT_REGIONS)
            phrase = " ".join(phrase.split()).rstrip(". ").strip()
            if phrase:
                phrases.append(phrase)
        captions[image_id] = PHRASE_SEPARATOR.join(phrases)  # type: ignore[index]
    return captions


def load_vg500(root: str | Path, *, image_dirs: Sequence[str | Path] = DEFAULT_IMAGE_DIRS,
               label_names: Sequence[str] | str | Path | None = None, captions: bool = True) -> Dataset:
    """Load VG500 from local files (see the module docstring for the layout).

    Args:
        root: the folder holding the split lists, the labels file, the region descriptions and
            the image folders.
        image_dirs: the image folders, relative to ``root`` (or absolute), searched in order.
        label_names: 500 class names in index order: a list, a text file (one per line) or a
            ``.json`` list; default "0".."499".
        captions: read ``region_descriptions.json`` (default); ``False`` gives an image-only data
            set and does not need that file.

    Returns:
        A multi-label :class:`Dataset` named "vg500" with splits "train" and "test".

    Raises:
        DataError: naming the file for a missing or malformed file, an image without a labels
            entry or with a class index outside 0..499, an image absent from every image folder
            (naming the id and the folders), or an image without region descriptions.
    """
    base = require_root(root, DATASET)
    names = _read_label_names(label_names)
    labels_path = base / LABELS_FILE
    index = read_json(labels_path, DATASET, _HINT_LISTS)
    if not isinstance(index, dict):
        raise DataError(f"{DATASET}: {labels_path} must hold a JSON object (image file name -> class indices)",
                        _HINT_LISTS)
    folders = [base / d for d in image_dirs]
    listings = [list_files(f) for f in folders]
    if not any(listings):
        raise DataError(f"{DATASET}: no image folder found (or all are empty): {', '.join(map(str, folders))}",
                        "download the Visual Genome images (parts 1 and 2) and extract them into the data folder")

    lists = {split: _read_list(base / file) for split, file in SPLIT_LISTS}
    caption_of: dict[int, str] = {}
    if captions:
        ids = {_image_id(n, base / file) for split, file in SPLIT_LISTS for n in lists[split]}
        regions_path = base / REGIONS_FILE
        caption_of = _read_captions(regions_path, ids)
        missing = sorted(ids - set(caption_of))
        if missing:
            raise DataError(f"{DATASET}: {regions_path} has no region descriptions for {len(missing)} listed "
                            f"image(s), e.g. image id {missing[0]}", _HINT_REGIONS)
        empty = sum(1 for c in caption_of.values() if not c)
        if empty:
            logger.warning("%s: %d image(s) have no region phrase: their caption is empty", DATASET, empty)

    splits: dict[str, Split] = {}
    for split, file in SPLIT_LISTS:
        listed = lists[split]
        list_path = base / file
        paths: list[str] = []
        absent: list[tuple[str, str]] = []
        for name in listed:
            for folder, listing in zip(folders, listings):
                if exists_in(folder, name, listing):
                    paths.append(str(folder / name))
                    break
            else:
                absent.append((Path(name).stem, " or ".join(str(f / name) for f in folders)))
        if absent:
            raise missing_images_error(DATASET, absent, str(list_path),
                                       f"the images must be in one of {', '.join(map(str, folders))}")
        ids = tuple(Path(n).stem for n in listed)
        texts = tuple(caption_of[_image_id(n, list_path)] for n in listed) if captions else None
        splits[split] = Split(name=split, ids=ids, labels=_labels(listed, index, labels_path), captions=texts,
                              images=FileImages(paths, ids))
        logger.info("%s %s: %d images", DATASET, split, len(ids))

    options: dict[str, object] = {"recommended_token_length": RECOMMENDED_TOKEN_LENGTH, "captions": captions}
    return Dataset(name="vg500", label_names=names, task="multilabel", splits=splits, options=options)
