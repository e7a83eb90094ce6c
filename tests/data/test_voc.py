"""PASCAL VOC 2007 loader on a tiny fixture in the exact VOCdevkit layout."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from difffeat_tune._errors import DataError
from difffeat_tune.data.voc import CLASSES, load_voc2007

TRAINVAL = ("000005", "000007", "000009")
TEST = ("000001", "000002")
#: (split, image id, class) -> flag; every other entry is -1.
FLAGS = {
    ("trainval", "000005", "chair"): 1,
    ("trainval", "000005", "pottedplant"): 0,  # only difficult objects
    ("trainval", "000007", "car"): 1,
    ("trainval", "000009", "horse"): 1,
    ("trainval", "000009", "person"): 1,
    ("test", "000001", "dog"): 1,
    ("test", "000001", "person"): 1,
    ("test", "000002", "train"): 0,
    ("test", "000002", "tvmonitor"): 1,
}


def write_voc(root: Path) -> Path:
    base = root / "VOCdevkit" / "VOC2007"
    main = base / "ImageSets" / "Main"
    main.mkdir(parents=True)
    (base / "JPEGImages").mkdir()
    for image_id in TRAINVAL + TEST:
        Image.new("RGB", (5, 7), (10, 20, 30)).save(base / "JPEGImages" / f"{image_id}.jpg", format="JPEG")
    for image_set, ids in (("trainval", TRAINVAL), ("test", TEST)):
        (main / f"{image_set}.txt").write_text("".join(f"{i}\n" for i in ids))
        for cls in CLASSES:
            lines = []
            for i in ids:
                flag = FLAGS.get((image_set, i, cls), -1)
                # Upstream pads the flag to width 2 ("000005 -1", "000007  1"); vary the whitespace.
                lines.append(f"{i} {flag:2d}" if cls != "cat" else f"{i}\t{flag}")
            (main / f"{cls}_{image_set}.txt").write_text("\n".join(lines) + "\n")
    return root


@pytest.fixture
def voc_root(tmp_path: Path) -> Path:
    return write_voc(tmp_path / "voc")


def _positives(ds, split: str, image_id: str, value: int = 1) -> set[str]:  # type: ignore[no-untyped-def]
    s = ds.split(split)
    row = s.labels[s.ids.index(image_id)]
    return {ds.label_names[j] for j in np.flatnonzero(row == value)}


def test_voc_reads_fixture(voc_root: Path) -> None:
    ds = load_voc2007(voc_root)
    assert ds.name == "voc2007" and ds.task == "multilabel"
    assert ds.label_names == CLASSES and ds.label_names[0] == "aeroplane" and ds.label_names[-1] == "tvmonitor"
    train, test = ds.split("train"), ds.split("test")
    assert train.ids == TRAINVAL and test.ids == TEST
    assert train.labels.shape == (3, 20) and train.labels.dtype == np.int8
    assert _positives(ds, "train", "000005") == {"chair"}
    assert _positives(ds, "train", "000009") == {"horse", "person"}
    assert _positives(ds, "test", "000001") == {"dog", "person"}
    assert train.captions is None and not ds.has_text
    assert train.images.load(0).size == (5, 7)


def test_voc_difficult_options(voc_root: Path) -> None:
    ignore = load_voc2007(voc_root)
    assert ignore.options == {"difficult": "ignore"}
    assert _positives(ignore, "train", "000005", -1) == {"pottedplant"}
    assert _positives(ignore, "test", "000002", -1) == {"train"}
    positive = load_voc2007(voc_root, difficult="positive")
    assert _positives(positive, "train", "000005") == {"chair", "pottedplant"}
    assert (positive.split("train").labels >= 0).all()
    negative = load_voc2007(voc_root, difficult="negative")
    assert _positives(negative, "train", "000005") == {"chair"}
    assert (negative.split("test").labels >= 0).all()
    assert len({ignore.fingerprint(), positive.fingerprint(), negative.fingerprint()}) == 3
    with pytest.raises(DataError, match="difficult"):
        load_voc2007(voc_root, difficult="skip")  # type: ignore[arg-type]


def test_voc_accepts_devkit_or_voc2007_folder(voc_root: Path) -> None:
    assert load_voc2007(voc_root / "VOCdevkit").split("test").ids == TEST
    assert load_voc2007(voc_root / "VOCdevkit" / "VOC2007").split("test").ids == TEST
    with pytest.raises(DataError, match="no ImageSets/Main folder"):
        load_voc2007(voc_root / "VOCdevkit" / "VOC2007" / "JPEGImages")


def test_voc_missing_class_file_names_it(voc_root: Path) -> None:
    path = voc_root / "VOCdevkit" / "VOC2007" / "ImageSets" / "Main" / "sofa_test.txt"
    path.unlink()
    with pytest.raises(DataError) as err:
        load_voc2007(voc_root)
    assert str(path) in str(err.value) and "missing" in str(err.value)


def test_voc_malformed_flag_and_incomplete_class_file(voc_root: Path) -> None:
    path = voc_root / "VOCdevkit" / "VOC2007" / "ImageSets" / "Main" / "bird_trainval.txt"
    path.write_text("000005 -1\n000007 2\n000009 -1\n")
    with pytest.raises(DataError, match=r"bird_trainval.txt line 2: image '000007' has flag '2'"):
        load_voc2007(voc_root)
    path.write_text("000005 -1\n000009 -1\n")
    with pytest.raises(DataError, match=r"bird_trainval.txt has no line for image '000007'"):
        load_voc2007(voc_root)


def test_voc_image_listed_but_absent(voc_root: Path) -> None:
    (voc_root / "VOCdevkit" / "VOC2007" / "JPEGImages" / "000002.jpg").unlink()
    with pytest.raises(DataError, match=r"id '000002': .*000002\.jpg"):
        load_voc2007(voc_root)
