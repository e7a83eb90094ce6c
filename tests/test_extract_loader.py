"""The extraction's input pipeline: loader workers change nothing in the store, and name a bad file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from difffeat_tune._errors import DataError
from difffeat_tune._loader import default_loader_workers, prepared_batches
from difffeat_tune.backbones._registry import load_image_backbone, load_text_backbone
from difffeat_tune.data._base import Dataset, FileImages, Split
from difffeat_tune.extract import extract
from difffeat_tune.store import FeatureStore


@pytest.fixture(scope="module")
def tiny_dit():  # type: ignore[no-untyped-def]
    return load_image_backbone("tiny", device="cpu")


@pytest.fixture(scope="module")
def tiny_plaid():  # type: ignore[no-untyped-def]
    return load_text_backbone("tiny", device="cpu")


def _parts(folder: Path) -> dict[str, pq.ParquetFile]:
    return {p.relative_to(folder).as_posix(): pq.read_table(p) for p in sorted(folder.rglob("part-*.parquet"))}


@pytest.mark.parametrize("modality", ["image", "text"])
def test_any_number_of_workers_gives_the_same_part_files(tmp_path: Path, toy_dataset: Dataset, modality: str,
                                                         tiny_dit, tiny_plaid) -> None:  # type: ignore[no-untyped-def]
    backbone = tiny_dit if modality == "image" else tiny_plaid
    timesteps, blocks = ([10, 50], [2, 4]) if modality == "image" else ([0, 20], [2, 4])
    folders = {}
    for workers in (0, 1, 2):
        report = extract(toy_dataset, backbone, FeatureStore(tmp_path / str(workers)), timesteps, blocks,
                         batch_size=6, rows_per_part=16, loader_workers=workers)  # batches across part ends
        folders[workers] = Path(report.folder)
    reference = _parts(folders[0])
    assert len(reference) == len(timesteps) * (3 + 1)  # train: 3 parts of <= 16 rows, val: 1
    for workers in (1, 2):
        tables = _parts(folders[workers])
        assert list(tables) == list(reference)
        for name, table in tables.items():
            assert table.column("id").to_pylist() == reference[name].column("id").to_pylist()  # row order
            assert table.equals(reference[name].select(table.column_names)), name  # same values, bit for bit


def test_batches_come_in_the_order_asked(toy_dataset: Dataset, tiny_dit) -> None:  # type: ignore[no-untyped-def]
    train, val = toy_dataset.split("train"), toy_dataset.split("val")
    jobs = [(val, range(8, 16)), (train, range(0, 5)), (val, [3, 1]), (train, range(35, 40))]
    got = [batch.ids for batch in prepared_batches(tiny_dit, jobs, workers=2)]
    assert got == [tuple(split.ids[i] for i in rows) for split, rows in jobs]


def _file_dataset(folder: Path, n: int, broken: int) -> Dataset:
    """A data set of JPEG files; file ``broken`` keeps a valid header but loses its pixel data."""
    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        path = folder / f"img{i:02d}.jpg"
        Image.fromarray(rng.integers(0, 256, (40, 56, 3), dtype=np.uint8)).save(path, quality=90)
        paths.append(str(path))
    data = Path(paths[broken]).read_bytes()
    Path(paths[broken]).write_bytes(data[: len(data) // 3])  # truncated: the header reads, the decode fails
    ids = tuple(f"row{i:02d}" for i in range(n))
    split = Split("train", ids, np.zeros((n, 2), np.int8), None, FileImages(paths, ids))
    return Dataset("files", ("a", "b"), "multilabel", {"train": split})


def test_a_worker_that_cannot_decode_an_image_names_the_file(tmp_path: Path, tiny_dit) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "img").mkdir()
    dataset = _file_dataset(tmp_path / "img", 12, broken=9)
    with pytest.raises(DataError, match=r"row id 'row09': .*img09\.jpg") as caught:
        extract(dataset, tiny_dit, FeatureStore(tmp_path / "store"), [10], [2], batch_size=2, rows_per_part=4,
                loader_workers=2)
    assert caught.value.hint is not None and "valid image" in caught.value.hint  # the hint survives the worker
    written = sorted(p.name for p in (tmp_path / "store").rglob("part-*.parquet"))
    assert written == ["part-00000.parquet", "part-00001.parquet"]  # the parts before the bad file stay


def test_default_workers_leave_cores_to_the_model() -> None:
    assert default_loader_workers(1) == 0
    assert default_loader_workers(2) == 1
    assert default_loader_workers(16) == 8
    assert default_loader_workers(64) == 8
