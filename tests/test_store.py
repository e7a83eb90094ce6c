from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from difffeat_tune._errors import StoreError
from difffeat_tune._manifest import Manifest, PartEntry, PartKey
from difffeat_tune.data._base import Dataset
from difffeat_tune.store import (
    Extraction,
    ExtractionKey,
    FeatureStore,
    block_column,
    check_aligned,
)


def _key(**settings: object) -> ExtractionKey:
    return ExtractionKey("image", "tiny-dit", "abc123", {"noise_seed": 0, **settings}, "float32")


def _write(store: FeatureStore, ds: Dataset, key: ExtractionKey, t: int = 30, blocks=(8, 12)):  # type: ignore[no-untyped-def]
    ext = store.extraction(ds, key, width=4, num_blocks=28)
    split = ds.split("val")
    values = {b: np.random.default_rng(b).standard_normal((len(split), 4)).astype(np.float32) for b in blocks}
    ext.write_part(t, "val", 0, split.ids, values, n_parts=1, provenance={})
    return ext, values


def test_write_then_load_round_trips_ids_and_values(tmp_path: Path, toy_dataset: Dataset) -> None:
    store = FeatureStore(tmp_path)
    store.write_dataset(toy_dataset)
    ext, values = _write(store, toy_dataset, _key())
    got = store.view("toy").load("image", 30, 12, "val")
    assert got.ids == toy_dataset.split("val").ids
    torch.testing.assert_close(got.values, torch.from_numpy(values[12]))


def test_part_file_carries_provenance_metadata_and_one_column_per_block(tmp_path: Path, toy_dataset: Dataset) -> None:
    store = FeatureStore(tmp_path)
    ext, _ = _write(store, toy_dataset, _key(token_length=60))
    path = ext.part_path(30, "val", 0)
    schema = pq.read_schema(path)
    assert schema.names == ["id", block_column(8), block_column(12)]
    meta = json.loads(schema.metadata[b"difffeat_tune"])
    for field in ("backbone", "fingerprint", "settings", "dtype", "t", "blocks", "package_version", "dataset_fingerprint"):
        assert field in meta
    assert meta["t"] == 30 and meta["blocks"] == [8, 12] and meta["settings"]["token_length"] == 60
    assert meta["dataset_fingerprint"] == toy_dataset.fingerprint()


def test_reading_one_block_reads_only_its_column(tmp_path: Path, toy_dataset: Dataset) -> None:
    store = FeatureStore(tmp_path)
    ext, _ = _write(store, toy_dataset, _key(), blocks=(8, 12, 16))
    table = pq.ParquetFile(ext.part_path(30, "val", 0))
    # Column chunks exist per block: projection can skip the others.
    names = {table.metadata.row_group(0).column(i).path_in_schema.split(".")[0]
             for i in range(table.metadata.num_columns)}
    assert names == {"id", "b08", "b12", "b16"}


def test_changed_settings_get_a_different_folder(tmp_path: Path, toy_dataset: Dataset) -> None:
    store = FeatureStore(tmp_path)
    a = store.extraction(toy_dataset, _key())
    b = store.extraction(toy_dataset, _key(noise_seed=1))
    c = store.extraction(toy_dataset, ExtractionKey("image", "tiny-dit", "abc123", {"noise_seed": 0}, "float16"))
    assert len({a.folder, b.folder, c.folder}) == 3


def test_new_blocks_extend_a_part_without_losing_old_columns(tmp_path: Path, toy_dataset: Dataset) -> None:
    store = FeatureStore(tmp_path)
    store.write_dataset(toy_dataset)
    ext, first = _write(store, toy_dataset, _key(), blocks=(8,))
    ext2, second = _write(store, toy_dataset, _key(), blocks=(24,))
    view = store.view("toy")
    torch.testing.assert_close(view.load("image", 30, 8, "val").values, torch.from_numpy(first[8]))
    torch.testing.assert_close(view.load("image", 30, 24, "val").values, torch.from_numpy(second[24]))


def test_missing_timestep_or_block_names_what_is_there(tmp_path: Path, toy_dataset: Dataset) -> None:
    store = FeatureStore(tmp_path)
    store.write_dataset(toy_dataset)
    _write(store, toy_dataset, _key())
    view = store.view("toy")
    with pytest.raises(StoreError, match=r"t=50, block 12.*complete: t=30: blocks \[8, 12\]"):
        view.load("image", 50, 12, "val")
    with pytest.raises(StoreError, match="--image-blocks including 16"):
        view.load("image", 30, 16, "val")


def test_truncated_shard_is_reported_with_its_path(tmp_path: Path, toy_dataset: Dataset) -> None:
    store = FeatureStore(tmp_path)
    store.write_dataset(toy_dataset)
    ext, _ = _write(store, toy_dataset, _key())
    path = ext.part_path(30, "val", 0)
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(StoreError, match=str(path)):
        store.view("toy").load("image", 30, 8, "val")


def test_nan_in_a_shard_is_reported_with_file_and_row(tmp_path: Path, toy_dataset: Dataset) -> None:
    store = FeatureStore(tmp_path)
    store.write_dataset(toy_dataset)
    ext, values = _write(store, toy_dataset, _key())
    path = ext.part_path(30, "val", 0)
    table = pq.read_table(path)
    bad = values[8].copy()
    bad[5, 2] = np.nan
    column = pa.FixedSizeListArray.from_arrays(pa.array(bad.reshape(-1)), 4)
    pq.write_table(table.set_column(1, "b08", column), path)
    manifest = json.loads((ext.folder / "manifest.json").read_text())
    manifest["val"]["30"]["0"].pop("sha256")  # as a store written before checksums were recorded
    (ext.folder / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(StoreError, match=r"NaN/Inf at row 5"):
        store.view("toy").load("image", 30, 8, "val")


def test_non_finite_features_are_refused_at_write(tmp_path: Path, toy_dataset: Dataset) -> None:
    store = FeatureStore(tmp_path)
    ext = store.extraction(toy_dataset, ExtractionKey("image", "x", "f", {}, "float16"))
    split = toy_dataset.split("val")
    huge = np.full((len(split), 4), 1e6, dtype=np.float32)
    with pytest.raises(StoreError, match="--dtype float32"):
        ext.write_part(30, "val", 0, split.ids, {8: huge}, n_parts=1, provenance={})
    assert not ext.part_path(30, "val", 0).exists()


def test_labels_are_stored_once_per_split(tmp_path: Path, toy_dataset: Dataset) -> None:
    store = FeatureStore(tmp_path)
    folder = store.write_dataset(toy_dataset)
    assert sorted(p.name for p in (folder / "labels").iterdir()) == ["train.parquet", "val.parquet"]
    labels = store.view("toy").labels("train")
    np.testing.assert_array_equal(labels.values, toy_dataset.split("train").labels)
    assert labels.label_names == ("a", "b", "c") and labels.task == "multilabel"


def test_mismatched_ids_name_the_first_difference() -> None:
    check_aligned("image", ["a", "b"], "text", ["a", "b"])
    with pytest.raises(StoreError, match="row 1: image has id 'b' but text has 'c'"):
        check_aligned("image", ["a", "b"], "text", ["a", "c"])
    with pytest.raises(StoreError, match="2 rows but text has 1"):
        check_aligned("image", ["a", "b"], "text", ["a"])


def test_unknown_dataset_lists_what_the_store_holds(tmp_path: Path, toy_dataset: Dataset) -> None:
    store = FeatureStore(tmp_path)
    store.write_dataset(toy_dataset)
    with pytest.raises(StoreError, match=r"toy-"):
        store.view("coco")


# -- the manifest: typed, read from the layout every release wrote, never changed by a query -----

def _old_layout_manifest(path: Path, rows: int, blocks: list[int]) -> dict:
    """``manifest.json`` exactly as the untyped code wrote it, for one part at t=30 of split val."""
    stat = path.stat()
    return {
        "_parts": {"val": 1},
        "val": {"30": {"0": {"blocks": blocks, "bytes": stat.st_size, "mtime_ns": stat.st_mtime_ns, "rows": rows,
                             "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}}},
    }


def test_a_manifest_in_the_old_layout_is_read_and_written_back_in_it(tmp_path: Path, toy_dataset: Dataset) -> None:
    store = FeatureStore(tmp_path)
    store.write_dataset(toy_dataset)
    ext, values = _write(store, toy_dataset, _key())
    old = _old_layout_manifest(ext.part_path(30, "val", 0), len(toy_dataset.split("val")), [8, 12])
    (ext.folder / "manifest.json").write_text(json.dumps(old, indent=1, sort_keys=True))
    reopened = Extraction(ext.folder)
    assert reopened.manifest.parts_total == {"val": 1}
    assert reopened.manifest.get(PartKey("val", 30, 0)) == PartEntry(
        rows=16, blocks=(8, 12), sha256=old["val"]["30"]["0"]["sha256"], bytes=old["val"]["30"]["0"]["bytes"],
        mtime_ns=old["val"]["30"]["0"]["mtime_ns"])
    assert reopened.available("val") == {30: {8, 12}} and reopened.verify() == []
    torch.testing.assert_close(store.view("toy").load("image", 30, 12, "val").values, torch.from_numpy(values[12]))
    assert Manifest.from_json(old).to_json() == old
    reopened.forget_part(30, "val", 0)  # a write keeps the layout: the split's table stays, the part goes
    assert json.loads((ext.folder / "manifest.json").read_text()) == {"_parts": {"val": 1}}


def test_an_entry_without_a_checksum_from_the_first_releases_is_trusted(tmp_path: Path, toy_dataset: Dataset) -> None:
    store = FeatureStore(tmp_path)
    ext, _ = _write(store, toy_dataset, _key())
    old = {"_parts": {"val": 1}, "val": {"30": {"0": {"rows": 16, "blocks": [8, 12]}}}}
    (ext.folder / "manifest.json").write_text(json.dumps(old))
    reopened = Extraction(ext.folder)
    assert reopened.manifest.get(PartKey("val", 30, 0)) == PartEntry(rows=16, blocks=(8, 12))
    assert reopened.part_problem(30, "val", 0) is None and reopened.part_blocks(30, "val", 0) == {8, 12}


def _manifest_state(ext: Extraction) -> tuple[bytes, int, dict]:
    path = ext.folder / "manifest.json"
    return path.read_bytes(), path.stat().st_mtime_ns, ext.manifest.to_json()


def test_queries_never_change_the_manifest_even_for_a_touched_or_damaged_part(tmp_path: Path,
                                                                              toy_dataset: Dataset) -> None:
    store = FeatureStore(tmp_path)
    store.write_dataset(toy_dataset)
    ext, _ = _write(store, toy_dataset, _key())
    ext.write_part(50, "val", 0, toy_dataset.split("val").ids,
                   {8: np.ones((16, 4), np.float32)}, n_parts=1, provenance={})
    touched, damaged = ext.part_path(30, "val", 0), ext.part_path(50, "val", 0)
    os.utime(touched, ns=(touched.stat().st_atime_ns, touched.stat().st_mtime_ns + 10**9))  # as a copy would
    data = bytearray(damaged.read_bytes())
    data[len(data) // 2] ^= 0xFF
    damaged.write_bytes(bytes(data))
    before = _manifest_state(ext)
    assert ext.part_problem(30, "val", 0) is None
    assert ext.part_problem(50, "val", 0, verify=True).startswith("checksum mismatch")
    assert ext.part_blocks(30, "val", 0) == {8, 12} and ext.part_blocks(50, "val", 0) == set()
    assert [p for p, _ in ext.verify()] == [damaged] and ext.available("val") == {30: {8, 12}, 50: {8}}
    store.view("toy").load("image", 30, 8, "val")
    with pytest.raises(StoreError, match="is damaged"):
        store.view("toy").load("image", 50, 8, "val")
    assert _manifest_state(ext) == before and _manifest_state(Extraction(ext.folder)) == before


def test_repair_drops_damaged_parts_and_records_the_new_time_of_intact_ones(tmp_path: Path,
                                                                           toy_dataset: Dataset) -> None:
    store = FeatureStore(tmp_path)
    ext, _ = _write(store, toy_dataset, _key())
    ext.write_part(50, "val", 0, toy_dataset.split("val").ids,
                   {8: np.ones((16, 4), np.float32)}, n_parts=1, provenance={})
    touched, damaged = ext.part_path(30, "val", 0), ext.part_path(50, "val", 0)
    os.utime(touched, ns=(touched.stat().st_atime_ns, touched.stat().st_mtime_ns + 10**9))
    damaged.write_bytes(damaged.read_bytes()[:50])
    assert Extraction(ext.folder).repair() == [(damaged, ext.part_problem(50, "val", 0))]
    repaired = Extraction(ext.folder)
    assert repaired.manifest.get(PartKey("val", 50, 0)) is None
    assert repaired.manifest.get(PartKey("val", 30, 0)).mtime_ns == touched.stat().st_mtime_ns
    before = _manifest_state(repaired)
    assert repaired.repair() == [] and _manifest_state(repaired) == before  # nothing left to change: no write
