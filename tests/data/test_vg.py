"""VG500 loader on a tiny fixture in the exact upstream formats (SSGRL lists + VG v1.2 regions)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from difffeat_tune._errors import DataError
from difffeat_tune.data import _files
from difffeat_tune.data.vg import RECOMMENDED_TOKEN_LENGTH, load_vg500

TRAIN = {"2360596.jpg": [0, 17, 499], "107899.jpg": [3], "2.jpg": []}
TEST = {"150.jpg": [17, 42], "2417890.jpg": [5]}
IN_SECOND_FOLDER = {"2417890.jpg", "2360596.jpg"}


def _region(image_id: int, region_id: int, phrase: str) -> dict[str, object]:
    return {"region_id": region_id, "width": 10, "height": 10, "image_id": image_id, "phrase": phrase,
            "y": 1, "x": 2}


def write_vg(root: Path) -> Path:
    root.mkdir(parents=True)
    (root / "VG_100K").mkdir()
    (root / "VG_100K_2").mkdir()
    for name in [*TRAIN, *TEST]:
        folder = "VG_100K_2" if name in IN_SECOND_FOLDER else "VG_100K"
        Image.new("RGB", (6, 4), (0, 90, 0)).save(root / folder / name, format="JPEG")
    (root / "train_list_500.txt").write_text("".join(f"{n}\n" for n in TRAIN))
    (root / "test_list_500.txt").write_text("".join(f"{n}\n" for n in TEST))
    (root / "vg_category_500_labels_index.json").write_text(json.dumps({**TRAIN, **TEST}))
    regions = []
    for name in [*TRAIN, *TEST, "999.jpg"]:  # 999 is not in any list
        image_id = int(name.removesuffix(".jpg"))
        regions.append({"regions": [_region(image_id, 1, f"man wearing hat in {image_id}"),
                                    _region(image_id, 2, "  white   clouds in sky. "),
                                    _region(image_id, 3, "tree")], "id": image_id})
    (root / "region_descriptions.json").write_text(json.dumps(regions, indent=1))
    return root


@pytest.fixture
def vg_root(tmp_path: Path) -> Path:
    return write_vg(tmp_path / "vg")


def test_vg_reads_fixture(vg_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_files, "_JSON_CHUNK", 7)  # stream the regions across many chunk boundaries
    ds = load_vg500(vg_root)
    assert ds.name == "vg500" and ds.task == "multilabel"
    assert ds.label_names == tuple(str(i) for i in range(500))
    train, test = ds.split("train"), ds.split("test")
    assert train.ids == ("2360596", "107899", "2") and test.ids == ("150", "2417890")
    assert train.labels.shape == (3, 500) and train.labels.dtype == np.int8
    assert np.flatnonzero(train.labels[0]).tolist() == [0, 17, 499]
    assert not train.labels[2].any()
    assert np.flatnonzero(test.labels[0]).tolist() == [17, 42]
    assert train.captions[1] == "man wearing hat in 107899. white clouds in sky. tree"
    assert ds.options["recommended_token_length"] == RECOMMENDED_TOKEN_LENGTH == 600
    assert train.images.load(0).size == (6, 4)  # found in VG_100K_2
    assert train.images.load(1).size == (6, 4)  # found in VG_100K


def test_vg_label_names_and_image_only(vg_root: Path) -> None:
    names = [f"class {i}" for i in range(500)]
    (vg_root / "names.txt").write_text("\n".join(names) + "\n")
    (vg_root / "region_descriptions.json").unlink()
    ds = load_vg500(vg_root, label_names=vg_root / "names.txt", captions=False)
    assert ds.label_names[499] == "class 499" and ds.split("train").captions is None
    assert load_vg500(vg_root, label_names=names, captions=False).label_names == tuple(names)
    with pytest.raises(DataError, match="3 names; 500"):
        load_vg500(vg_root, label_names=["a", "b", "c"], captions=False)
    with pytest.raises(DataError, match="region_descriptions.json is missing"):
        load_vg500(vg_root)


def test_vg_index_out_of_range_names_file_and_image(vg_root: Path) -> None:
    path = vg_root / "vg_category_500_labels_index.json"
    path.write_text(json.dumps({**TRAIN, **TEST, "150.jpg": [17, 500]}))
    with pytest.raises(DataError) as err:
        load_vg500(vg_root, captions=False)
    assert "vg_category_500_labels_index.json" in str(err.value) and "'150.jpg'" in str(err.value)
    assert "500" in str(err.value)


def test_vg_missing_labels_entry_and_missing_file(vg_root: Path) -> None:
    path = vg_root / "vg_category_500_labels_index.json"
    path.write_text(json.dumps(TRAIN))
    with pytest.raises(DataError, match="no entry for image '150.jpg'"):
        load_vg500(vg_root, captions=False)
    (vg_root / "test_list_500.txt").unlink()
    with pytest.raises(DataError, match="test_list_500.txt is missing"):
        load_vg500(vg_root, captions=False)


def test_vg_absent_image_names_id_and_both_folders(vg_root: Path) -> None:
    (vg_root / "VG_100K" / "150.jpg").unlink()
    with pytest.raises(DataError) as err:
        load_vg500(vg_root, captions=False)
    message = str(err.value)
    assert "'150'" in message and "test_list_500.txt" in message
    assert str(vg_root / "VG_100K" / "150.jpg") in message and str(vg_root / "VG_100K_2" / "150.jpg") in message


def test_vg_malformed_regions_json(vg_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_files, "_JSON_CHUNK", 64)
    path = vg_root / "region_descriptions.json"
    text = path.read_text()
    path.write_text(text[: len(text) // 2])
    with pytest.raises(DataError, match="region_descriptions.json is not a valid JSON array"):
        load_vg500(vg_root)
    path.write_text(json.dumps([{"id": 107899, "regions": []}]))
    with pytest.raises(DataError, match="no region descriptions for 4 listed image"):
        load_vg500(vg_root)
