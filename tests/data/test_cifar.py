"""CIFAR-100 loader on tiny pickles in the exact upstream format (bytes keys, CHW rows)."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest

from difffeat_tune._errors import DataError
from difffeat_tune.data.cifar import load_cifar100

NAMES = [b"apple", b"aquarium_fish", b"baby"]
SIDE = 32


def _rows(n: int) -> np.ndarray:
    """Row i: R plane = 10 + i, G plane = 100, B plane = 200, and pixel (y=0, x=1) of R = 255."""
    planes = np.zeros((n, 3, SIDE, SIDE), dtype=np.uint8)
    planes[:, 0] = (10 + np.arange(n, dtype=np.uint8))[:, None, None]
    planes[:, 1] = 100
    planes[:, 2] = 200
    planes[:, 0, 0, 1] = 255
    return planes.reshape(n, -1)


def write_cifar(root: Path, *, train_labels: list[int] | None = None) -> Path:
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    splits = {"train": train_labels if train_labels is not None else [0, 2, 1, 2], "test": [1, 0]}
    for split, fine in splits.items():
        data = {b"filenames": [f"img_{i}.png".encode() for i in range(len(fine))], b"batch_label": b"x",
                b"fine_labels": fine, b"coarse_labels": [0] * len(fine), b"data": _rows(len(fine))}
        (folder / split).write_bytes(pickle.dumps(data, protocol=2))
    meta = {b"fine_label_names": NAMES, b"coarse_label_names": [b"fruit"]}
    (folder / "meta").write_bytes(pickle.dumps(meta, protocol=2))
    return root


def test_cifar_reads_fixture(tmp_path: Path) -> None:
    ds = load_cifar100(write_cifar(tmp_path))
    assert ds.name == "cifar100" and ds.task == "singlelabel"
    assert ds.label_names == ("apple", "aquarium_fish", "baby")
    train, test = ds.split("train"), ds.split("test")
    assert train.ids == ("train-00000", "train-00001", "train-00002", "train-00003")
    assert test.ids == ("test-00000", "test-00001")
    assert train.labels.dtype == np.int8 and train.labels.tolist() == [[1, 0, 0], [0, 0, 1], [0, 1, 0], [0, 0, 1]]
    assert train.captions is None
    img = train.images.load(3)
    assert img.size == (SIDE, SIDE) and img.mode == "RGB"
    assert img.getpixel((0, 0)) == (13, 100, 200)  # CHW planes became HWC
    assert img.getpixel((1, 0)) == (255, 100, 200)  # (x=1, y=0): rows are y, columns x
    # The folder itself is accepted too.
    assert load_cifar100(tmp_path / "cifar-100-python").label_names == ds.label_names


def test_cifar_missing_and_corrupt_files(tmp_path: Path) -> None:
    root = write_cifar(tmp_path)
    meta = root / "cifar-100-python" / "meta"
    meta.unlink()
    with pytest.raises(DataError) as err:
        load_cifar100(root)
    assert str(meta) in str(err.value) and "missing" in str(err.value)
    meta.write_bytes(b"not a pickle")
    with pytest.raises(DataError, match="cannot read .*meta as a CIFAR-100 pickle"):
        load_cifar100(root)


def test_cifar_label_out_of_range_names_row(tmp_path: Path) -> None:
    root = write_cifar(tmp_path, train_labels=[0, 1, 3, 2])
    with pytest.raises(DataError, match=r"train: row 2 has fine label 3, outside 0..2"):
        load_cifar100(root)


class _Evil:
    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (os.system, ("echo should-not-run",))


def test_cifar_pickle_cannot_run_code(tmp_path: Path) -> None:
    root = write_cifar(tmp_path)
    (root / "cifar-100-python" / "test").write_bytes(pickle.dumps({b"data": _Evil()}))
    with pytest.raises(DataError, match="is not allowed in a CIFAR pickle"):
        load_cifar100(root)
