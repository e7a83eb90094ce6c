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
class LoneStudy:
    """A study alone in its storage, and its report."""

    url: str
    report: Report


def _lone_study(finished: Finished, tmp_path_factory: pytest.TempPathFactory, name: str,
                report_options: dict[str, object], **overrides: object) -> LoneStudy:
    """Run study ``name`` on ``finished``'s features in a storage of its own (``overrides``: its
    settings), and report it."""
    root = tmp_path_factory.mktemp(name)
    url = f"sqlite:///{root}/one.db"
    run_study(finished.view, finished.space, url, name, evaluate_best=False, epochs=EPOCHS, batch_size=32, **overrides)
    report = write_report(url, name, root / "out", device="cpu", **report_options)  # type: ignore[arg-type]
    return LoneStudy(url, report)


@pytest.fixture(scope="session")
def image_only(finished: Finished, tmp_path_factory: pytest.TempPathFactory) -> LoneStudy:
    """A study that holds only image trials (the plan's first phase: its 9 trials), and its report."""
    return _lone_study(finished, tmp_path_factory, "image-only", {}, n_trials=9)


#: Configurations the proxy-guided studies of these tests train per modality after the proxy stage.
PROXY_TOP = 2


@dataclass
class Proxied:
    """``finished``'s storage copied, with the proxy-guided ``s-heuristic-logme`` added (the three
    studies of ``compare --unimodal-proxy``), and the reports of it and of ``s-heuristic``."""

    url: str
    proxied: Report
    heuristic: Report


@pytest.fixture(scope="session")
def proxied(finished: Finished, tmp_path_factory: pytest.TempPathFactory) -> Proxied:
    import shutil

    root = tmp_path_factory.mktemp("proxied")
    shutil.copy(finished.root / "studies.db", root / "studies.db")
    url = f"sqlite:///{root}/studies.db"
    run_study(finished.view, finished.space, url, "s-heuristic-logme", unimodal_proxy="logme", proxy_top=PROXY_TOP,
              epochs=EPOCHS, batch_size=32, evaluate_best=False)
    reports = {name: write_report(url, name, root / name, features=False, dashboard=False)
               for name in ("s-heuristic-logme", "s-heuristic")}
    return Proxied(url, reports["s-heuristic-logme"], reports["s-heuristic"])


@pytest.fixture(scope="session")
def proxy_alone(finished: Finished, tmp_path_factory: pytest.TempPathFactory) -> LoneStudy:
    """A proxy-guided study alone in its storage (its few trained configurations the only ones), and its report."""
    return _lone_study(finished, tmp_path_factory, "alone-heuristic-ridge", {"features": False, "dashboard": False},
                       unimodal_proxy="ridge", proxy_top=PROXY_TOP)
