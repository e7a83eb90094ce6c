"""MS-COCO 2014 loader on a tiny fixture in the exact upstream layout and JSON formats."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from difffeat_tune._errors import DataError
from difffeat_tune.data._enhance import ALSO_SENTENCE, RARE_SENTENCE, enhance_caption, plurals
from difffeat_tune.data.coco import load_coco

#: The 80 COCO 2014 categories (id, name), as in instances_*2014.json.
COCO_CATEGORIES = [
    (1, "person"), (2, "bicycle"), (3, "car"), (4, "motorcycle"), (5, "airplane"), (6, "bus"), (7, "train"),
    (8, "truck"), (9, "boat"), (10, "traffic light"), (11, "fire hydrant"), (13, "stop sign"),
    (14, "parking meter"), (15, "bench"), (16, "bird"), (17, "cat"), (18, "dog"), (19, "horse"), (20, "sheep"),
    (21, "cow"), (22, "elephant"), (23, "bear"), (24, "zebra"), (25, "giraffe"), (27, "backpack"),
    (28, "umbrella"), (31, "handbag"), (32, "tie"), (33, "suitcase"), (34, "frisbee"), (35, "skis"),
    (36, "snowboard"), (37, "sports ball"), (38, "kite"), (39, "baseball bat"), (40, "baseball glove"),
    (41, "skateboard"), (42, "surfboard"), (43, "tennis racket"), (44, "bottle"), (46, "wine glass"),
    (47, "cup"), (48, "fork"), (49, "knife"), (50, "spoon"), (51, "bowl"), (52, "banana"), (53, "apple"),
    (54, "sandwich"), (55, "orange"), (56, "broccoli"), (57, "carrot"), (58, "hot dog"), (59, "pizza"),
    (60, "donut"), (61, "cake"), (62, "chair"), (63, "couch"), (64, "potted plant"), (65, "bed"),
    (67, "dining table"), (70, "toilet"), (72, "tv"), (73, "laptop"), (74, "mouse"), (75, "remote"),
    (76, "keyboard"), (77, "cell phone"), (78, "microwave"), (79, "oven"), (80, "toaster"), (81, "sink"),
    (82, "refrigerator"), (84, "book"), (85, "clock"), (86, "vase"), (87, "scissors"), (88, "teddy bear"),
    (89, "hair drier"), (90, "toothbrush"),
]
CAT = {name: cid for cid, name in COCO_CATEGORIES}
N_TRAIN = 120  # > 100 so that one image in 120 (0.83%) is under the 1% "rare" threshold
EMPTY_TRAIN = (7, 8)  # training images without any object
#: Categories of the other training images (cycled), so that these are not rare.
FILLER_LABELS = (["person"], ["person", "chair", "bottle"], ["sheep", "skis", "scissors", "dining table"],
                 ["mouse", "tv"])
#: Training image id -> its categories (others: FILLER_LABELS, or nothing for EMPTY_TRAIN).
TRAIN_LABELS = {
    1: ["person", "chair", "bottle"],
    2: ["sheep", "skis", "scissors"],
    3: ["hair drier", "dining table"],  # hair drier: the only training image -> rare
    4: ["toaster", "person"],
    5: ["toaster"],  # toaster: 2 of 120 images = 1.7% -> not rare
    6: ["mouse", "tv"],
}
VAL_LABELS = {1001: ["hair drier", "person"], 1002: [], 1003: ["cat"]}


def _jpeg() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 30, 30)).save(buf, format="JPEG")
    return buf.getvalue()


def _file_name(suffix: str, image_id: int) -> str:
    return f"COCO_{suffix}_{image_id:012d}.jpg"


def _train_labels() -> dict[int, list[str]]:
    labels = {}
    for image_id in range(1, N_TRAIN + 1):
        filler = [] if image_id in EMPTY_TRAIN else FILLER_LABELS[image_id % len(FILLER_LABELS)]
        labels[image_id] = TRAIN_LABELS.get(image_id, filler)
    return labels


def write_coco(root: Path) -> Path:
    """A COCO 2014 folder: instances + captions JSON and 8 x 8 JPEGs in the upstream layout."""
    jpeg = _jpeg()
    (root / "annotations").mkdir(parents=True)
    for suffix, labels in (("train2014", _train_labels()), ("val2014", VAL_LABELS)):
        (root / suffix).mkdir()
        images, instances, captions = [], [], []
        ann_id = 100
        for image_id, names in labels.items():
            name = _file_name(suffix, image_id)
            (root / suffix / name).write_bytes(jpeg)
            images.append({"license": 1, "file_name": name, "coco_url": "", "height": 8, "width": 8,
                           "date_captured": "2013-11-14 16:28:13", "flickr_url": "", "id": image_id})
            for n in names:
                ann_id += 1
                instances.append({"segmentation": [[0, 0, 1, 0, 1, 1]], "area": 1.0, "iscrowd": 0,
                                  "image_id": image_id, "bbox": [0, 0, 1, 1], "category_id": CAT[n], "id": ann_id})
            # Two captions, the lower annotation id listed second (COCO does not sort them).
            captions.append({"image_id": image_id, "id": 50_000 + image_id, "caption": f"Second caption of {image_id}"})
            captions.append({"image_id": image_id, "id": 10_000 + image_id,
                             "caption": f"A photo  of image {image_id}\n "})
        info = {"description": "COCO 2014 Dataset", "year": 2014}
        categories = [{"supercategory": "x", "id": cid, "name": name} for cid, name in COCO_CATEGORIES]
        (root / "annotations" / f"instances_{suffix}.json").write_text(json.dumps(
            {"info": info, "images": images, "licenses": [], "annotations": instances, "categories": categories}))
        (root / "annotations" / f"captions_{suffix}.json").write_text(json.dumps(
            {"info": info, "images": images, "licenses": [], "annotations": captions}))
    return root


@pytest.fixture
def coco_root(tmp_path: Path) -> Path:
    return write_coco(tmp_path / "coco")


def _row(ds, split: str, image_id: int) -> int:  # type: ignore[no-untyped-def]
    return ds.split(split).ids.index(str(image_id))


def _positives(ds, split: str, image_id: int) -> set[str]:  # type: ignore[no-untyped-def]
    labels = ds.split(split).labels[_row(ds, split, image_id)]
    return {ds.label_names[j] for j in np.flatnonzero(labels == 1)}


def test_coco_defaults_are_query2label(coco_root: Path) -> None:
    ds = load_coco(coco_root)
    assert ds.name == "coco-enhanced" and ds.task == "multilabel"
    assert ds.label_names == tuple(name for _, name in COCO_CATEGORIES)
    assert ds.label_names[0] == "person" and ds.label_names[-1] == "toothbrush" and len(ds.label_names) == 80
    train, val = ds.split("train"), ds.split("val")
    assert train.ids == tuple(str(i) for i in range(1, N_TRAIN + 1))  # empty images kept, sorted by id
    assert val.ids == ("1001", "1002", "1003")
    assert train.labels.dtype == np.int8 and train.labels.shape == (N_TRAIN, 80)
    assert not train.labels[_row(ds, "train", 7)].any()
    assert _positives(ds, "train", 1) == {"person", "chair", "bottle"}
    assert _positives(ds, "val", 1001) == {"hair drier", "person"}
    assert ds.options["keep_empty"] is True and ds.options["class_order"] == "coco-id"
    assert ds.options["caption"] == "first" and ds.options["enhanced"] is True
    img = train.images.load(0)
    assert img.size == (8, 8) and img.mode == "RGB"


def test_coco_mlgcn_options_drop_empty_and_sort_alphabetically(coco_root: Path) -> None:
    ds = load_coco(coco_root, keep_empty=False, class_order="alphabetical")
    assert list(ds.label_names) == sorted(name for _, name in COCO_CATEGORIES)
    assert ds.label_names[0] == "airplane"
    train = ds.split("train")
    assert len(train) == N_TRAIN - len(EMPTY_TRAIN) and "7" not in train.ids and "8" not in train.ids
    assert ds.split("val").ids == ("1001", "1003")
    assert _positives(ds, "train", 2) == {"sheep", "skis", "scissors"}
    assert train.labels.any(axis=1).all()
    assert ds.options["keep_empty"] is False and ds.options["class_order"] == "alphabetical"
    # The captions do not depend on the column order.
    q2l = load_coco(coco_root)
    assert train.captions[train.ids.index("1")] == q2l.split("train").captions[0]
    assert ds.fingerprint() != q2l.fingerprint()


def test_coco_enhanced_captions_plural_irregular_multiword_and_rare(coco_root: Path) -> None:
    ds = load_coco(coco_root)
    cap = dict(zip(ds.split("train").ids, ds.split("train").captions))
    val_cap = dict(zip(ds.split("val").ids, ds.split("val").captions))
    # First caption = lowest annotation id (listed second in the file); whitespace cleaned; period added.
    assert cap["1"] == "A photo of image 1. In this photo, there are also some people, bottles, chairs."
    assert cap["2"] == "A photo of image 2. In this photo, there are also some sheep, skis, scissors."
    assert cap["6"] == "A photo of image 6. In this photo, there are also some TVs, mice."
    assert cap["3"] == ("A photo of image 3. In this photo, there are also some dining tables, hair driers. "
                        "In the photo's subtle background, you can also spot some hair driers.")
    assert cap["5"] == "A photo of image 5. In this photo, there are also some toasters."  # 2/120: not rare
    assert cap["7"] == "A photo of image 7"  # no object: nothing appended
    # Rarity comes from the training split and applies to val captions too.
    assert val_cap["1001"].endswith("some people, hair driers. In the photo's subtle background, you can "
                                    "also spot some hair driers.")
    rare = ds.options["rare_categories"]
    assert "hair drier" in rare and "toaster" not in rare and "person" not in rare
    assert ds.options["rare_fraction"] == 0.01


def test_coco_plain_captions_and_caption_choices(coco_root: Path) -> None:
    plain = load_coco(coco_root, enhanced=False)
    assert plain.name == "coco" and "rare_categories" not in plain.options
    assert plain.split("train").captions[0] == "A photo of image 1"
    both = load_coco(coco_root, enhanced=False, caption="all")
    assert both.split("train").captions[0] == "A photo of image 1. Second caption of 1."
    r1 = load_coco(coco_root, enhanced=False, caption="random", caption_seed=1)
    again = load_coco(coco_root, enhanced=False, caption="random", caption_seed=1)
    assert r1.split("train").captions == again.split("train").captions
    assert set(r1.split("train").captions[:20]) <= {f"A photo of image {i}" for i in range(1, 21)} | {
        f"Second caption of {i}" for i in range(1, 21)}
    assert any(c.startswith("Second") for c in r1.split("train").captions)
    assert any(c.startswith("A photo") for c in r1.split("train").captions)
    assert r1.options["caption_seed"] == 1 and "caption_seed" not in plain.options


def test_plural_override_table_and_enhance_helper() -> None:
    assert plurals(["person", "skis", "scissors", "sheep", "mouse", "hair drier", "traffic light", "knife",
                    "bus", "wine glass", "broccoli"]) == [
        "people", "skis", "scissors", "sheep", "mice", "hair driers", "traffic lights", "knives", "buses",
        "wine glasses", "broccoli"]
    assert enhance_caption("A cat!", ["cats"], [False]) == "A cat! " + ALSO_SENTENCE.format("cats")
    assert enhance_caption("x", ["a", "b"], [True, True]).endswith(RARE_SENTENCE.format("a, b"))


def test_coco_missing_annotation_file_names_it(coco_root: Path) -> None:
    path = coco_root / "annotations" / "captions_val2014.json"
    path.unlink()
    with pytest.raises(DataError, match="captions_val2014.json is missing"):
        load_coco(coco_root)


def test_coco_malformed_json_names_the_file(coco_root: Path) -> None:
    path = coco_root / "annotations" / "instances_train2014.json"
    path.write_text(path.read_text()[:500])
    with pytest.raises(DataError, match=r"instances_train2014\.json is not valid JSON"):
        load_coco(coco_root)


def test_coco_image_listed_but_absent_names_id_and_path(coco_root: Path) -> None:
    (coco_root / "val2014" / _file_name("val2014", 1003)).unlink()
    with pytest.raises(DataError) as err:
        load_coco(coco_root)
    assert "'1003'" in str(err.value) and "COCO_val2014_000000001003.jpg" in str(err.value)
    # ... but a dropped empty image may be absent under the ML-GCN protocol.
    (coco_root / "val2014" / _file_name("val2014", 1002)).unlink()
    with pytest.raises(DataError, match="1003"):
        load_coco(coco_root, keep_empty=False)


def test_coco_unknown_category_and_missing_caption(coco_root: Path) -> None:
    path = coco_root / "annotations" / "instances_val2014.json"
    data = json.loads(path.read_text())
    data["annotations"][0]["category_id"] = 12  # one of COCO's gaps
    path.write_text(json.dumps(data))
    with pytest.raises(DataError, match=r"instances_val2014\.json: annotations\[0\] \(image id 1001\) has "
                                        r"category_id 12"):
        load_coco(coco_root)
    data["annotations"][0]["category_id"] = CAT["cat"]
    path.write_text(json.dumps(data))
    cap_path = coco_root / "annotations" / "captions_val2014.json"
    caps = json.loads(cap_path.read_text())
    caps["annotations"] = [a for a in caps["annotations"] if a["image_id"] != 1003]
    cap_path.write_text(json.dumps(caps))
    with pytest.raises(DataError, match="no caption .* image id 1003"):
        load_coco(coco_root)


def test_coco_bad_option_and_missing_root(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="class_order"):
        load_coco(tmp_path, class_order="size")  # type: ignore[arg-type]
    with pytest.raises(DataError, match="does not exist"):
        load_coco(tmp_path / "nowhere")
