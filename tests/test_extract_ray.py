"""Extraction on a real local Ray: two CPU actors write the same store as a local extraction, even when one dies."""

from __future__ import annotations

from collections.abc import Iterator
from functools import partial
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

pytest.importorskip("ray")

import ray  # noqa: E402

from difffeat_tune._errors import BackboneError  # noqa: E402
from difffeat_tune.backbones._family import LoadOptions  # noqa: E402
from difffeat_tune.backbones._registry import load_backbone  # noqa: E402
from difffeat_tune.backbones.dit import build_tiny_dit, load_dit  # noqa: E402
from difffeat_tune.data._base import Dataset  # noqa: E402
from difffeat_tune.extract import ExtractSettings, extract  # noqa: E402
from difffeat_tune.extract_ray import extract_ray  # noqa: E402
from difffeat_tune.store import FeatureStore  # noqa: E402

GRIDS = {"image": ([10, 50], [2, 4]), "text": ([0, 20], [2, 4])}


@pytest.fixture(scope="module")
def ray_local() -> Iterator[None]:
    """One real Ray instance with two CPUs for the module."""
    ray.init(address="local", num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1", log_to_driver=False)
    yield
    ray.shutdown()


def _loader(modality: str):  # type: ignore[no-untyped-def]
    return partial(load_backbone, "tiny", modality, LoadOptions(device="cpu"))


def _parts(folder: Path) -> dict[str, object]:
    return {p.relative_to(folder).as_posix(): pq.read_table(p) for p in sorted(folder.rglob("part-*.parquet"))}


def _assert_same_store(local: Path, remote: Path, modality: str, roots: tuple[Path, Path]) -> None:
    """Same part files at the same paths, ids equal, values equal up to float16 rounding, same manifest."""
    a, b = _parts(local), _parts(remote)
    assert list(a) == list(b) and a
    for name in a:
        ta, tb = a[name], b[name]
        assert ta.column_names == tb.column_names
        assert ta.column("id").to_pylist() == tb.column("id").to_pylist()
        for column in ta.column_names[1:]:
            va = np.stack(ta.column(column).to_numpy(zero_copy_only=False)).astype(np.float32)
            vb = np.stack(tb.column(column).to_numpy(zero_copy_only=False)).astype(np.float32)
            np.testing.assert_allclose(vb, va, rtol=2e-3, atol=2e-3, err_msg=f"{name} {column}")
    view_a, view_b = (FeatureStore(root).view("toy") for root in roots)
    for split in ("train", "val"):  # the driver's manifest lists every part, as the local one does
        assert view_b.available(modality, split) == view_a.available(modality, split) != {}


@pytest.mark.parametrize("modality", ["image", "text"])
def test_two_actors_write_the_store_a_local_extraction_writes(tmp_path: Path, toy_dataset: Dataset, ray_local,
                                                              modality: str) -> None:  # type: ignore[no-untyped-def]
    timesteps, blocks = GRIDS[modality]
    load = _loader(modality)
    backbone = load()
    local = extract(toy_dataset, backbone, FeatureStore(tmp_path / "local"), timesteps, blocks, batch_size=8,
                    rows_per_part=16, loader_workers=0)
    done: list[int] = []
    remote = extract_ray(toy_dataset, backbone, FeatureStore(tmp_path / "ray"), timesteps, blocks, load=load,
                         actors=2, settings=ExtractSettings(batch_size=8, rows_per_part=16, timesteps_per_pass=1),
                         progress=done.append)
    assert remote.parts_written == local.parts_written == 8 and remote.rows == local.rows
    assert sum(done) == local.rows  # the driver's progress covers every unit
    assert Path(remote.folder).relative_to(tmp_path / "ray") == Path(local.folder).relative_to(tmp_path / "local")
    _assert_same_store(Path(local.folder), Path(remote.folder), modality, (tmp_path / "local", tmp_path / "ray"))
    again = extract_ray(toy_dataset, backbone, FeatureStore(tmp_path / "ray"), timesteps, blocks, load=load,
                        actors=2, settings=ExtractSettings(batch_size=8, rows_per_part=16))
    assert again.parts_written == 0 and again.parts_skipped == 8  # resumable: nothing left to do


def test_a_killed_actor_loses_only_its_unit_which_is_redone(tmp_path: Path, toy_dataset: Dataset, ray_local,
                                                            caplog: pytest.LogCaptureFixture) -> None:  # type: ignore[no-untyped-def]
    timesteps, blocks = GRIDS["image"]
    load = _loader("image")
    backbone = load()
    local = extract(toy_dataset, backbone, FeatureStore(tmp_path / "local"), timesteps, blocks, batch_size=4,
                    rows_per_part=8, loader_workers=0)
    actors: list[object] = []
    finished: list[int] = []

    def kill_after_the_first_unit(rows: int) -> None:
        finished.append(rows)
        if len(finished) == 1:
            ray.kill(actors[1])  # the other actor is busy with its first unit

    remote = extract_ray(toy_dataset, backbone, FeatureStore(tmp_path / "ray"), timesteps, blocks, load=load,
                         actors=2, settings=ExtractSettings(batch_size=4, rows_per_part=8, timesteps_per_pass=1),
                         on_started=actors.extend,
                         progress=kill_after_the_first_unit)
    assert "the unit is redone" in caplog.text
    assert remote.parts_written == local.parts_written == 2 * (5 + 2) == len(finished)
    _assert_same_store(Path(local.folder), Path(remote.folder), "image", (tmp_path / "local", tmp_path / "ray"))
    # A writer killed mid-write may leave its hidden temporary file (never a part: the rename did not happen).
    assert all(p.name.startswith(".") for p in Path(remote.folder).rglob("*.tmp"))


def test_an_actor_with_other_weights_is_refused(tmp_path: Path, toy_dataset: Dataset, ray_local) -> None:  # type: ignore[no-untyped-def]
    timesteps, blocks = GRIDS["image"]
    driver = load_dit(build_tiny_dit(tmp_path / "other", seed=5), device="cpu")  # not the actors' weights
    with pytest.raises(BackboneError, match="differs from the driver's"):
        extract_ray(toy_dataset, driver, FeatureStore(tmp_path / "store"), timesteps, blocks, load=_loader("image"), actors=1)
    assert not list((tmp_path / "store").rglob("part-*.parquet"))


def test_the_extract_command_runs_on_ray_and_a_local_run_then_finds_every_part(  # type: ignore[no-untyped-def]
        ray_local, tmp_path: Path, capsys, monkeypatch) -> None:
    import json

    from tests.test_cli import run_cli

    args = ["extract", "--features", str(tmp_path / "features"), "--modality", "text", "--text-timesteps", "0,20",
            "--text-blocks", "8", "--splits", "val", "--device", "cpu", "--json"]
    code, out, err = run_cli([*args, "--engine", "ray", "--actors", "2"], capsys, monkeypatch)
    assert code == 0, err
    first = json.loads(out)["extractions"][0]
    assert first["parts_written"] > 0 and first["parts_skipped"] == 0
    code, out, err = run_cli([*args, "--loader-workers", "0"], capsys, monkeypatch)
    again = json.loads(out)["extractions"][0]
    assert code == 0 and again["parts_written"] == 0 and again["parts_skipped"] == first["parts_written"]
    code, out, err = run_cli([*args, "--engine", "spark"], capsys, monkeypatch)
    assert code == 2 and "--engine" in err and "spark" in err


def test_a_search_on_ray_extracts_on_ray_unless_the_store_says_otherwise() -> None:
    from difffeat_tune.features import StoreSettings
    from difffeat_tune.search._options import SearchOptions
    from difffeat_tune.search._settings import Settings

    ray_search = SearchOptions(engine="ray", ray_address="10.0.0.1:6379")
    store = Settings.create(search=ray_search).features.store
    assert (store.engine, store.ray_address) == ("ray", "10.0.0.1:6379")
    assert Settings.create(search=ray_search, store=StoreSettings(engine="local")).features.store.engine == "local"
    assert Settings.create().features.store.engine is None  # a local search extracts locally
