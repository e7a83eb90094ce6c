"""Finished studies for the report tests: a heuristic and a grid study of one search, and their reports.

Built once per session, for real: the synthetic feature store of ``tests/conftest.py``, the small
space, ``run_search`` with a few probe epochs into a SQLite storage, then ``write_report``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from difffeat_tune.report import Report, write_report
from difffeat_tune.space import SearchSpace, load_space
from difffeat_tune.store import FeatureView
from tests.conftest import SMALL_SPACE, run_study, write_synthetic_store

EPOCHS = 3


@dataclass
class Finished:
    """A storage with ``s-heuristic`` and ``s-grid``, and the report of each."""

    url: str
    root: Path
    view: FeatureView
    space: SearchSpace
    heuristic: Report
    grid: Report


@pytest.fixture(scope="session")
def finished(tmp_path_factory: pytest.TempPathFactory) -> Finished:
    root = tmp_path_factory.mktemp("report")
    view = write_synthetic_store(root / "features")
    (root / "small.toml").write_text(SMALL_SPACE)
    space = load_space(root / "small.toml")
    url = f"sqlite:///{root}/studies.db"
    for sampler in ("heuristic", "grid"):
        run_study(view, space, url, f"s-{sampler}", sampler=sampler, epochs=EPOCHS, batch_size=32)
    reports = {s: write_report(url, f"s-{s}", root / "reports" / s, device="cpu") for s in ("heuristic", "grid")}
    return Finished(url, root, view, space, reports["heuristic"], reports["grid"])


@dataclass
class ImageOnly:
    """A study that holds only image trials (the plan's first phase), and its report."""

    url: str
    report: Report


@pytest.fixture(scope="session")
def image_only(finished: Finished, tmp_path_factory: pytest.TempPathFactory) -> ImageOnly:
    root = tmp_path_factory.mktemp("image-only")
    url = f"sqlite:///{root}/one.db"
    # The plan starts with the image grid: its 9 trials make an image-only study.
    run_study(finished.view, finished.space, url, "image-only", evaluate_best=False, n_trials=9, epochs=EPOCHS,
              batch_size=32)
    return ImageOnly(url, write_report(url, "image-only", root / "out", device="cpu"))
