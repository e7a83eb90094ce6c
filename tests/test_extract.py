from __future__ import annotations

from pathlib import Path

import pytest
import torch

from difffeat_tune._errors import BackboneError, DataError, StoreError
from difffeat_tune.backbones.dit import build_tiny_dit, load_dit
from difffeat_tune.data._base import Dataset, Split
from difffeat_tune.extract import extract
from difffeat_tune.store import FeatureStore

TIMESTEPS = [10, 50]
BLOCKS = [8, 12]


@pytest.fixture(scope="module")
def dit(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    return load_dit(build_tiny_dit(tmp_path_factory.mktemp("dit") / "m"), device="cpu")


def test_extraction_stores_every_timestep_block_and_split(tmp_path: Path, toy_dataset: Dataset, dit) -> None:  # type: ignore[no-untyped-def]
    report = extract(toy_dataset, dit, FeatureStore(tmp_path), TIMESTEPS, BLOCKS, batch_size=16)
    view = FeatureStore(tmp_path).view("toy")
    for split in ("train", "val"):
        assert view.available("image", split) == {10: {8, 12}, 50: {8, 12}}
    assert report.rows == (40 + 16) * 2
    # Stored values equal a direct call of the backbone (within float16 storage precision).
    direct = dit.features(dit.encode(toy_dataset.split("val"), range(16)), [50], [12])[50][12]
    torch.testing.assert_close(view.load("image", 50, 12, "val").values, direct, rtol=2e-3, atol=2e-3)


def test_rerun_skips_complete_parts(tmp_path: Path, toy_dataset: Dataset, dit) -> None:  # type: ignore[no-untyped-def]
    store = FeatureStore(tmp_path)
    extract(toy_dataset, dit, store, TIMESTEPS, BLOCKS)
    again = extract(toy_dataset, dit, store, TIMESTEPS, BLOCKS)
    assert again.parts_written == 0 and again.rows == 0 and again.parts_skipped == 4


def test_interrupted_extraction_keeps_finished_parts_and_resumes(tmp_path: Path, toy_dataset: Dataset, dit) -> None:  # type: ignore[no-untyped-def]
    store = FeatureStore(tmp_path / "a")
    calls = []

    def crash_in_second_part(rows: int) -> None:
        calls.append(rows)
        if sum(calls) > 2 * 20 * len(TIMESTEPS):  # past the first two parts of 20 rows
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        extract(toy_dataset, dit, store, TIMESTEPS, BLOCKS, batch_size=10, rows_per_part=20,
                progress=crash_in_second_part)
    folder = next((tmp_path / "a").rglob("extraction.json")).parent
    written = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*.parquet"))
    assert written == ["t0010/train/part-00000.parquet", "t0010/train/part-00001.parquet",
                       "t0050/train/part-00000.parquet", "t0050/train/part-00001.parquet"]
    assert not list(folder.rglob("*.tmp"))
    resumed = extract(toy_dataset, dit, store, TIMESTEPS, BLOCKS, batch_size=10)
    assert resumed.parts_written == 2 and resumed.parts_skipped == 4  # only val was left
    clean = FeatureStore(tmp_path / "b")
    extract(toy_dataset, dit, clean, TIMESTEPS, BLOCKS, batch_size=10, rows_per_part=20)
    for t in TIMESTEPS:
        torch.testing.assert_close(store.view("toy").load("image", t, 8, "train").values,
                                   clean.view("toy").load("image", t, 8, "train").values)


def test_bad_request_fails_before_any_work(tmp_path: Path, toy_dataset: Dataset, dit) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(BackboneError, match="block 29"):
        extract(toy_dataset, dit, FeatureStore(tmp_path), [10], [8, 29])
    with pytest.raises(BackboneError, match="timestep 1000"):
        extract(toy_dataset, dit, FeatureStore(tmp_path), [1000], [8])
    with pytest.raises(DataError, match="no split 'test'"):
        extract(toy_dataset, dit, FeatureStore(tmp_path), [10], [8], splits=["test"])
    assert not list(tmp_path.rglob("*.parquet"))


class _BrokenAt:
    """Images where one row cannot be read, as a corrupt file would behave."""

    def __init__(self, inner, bad: int) -> None:  # type: ignore[no-untyped-def]
        self.inner, self.bad = inner, bad

    def __len__(self) -> int:
        return len(self.inner)

    def load(self, index: int):  # type: ignore[no-untyped-def]
        if index == self.bad:
            raise DataError(f"cannot read image of row id 'train-{index:04d}'")
        return self.inner.load(index)


def test_unreadable_image_names_the_row_and_keeps_completed_parts(tmp_path: Path, toy_dataset: Dataset, dit) -> None:  # type: ignore[no-untyped-def]
    train = toy_dataset.split("train")
    broken = Dataset("toy", toy_dataset.label_names, "multilabel", {
        "train": Split("train", train.ids, train.labels, train.captions, _BrokenAt(train.images, 35)),
    })
    with pytest.raises(DataError, match="train-0035"):
        extract(broken, dit, FeatureStore(tmp_path), [10], [8], batch_size=10, rows_per_part=20)
    assert len(list(tmp_path.rglob("part-*.parquet"))) == 1


def test_text_features_of_an_older_feature_version_are_re_extracted_not_read(tmp_path: Path, toy_dataset: Dataset) -> None:
    from difffeat_tune.backbones.plaid import FEATURE_VERSION, build_tiny_plaid, load_plaid
    from difffeat_tune.store import ExtractionKey

    captions = [c for split in toy_dataset.splits.values() for c in split.captions or ()]
    plaid = load_plaid(build_tiny_plaid(tmp_path / "plaid", captions, n_blocks=4, dim=32, n_heads=2),
                       device="cpu", token_length=8)
    store = FeatureStore(tmp_path / "store")
    # A store written before the z-term fix: same backbone and settings, without the version.
    old_settings = {k: v for k, v in plaid.settings().items() if k != "feature_version"}
    old_key = ExtractionKey("text", plaid.name, plaid.fingerprint(), old_settings)
    old = extract(toy_dataset, plaid, store, [0, 10], [2, 4])
    assert old.parts_written == 4
    old_folder = Path(old.folder)
    old_folder.rename(old_folder.with_name(old_key.folder_name))  # as the old code would have named it
    fresh = extract(toy_dataset, plaid, store, [0, 10], [2, 4])
    assert fresh.parts_written == 4 and fresh.parts_skipped == 0  # recomputed, not read
    assert Path(fresh.folder).name != old_key.folder_name
    assert plaid.settings()["feature_version"] == FEATURE_VERSION


def _flip_a_byte(path: Path, keep_time: bool) -> None:
    """Damage a part file in place: same size; with ``keep_time`` also the same modification time."""
    import os

    stat = path.stat()
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    if keep_time:
        os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))


def test_a_damaged_part_is_named_and_rebuilt_by_the_next_extraction(tmp_path: Path, toy_dataset: Dataset, dit) -> None:  # type: ignore[no-untyped-def]
    store = FeatureStore(tmp_path)
    first = extract(toy_dataset, dit, store, TIMESTEPS, BLOCKS)
    folder = Path(first.folder)
    damaged = folder / "t0050" / "val" / "part-00000.parquet"
    good = FeatureStore(tmp_path).view("toy").load("image", 50, 12, "val").values
    _flip_a_byte(damaged, keep_time=False)
    with pytest.raises(StoreError, match=r"t0050/val/part-00000.parquet is damaged: checksum mismatch"):
        FeatureStore(tmp_path).view("toy").load("image", 50, 12, "val")
    again = extract(toy_dataset, dit, FeatureStore(tmp_path), TIMESTEPS, BLOCKS)
    assert again.parts_written == 1 and again.parts_skipped == 3  # only the damaged part
    torch.testing.assert_close(FeatureStore(tmp_path).view("toy").load("image", 50, 12, "val").values, good)


def test_verify_finds_damage_that_kept_size_and_time(tmp_path: Path, toy_dataset: Dataset, dit) -> None:  # type: ignore[no-untyped-def]
    from difffeat_tune.store import Extraction

    store = FeatureStore(tmp_path)
    folder = Path(extract(toy_dataset, dit, store, TIMESTEPS, BLOCKS).folder)
    damaged = folder / "t0010" / "train" / "part-00000.parquet"
    _flip_a_byte(damaged, keep_time=True)
    assert extract(toy_dataset, dit, FeatureStore(tmp_path), TIMESTEPS, BLOCKS).parts_written == 0  # cheap check
    assert [(p, r.split(" (")[0]) for p, r in Extraction(folder).verify()] == [(damaged, "checksum mismatch")]
    rebuilt = extract(toy_dataset, dit, FeatureStore(tmp_path), TIMESTEPS, BLOCKS, verify=True)
    assert rebuilt.parts_written == 1
    assert Extraction(folder).verify() == []
