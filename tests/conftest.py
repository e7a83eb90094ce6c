"""Shared fixtures: a per-session cache for generated data and tiny models, small real data sets."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

# Before anything imports huggingface_hub (it reads this once): tests never reach for the network.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# transformers copies a checkpoint's own model code here (read once, at import): not under ~.
os.environ.setdefault("HF_MODULES_CACHE", str(Path(tempfile.gettempdir()) / "difffeat-tune-tests-hf-modules"))

import numpy as np
import pytest

from difffeat_tune._paths import CACHE_ENV
from difffeat_tune.data._base import ArrayImages, Dataset, Split


@pytest.fixture(scope="session", autouse=True)
def _session_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Point the package cache at a session folder: tiny models and data are built once, never in ~."""
    folder = tmp_path_factory.mktemp("cache")
    mp = pytest.MonkeyPatch()
    mp.setenv(CACHE_ENV, str(folder))
    mp.setenv("HF_HUB_OFFLINE", "1")  # tests never reach for the network
    yield folder
    mp.undo()


def make_split(name: str, n: int, n_classes: int = 3, *, seed: int = 0, captions: bool = True,
               images: bool = True) -> Split:
    """A small random split with images and captions."""
    rng = np.random.default_rng(seed)
    words = ["red circle", "blue square", "green star", "a small ring", "two hearts"]
    return Split(
        name=name,
        ids=tuple(f"{name}-{i:04d}" for i in range(n)),
        labels=rng.integers(0, 2, (n, n_classes)).astype(np.int8),
        captions=tuple(f"{words[i % len(words)]} number {i}" for i in range(n)) if captions else None,
        images=ArrayImages(rng.integers(0, 256, (n, 64, 64, 3), dtype=np.uint8)) if images else None,
    )


@pytest.fixture
def toy_dataset() -> Dataset:
    """A 3-class data set with 40 train and 16 val rows of random images and captions."""
    return Dataset("toy", ("a", "b", "c"), "multilabel",
                   {"train": make_split("train", 40, seed=1), "val": make_split("val", 16, seed=2)})


SMALL_SPACE = """
description = "a small test space"
[image]
t = [10, 30, 50]
b = [4, 8, 12]
[text]
t = [0, 10]
b = [8, 12]
[fusion]
methods = ["simple_concat", "linear_concat", "linear_add", "cross_attention"]
d_alg = 32
[probe]
epochs = 15
batch_size = 32
"""
#: Where the synthetic features are most informative (the optimum a search must find).
IMAGE_PEAK, TEXT_PEAK = (30, 8), (0, 12)


def write_synthetic_store(root: Path, *, n_train: int = 240, n_val: int = 80, n_test: int = 80,
                          n_classes: int = 6, dim: int = 16, seed: int = 0,
                          dtype: str = "float32"):  # type: ignore[no-untyped-def]
    """A real feature store whose features carry label signal peaked at IMAGE_PEAK / TEXT_PEAK.

    Image features see classes 0-3 and text features classes 2-5, so fusion beats either alone.
    ``dtype`` is the stored dtype. Returns the store's view.
    """
    from difffeat_tune.store import ExtractionKey, FeatureStore

    rng = np.random.default_rng(seed)
    splits = {}
    for name, n in (("train", n_train), ("val", n_val), ("test", n_test)):
        labels = (rng.random((n, n_classes)) < 0.3).astype(np.int8)
        labels[np.arange(n), rng.integers(0, n_classes, n)] = 1
        splits[name] = Split(name, tuple(f"{name}-{i}" for i in range(n)), labels, None, None)
    dataset = Dataset("synthetic", tuple(f"c{i}" for i in range(n_classes)), "multilabel", splits)
    store = FeatureStore(root)
    store.write_dataset(dataset)
    mixing = {m: rng.standard_normal((n_classes, dim)) for m in ("image", "text")}
    visible = {"image": np.arange(n_classes) < 4, "text": np.arange(n_classes) >= 2}
    grids = {"image": ((10, 30, 50), (4, 8, 12)), "text": ((0, 10), (8, 12))}
    peaks = {"image": IMAGE_PEAK, "text": TEXT_PEAK}
    for modality in ("image", "text"):
        key = ExtractionKey(modality, f"synthetic-{modality}", "f" * 16, {"seed": seed}, dtype)
        ext = store.extraction(dataset, key, width=dim, num_blocks=28)
        ts, bs = grids[modality]
        pt, pb = peaks[modality]
        for t in ts:
            values = {}
            for name, split in splits.items():
                for b in bs:
                    distance = abs(ts.index(t) - ts.index(pt)) + abs(bs.index(b) - bs.index(pb))
                    strength = 2.0 / (1 + distance)
                    signal = (split.labels * visible[modality]) @ mixing[modality]
                    values.setdefault(name, {})[b] = (strength * signal
                                                      + rng.standard_normal(signal.shape)).astype(np.float32)
                ext.write_part(t, name, 0, split.ids, values[name], n_parts=1, provenance={})
    return store.view("synthetic")


def write_nan_block(path: Path, block: int) -> Path:
    """Overwrite one block column of the feature shard ``path`` with NaN, as a faulty extraction would.

    The manifest records the new file's checksum: the store takes the shard as intact (it is not
    disk damage, which the store rebuilds by itself), and loading that block fails on the NaN.
    """
    import hashlib
    import json

    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    name = f"b{block:02d}"
    column = table.column(name)
    values = pa.array(np.full(table.num_rows * column.type.list_size, np.nan, dtype=np.float32)).cast(
        column.type.value_type)
    table = table.set_column(table.schema.get_field_index(name), name,
                             pa.FixedSizeListArray.from_arrays(values, column.type.list_size))
    pq.write_table(table, path)
    folder, split, t, part = path.parents[2], path.parent.name, path.parents[1].name, path.stem
    manifest_path = folder / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    entry = manifest[split][str(int(t[1:]))][str(int(part.split("-")[1]))]
    stat = path.stat()
    entry.update(sha256=hashlib.sha256(path.read_bytes()).hexdigest(), bytes=stat.st_size, mtime_ns=stat.st_mtime_ns)
    manifest_path.write_text(json.dumps(manifest))
    return path


@pytest.fixture(scope="module")
def one_thread():  # type: ignore[no-untyped-def]
    """Torch on one intra-op thread for a module's tests, restored afterwards."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def synthetic_view(tmp_path: Path):  # type: ignore[no-untyped-def]
    return write_synthetic_store(tmp_path / "features")


@pytest.fixture
def small_space(tmp_path: Path):  # type: ignore[no-untyped-def]
    from difffeat_tune.space import load_space

    path = tmp_path / "small.toml"
    path.write_text(SMALL_SPACE)
    return load_space(path)


def run_study(view, space, url: str, name: str, **overrides: object):  # type: ignore[no-untyped-def]
    """Run (or resume) study ``name`` on ``view`` through the one search skeleton, on the CPU.

    ``overrides`` are settings (``sampler="grid"``, ``n_trials=5``, ``epochs=2``, ``pruner=...``,
    ``evaluate_best=False``, ``engine="ray"``...); probes train on one thread.
    """
    from difffeat_tune.search._options import SearchOptions
    from difffeat_tune.search.runner import run_search
    from difffeat_tune.settings import Settings

    engine_options = overrides.pop("engine_options", None)
    callbacks = overrides.pop("callbacks", ())
    overrides.setdefault("cpu_threads", 1)
    settings = Settings.create(space=space, search=SearchOptions(storage=url, study_name=name), device="cpu",
                               **overrides)
    return run_search(settings, view, callbacks=callbacks, engine_options=engine_options)  # type: ignore[arg-type]


@pytest.fixture(scope="session")
def postgres():  # type: ignore[no-untyped-def]
    """A real PostgreSQL server on loopback for the session (see tests/_postgres.py).

    Skipped where the server binaries are absent, except under CI (``CI`` set), where it fails.
    """
    from tests._postgres import PostgresServer, PostgresUnavailable

    try:
        server = PostgresServer.start()
    except PostgresUnavailable as exc:
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the PostgreSQL tests: {exc}")
        pytest.skip(f"no PostgreSQL server: {exc}")
    yield server
    server.stop()


@pytest.fixture
def pg_url(postgres) -> str:  # type: ignore[no-untyped-def]
    """The URL of a new, empty database on the session's PostgreSQL server."""
    return postgres.create_database()
