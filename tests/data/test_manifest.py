"""Users' manifests: JSONL, CSV, Parquet and imagefolder folders, and every validation error."""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from difffeat_tune._errors import DataError
from difffeat_tune.data import load_dataset, load_manifest

ROWS = [
    {"file_name": "img/a.png", "text": "a cat on a mat", "labels": ["cat"], "split": "train"},
    {"file_name": "img/b.png", "text": "a dog and a cat", "labels": ["dog", "cat"], "split": "train"},
    {"file_name": "img/c.png", "text": "an empty room", "labels": [], "split": "val"},
    {"file_name": "img/d.png", "text": "a bird", "labels": ["bird"], "split": "test"},
]


def _images(folder: Path, rows: list[dict]) -> None:
    for i, row in enumerate(rows):
        if "file_name" in row:
            path = folder / row["file_name"]
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (8, 8), (i * 40, 0, 0)).save(path)


def _jsonl(path: Path, rows: list[dict], images: bool = True) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    if images:
        _images(path.parent, rows)
    return path


def _csv(path: Path, rows: list[dict]) -> Path:
    columns = list(dict.fromkeys(k for r in rows for k in r))
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, columns)
        writer.writeheader()
        for r in rows:
            writer.writerow({k: "|".join(v) if isinstance(v, list) else v for k, v in r.items()})
    _images(path.parent, rows)
    return path


def _error(excinfo: pytest.ExceptionInfo[DataError]) -> str:
    return str(excinfo.value)


# ----------------------------------------------------------------------------- happy paths


def test_jsonl_manifest_gives_splits_labels_captions_and_images(tmp_path):
    data = load_manifest(_jsonl(tmp_path / "data.jsonl", ROWS))
    assert data.name == "data" and data.task == "multilabel"
    assert data.label_names == ("bird", "cat", "dog")  # sorted union
    assert list(data.splits) == ["train", "val", "test"]
    train = data.split("train")
    assert train.ids == ("img/a.png", "img/b.png")
    assert train.labels.dtype == np.int8 and train.labels.tolist() == [[0, 1, 0], [0, 1, 1]]
    assert train.captions == ("a cat on a mat", "a dog and a cat")
    assert data.split("val").labels.tolist() == [[0, 0, 0]]  # an example without labels
    assert train.images.load(1).size == (8, 8)


def test_csv_manifest_reads_pipe_separated_labels(tmp_path):
    data = load_manifest(_csv(tmp_path / "data.csv", ROWS))
    assert data.split("train").labels.tolist() == [[0, 1, 0], [0, 1, 1]]
    assert data.split("val").labels.tolist() == [[0, 0, 0]]


def test_parquet_manifest_reads_list_labels(tmp_path):
    path = tmp_path / "data.parquet"
    pq.write_table(pa.Table.from_pylist(ROWS), path)
    _images(tmp_path, ROWS)
    data = load_manifest(path)
    assert data.split("train").labels.tolist() == [[0, 1, 0], [0, 1, 1]]
    assert data.split("test").captions == ("a bird",)


def test_imagefolder_folder_loads_its_metadata_and_classes_txt_fixes_the_order(tmp_path):
    folder = tmp_path / "my-data"
    _jsonl(folder / "metadata.jsonl", ROWS)
    (folder / "classes.txt").write_text("dog\ncat\n\nbird\nfish\n")
    data = load_manifest(folder)
    assert data.name == "my-data"
    assert data.label_names == ("dog", "cat", "bird", "fish")
    assert data.split("train").labels.tolist() == [[0, 1, 0, 0], [1, 1, 0, 0]]
    assert data.options["label_source"] == "classes.txt"


def test_text_only_manifest_has_no_images_and_numbers_its_rows(tmp_path):
    rows = [{"text": r["text"], "labels": r["labels"], "split": r["split"]} for r in ROWS]
    data = load_manifest(_jsonl(tmp_path / "text.jsonl", rows, images=False))
    assert not data.has_images and data.has_text
    assert data.split("train").ids == ("row-000001", "row-000002")
    assert data.split("test").ids == ("row-000004",)


def test_image_only_manifest_has_no_captions(tmp_path):
    rows = [{k: v for k, v in r.items() if k != "text"} for r in ROWS]
    data = load_manifest(_jsonl(tmp_path / "images.jsonl", rows))
    assert data.has_images and not data.has_text


def test_id_column_is_used_when_present(tmp_path):
    rows = [{**r, "id": i} for i, r in enumerate(ROWS)]
    data = load_manifest(_jsonl(tmp_path / "m.jsonl", rows))
    assert data.split("train").ids == ("0", "1")


def test_label_names_argument_fixes_the_order(tmp_path):
    path = _jsonl(tmp_path / "m.jsonl", ROWS)
    (tmp_path / "classes.txt").write_text("cat\ndog\nbird\n")  # the argument wins
    data = load_manifest(path, label_names=["dog", "bird", "cat"])
    assert data.label_names == ("dog", "bird", "cat")
    assert data.split("train").labels.tolist() == [[0, 0, 1], [1, 0, 1]]


def test_without_classes_txt_the_sorted_union_is_used_and_logged(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="difffeat_tune.data.manifest")
    data = load_manifest(_jsonl(tmp_path / "m.jsonl", ROWS))
    assert data.options["label_source"] == "union"
    assert any("bird, cat, dog" in r.message for r in caplog.records)


def test_root_argument_locates_the_images(tmp_path):
    _images(tmp_path / "pictures", ROWS)
    manifest = _jsonl(tmp_path / "manifests" / "m.jsonl", ROWS, images=False)
    data = load_manifest(manifest, root=tmp_path / "pictures")
    assert data.split("train").images.load(0).size == (8, 8)


def test_without_split_column_the_split_argument_puts_every_row_in_one_split(tmp_path):
    rows = [{k: v for k, v in r.items() if k != "split"} for r in ROWS]
    data = load_manifest(_jsonl(tmp_path / "m.jsonl", rows), split="train")
    assert list(data.splits) == ["train"] and len(data.split("train")) == 4
    assert data.options["split"] == "train"


def test_split_names_accept_common_aliases(tmp_path):
    rows = [{**ROWS[0], "split": "Training"}, {**ROWS[1], "split": "validation"}, {**ROWS[3], "split": "dev"}]
    data = load_manifest(_jsonl(tmp_path / "m.jsonl", rows))
    assert {name: len(s) for name, s in data.splits.items()} == {"train": 1, "val": 2}


def test_fingerprint_changes_when_an_image_file_changes(tmp_path):
    path = _jsonl(tmp_path / "m.jsonl", ROWS)
    before = load_manifest(path).fingerprint()
    assert load_manifest(path).fingerprint() == before
    Image.new("RGB", (16, 16)).save(tmp_path / "img" / "a.png")
    assert load_manifest(path).fingerprint() != before


def test_load_dataset_accepts_a_manifest_path(tmp_path):
    rows = [{k: v for k, v in r.items() if k != "split"} for r in ROWS]
    folder = tmp_path / "ds"
    _jsonl(folder / "metadata.jsonl", rows)
    data = load_dataset(str(folder), split="test")
    assert data.name == "ds" and len(data.split("test")) == 4


# ----------------------------------------------------------------------------- errors


def test_missing_image_file_names_the_manifest_row_id_and_path(tmp_path):
    path = _jsonl(tmp_path / "m.jsonl", ROWS)
    (tmp_path / "img" / "b.png").unlink()
    with pytest.raises(DataError) as excinfo:
        load_manifest(path)
    message = _error(excinfo)
    assert str(path) in message and "line 2" in message and "'img/b.png'" in message
    assert "missing image file" in message and str(tmp_path / "img" / "b.png") in message
    assert excinfo.value.hint and "root=" in excinfo.value.hint


def test_unknown_label_names_the_row_and_classes_txt(tmp_path):
    path = _jsonl(tmp_path / "m.jsonl", ROWS)
    (tmp_path / "classes.txt").write_text("cat\ndog\n")
    with pytest.raises(DataError) as excinfo:
        load_manifest(path)
    message = _error(excinfo)
    assert "line 4" in message and "'img/d.png'" in message and "unknown label 'bird'" in message
    assert "classes.txt" in message


def test_unknown_label_in_csv_hints_at_the_delimiter(tmp_path):
    path = _csv(tmp_path / "m.csv", ROWS)
    (tmp_path / "classes.txt").write_text("cat\ndog\nbird\n")
    path.write_text(path.read_text().replace("dog|cat", "dog;cat"))
    with pytest.raises(DataError) as excinfo:
        load_manifest(path)
    assert "line 3" in _error(excinfo) and "separated by '|'" in excinfo.value.hint


def test_duplicate_id_names_both_rows(tmp_path):
    rows = [ROWS[0], {**ROWS[1], "file_name": "img/a.png"}]
    path = _jsonl(tmp_path / "m.jsonl", rows)
    with pytest.raises(DataError) as excinfo:
        load_manifest(path)
    message = _error(excinfo)
    assert "line 2" in message and "duplicate id" in message and "first at line 1" in message


@pytest.mark.parametrize("caption", ["", "   ", None])
def test_empty_caption_names_the_row(tmp_path, caption):
    rows = [ROWS[0], {**ROWS[1], "text": caption}]
    with pytest.raises(DataError) as excinfo:
        load_manifest(_jsonl(tmp_path / "m.jsonl", rows))
    assert "line 2" in _error(excinfo) and "empty caption" in _error(excinfo)


def test_missing_labels_column_is_named(tmp_path):
    rows = [{k: v for k, v in r.items() if k != "labels"} for r in ROWS]
    path = _jsonl(tmp_path / "m.jsonl", rows)
    with pytest.raises(DataError, match="no 'labels' column") as excinfo:
        load_manifest(path)
    assert str(path) in _error(excinfo)


def test_manifest_without_file_name_or_text_is_refused(tmp_path):
    rows = [{"labels": ["cat"], "split": "train"}]
    with pytest.raises(DataError, match="neither a 'file_name' nor a 'text' column"):
        load_manifest(_jsonl(tmp_path / "m.jsonl", rows, images=False))


def test_malformed_json_line_names_the_line_number(tmp_path):
    path = _jsonl(tmp_path / "m.jsonl", ROWS)
    lines = path.read_text().splitlines()
    lines[2] = '{"file_name": "img/c.png", "labels": [}'
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError) as excinfo:
        load_manifest(path)
    assert str(path) in _error(excinfo) and "line 3" in _error(excinfo) and "malformed JSON" in _error(excinfo)


def test_non_object_json_line_is_refused(tmp_path):
    path = tmp_path / "m.jsonl"
    path.write_text('["img/a.png", "cat"]\n')
    with pytest.raises(DataError, match="line 1: expected a JSON object"):
        load_manifest(path)


def test_every_bad_row_is_reported_at_once(tmp_path):
    rows = [ROWS[0], {**ROWS[1], "text": ""}, {**ROWS[2], "split": "holdout"}, ROWS[3]]
    path = _jsonl(tmp_path / "m.jsonl", rows)
    (tmp_path / "img" / "d.png").unlink()
    with pytest.raises(DataError) as excinfo:
        load_manifest(path)
    message = _error(excinfo)
    assert "3 problems" in message
    assert "line 2" in message and "line 3" in message and "line 4" in message
    assert "unknown split 'holdout'" in message


def test_no_split_column_and_no_split_argument_is_refused(tmp_path):
    rows = [{k: v for k, v in r.items() if k != "split"} for r in ROWS]
    with pytest.raises(DataError, match="no 'split' column") as excinfo:
        load_manifest(_jsonl(tmp_path / "m.jsonl", rows))
    assert "split='train'" in excinfo.value.hint


def test_split_argument_with_a_split_column_is_refused(tmp_path):
    with pytest.raises(DataError, match="has a 'split' column"):
        load_manifest(_jsonl(tmp_path / "m.jsonl", ROWS), split="train")


def test_non_list_labels_value_names_the_row(tmp_path):
    rows = [ROWS[0], {**ROWS[1], "labels": 3}]
    with pytest.raises(DataError) as excinfo:
        load_manifest(_jsonl(tmp_path / "m.jsonl", rows))
    assert "line 2" in _error(excinfo) and "labels must be a list" in _error(excinfo)


def test_duplicate_class_in_classes_txt_names_the_line(tmp_path):
    path = _jsonl(tmp_path / "m.jsonl", ROWS)
    (tmp_path / "classes.txt").write_text("cat\ndog\ncat\n")
    with pytest.raises(DataError, match=r"classes.txt, line 3: duplicate class 'cat' \(first on line 1\)"):
        load_manifest(path)


def test_folder_without_a_metadata_file_is_refused(tmp_path):
    with pytest.raises(DataError, match="holds no manifest") as excinfo:
        load_manifest(tmp_path)
    assert "metadata.jsonl" in excinfo.value.hint


def test_folder_with_two_metadata_files_is_refused(tmp_path):
    _jsonl(tmp_path / "metadata.jsonl", ROWS)
    _csv(tmp_path / "metadata.csv", ROWS)
    with pytest.raises(DataError, match="several manifests"):
        load_manifest(tmp_path)


@pytest.mark.parametrize("name", ["missing.jsonl", "data.txt"])
def test_missing_or_unsupported_manifest_is_refused(tmp_path, name):
    if name.endswith(".txt"):
        (tmp_path / name).write_text("x")
    with pytest.raises(DataError, match=name.replace(".", r"\.") + "|unknown format"):
        load_manifest(tmp_path / name)


def test_unreadable_parquet_is_refused(tmp_path):
    path = tmp_path / "data.parquet"
    path.write_bytes(b"PAR1 this is not parquet")
    with pytest.raises(DataError, match="cannot be read as Parquet"):
        load_manifest(path)


def test_csv_row_with_too_many_cells_names_the_line(tmp_path):
    path = _csv(tmp_path / "m.csv", ROWS)
    path.write_text(path.read_text() + "img/a.png,x,cat,train,extra\n")
    with pytest.raises(DataError, match="line 6: more cells"):
        load_manifest(path)


def test_unreadable_image_is_reported_with_its_id_when_loaded(tmp_path):
    path = _jsonl(tmp_path / "m.jsonl", ROWS)
    (tmp_path / "img" / "a.png").write_bytes(b"not a png")
    data = load_manifest(path)  # existence is checked up front, contents lazily
    with pytest.raises(DataError, match="'img/a.png'"):
        data.split("train").images.load(0)
