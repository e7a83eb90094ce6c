"""Tiny-ImageNet-200 loader on a tiny fixture in the exact upstream layout."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from difffeat_tune._errors import DataError
from difffeat_tune.data.tinyimagenet import load_tiny_imagenet

WNIDS = ("n01443537", "n01629819", "n01641577")
WORDS = {
    "n00001740": "entity",
    "n01443537": "goldfish, Carassius auratus",
    "n01629819": "European fire salamander, Salamandra salamandra",
    "n01641577": "goldfish, a second one",  # same first name as another class
}
TRAIN_COUNTS = {"n01443537": 3, "n01629819": 11, "n01641577": 1}
VAL = (("val_0.JPEG", "n01629819"), ("val_1.JPEG", "n01443537"), ("val_2.JPEG", "n01629819"))


def _image(path: Path, mode: str = "RGB") -> None:
    Image.new(mode, (4, 4), 128 if mode == "L" else (1, 2, 3)).save(path, format="JPEG")


def write_tiny(root: Path) -> Path:
    base = root / "tiny-imagenet-200"
    base.mkdir(parents=True)
    (base / "wnids.txt").write_text("".join(f"{w}\n" for w in WNIDS))
    (base / "words.txt").write_text("".join(f"{w}\t{t}\n" for w, t in WORDS.items()))
    for wnid, n in TRAIN_COUNTS.items():
        folder = base / "train" / wnid / "images"
        folder.mkdir(parents=True)
        for k in range(n):
            _image(folder / f"{wnid}_{k}.JPEG", "L" if k == 0 else "RGB")  # some originals are greyscale
        (base / "train" / wnid / f"{wnid}_boxes.txt").write_text(f"{wnid}_0.JPEG\t0\t0\t3\t3\n")
    (base / "val" / "images").mkdir(parents=True)
    for file_name, _ in VAL:
        _image(base / "val" / "images" / file_name)
    (base / "val" / "val_annotations.txt").write_text(
        "".join(f"{f}\t{w}\t0\t1\t2\t3\n" for f, w in VAL))
    (base / "test" / "images").mkdir(parents=True)
    _image(base / "test" / "images" / "test_0.JPEG")
    return base


def test_tiny_imagenet_reads_fixture(tmp_path: Path) -> None:
    base = write_tiny(tmp_path)
    ds = load_tiny_imagenet(base)
    assert ds.name == "tiny-imagenet" and ds.task == "singlelabel" and set(ds.splits) == {"train", "val"}
    assert ds.label_names == ("goldfish (n01443537)", "European fire salamander", "goldfish (n01641577)")
    train, val = ds.split("train"), ds.split("val")
    assert len(train) == sum(TRAIN_COUNTS.values())
    # Class order from wnids.txt, then natural order of the image number.
    assert train.ids[:5] == ("n01443537_0", "n01443537_1", "n01443537_2", "n01629819_0", "n01629819_1")
    assert train.ids[3 + 10] == "n01629819_10"
    assert train.labels.dtype == np.int8 and (train.labels.sum(axis=1) == 1).all()
    assert train.labels.argmax(axis=1).tolist() == [0] * 3 + [1] * 11 + [2]
    assert val.ids == ("val_0", "val_1", "val_2")
    assert val.labels.argmax(axis=1).tolist() == [1, 0, 1]
    assert train.images.load(0).mode == "RGB"  # a greyscale original comes back as RGB
    assert train.captions is None
    # The parent folder is accepted too.
    assert load_tiny_imagenet(tmp_path).split("val").ids == val.ids


def test_tiny_imagenet_unknown_wnid_in_val(tmp_path: Path) -> None:
    base = write_tiny(tmp_path)
    (base / "val" / "val_annotations.txt").write_text("val_0.JPEG\tn01629819\t0\t1\t2\t3\n"
                                                      "val_1.JPEG\tn99999999\t0\t1\t2\t3\n")
    with pytest.raises(DataError, match=r"val_annotations.txt line 2: image 'val_1.JPEG' has class 'n99999999'"):
        load_tiny_imagenet(base)


def test_tiny_imagenet_missing_files(tmp_path: Path) -> None:
    base = write_tiny(tmp_path)
    (base / "val" / "images" / "val_2.JPEG").unlink()
    with pytest.raises(DataError, match=r"id 'val_2': .*val_2\.JPEG"):
        load_tiny_imagenet(base)
    (base / "wnids.txt").unlink()
    with pytest.raises(DataError, match="wnids.txt is missing"):
        load_tiny_imagenet(base)


def test_tiny_imagenet_empty_class_folder(tmp_path: Path) -> None:
    base = write_tiny(tmp_path)
    for f in (base / "train" / "n01641577" / "images").iterdir():
        f.unlink()
    with pytest.raises(DataError, match=r"n01641577/images holds no \.JPEG image"):
        load_tiny_imagenet(base)
