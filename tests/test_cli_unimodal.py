"""Image-only and text-only data sets are searched end to end: that modality's phase is the whole plan."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import optuna
import pytest

from tests.test_cli import run_cli, write_manifest


@pytest.fixture(scope="module")
def image_only(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A manifest without captions: 24 / 8 / 8 images with labels."""
    return write_manifest(tmp_path_factory.mktemp("image-only"), seed=1, captions=False, size=(40, 40))


@pytest.fixture(scope="module")
def text_only(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """AG News in its released CSV layout (4 classes, single-label): 48 train and 16 test rows."""
    root = tmp_path_factory.mktemp("ag-news")
    topics = {1: "election minister talks", 2: "match team wins cup", 3: "stocks market profit", 4: "software chip launch"}
    rng = np.random.default_rng(2)
    for split, n in (("train", 48), ("test", 16)):
        lines = []
        for i in range(n):
            label = int(rng.integers(1, 5))
            lines.append(f'"{label}","{topics[label]} {i}","a story about {topics[label].split()[0]} number {i}"')
        (root / f"{split}.csv").write_text("\n".join(lines) + "\n")
    (root / "classes.txt").write_text("World\nSports\nBusiness\nSci/Tech\n")
    (root / "space.toml").write_text("[text]\nt = [0, 10]\nb = [8, 24]\n[probe]\nepochs = 3\nbatch_size = 16\n")
    return root


def _run(args: list[str], capsys, monkeypatch) -> dict:  # type: ignore[no-untyped-def,type-arg]
    code, out, err = run_cli([*args, "--device", "cpu", "--no-report", "--json"], capsys, monkeypatch)
    assert code == 0, err
    return json.loads(out)


def test_an_image_only_data_set_runs_the_image_phase_only(image_only: Path, tmp_path: Path, capsys,  # type: ignore[no-untyped-def]
                                                          monkeypatch) -> None:
    common = ["--dataset", str(image_only / "metadata.jsonl"), "--space", str(image_only / "space.toml"),
              "--features", str(tmp_path / "f"), "--storage", f"sqlite:///{tmp_path}/s.db"]
    heuristic = _run(["run", "heuristic", *common], capsys, monkeypatch)
    assert heuristic["phases"] == {"image": 4} and heuristic["trials"] == {"complete": 4}
    assert heuristic["best_config"]["modality"] == "image"
    assert set(heuristic["eval_metrics"]) >= {"map", "cp", "of1"} and heuristic["eval_split"] == "test"
    assert set(heuristic["best_by_modality"]) == {"image"}
    grid = _run(["run", "grid", *common], capsys, monkeypatch)
    assert grid["trials"] == {"complete": 4} and grid["phases"] == {"image": 4}  # the image grid is the plan
    assert not list((tmp_path / "f").glob("*/text"))  # no text backbone was loaded or run


def test_a_text_only_single_label_data_set_runs_the_text_phase_with_top_k_metrics(  # type: ignore[no-untyped-def]
        text_only: Path, tmp_path: Path, capsys, monkeypatch) -> None:
    common = ["--dataset", "ag-news", "--root", str(text_only), "--space", str(text_only / "space.toml"),
              "--features", str(tmp_path / "f"), "--storage", f"sqlite:///{tmp_path}/s.db"]
    heuristic = _run(["run", "heuristic", *common], capsys, monkeypatch)
    assert heuristic["phases"] == {"text": 4}
    assert set(heuristic["eval_metrics"]) >= {"top1", "top5"} and heuristic["eval_split"] == "test"
    study = optuna.load_study(study_name=heuristic["study_name"], storage=f"sqlite:///{tmp_path}/s.db")
    assert study.metric_names == ["train-holdout top-1"]  # the dashboard names the objective
    grid = _run(["run", "grid", *common], capsys, monkeypatch)
    assert grid["trials"] == {"complete": 4}


def test_a_space_for_the_other_modality_is_a_clear_error(image_only: Path, tmp_path: Path, capsys,  # type: ignore[no-untyped-def]
                                                         monkeypatch) -> None:
    text_space = tmp_path / "text.toml"
    text_space.write_text("[text]\nt = [0]\nb = [8]\n")
    code, out, err = run_cli(["run", "heuristic", "--dataset", str(image_only / "metadata.jsonl"), "--space",
                              str(text_space), "--features", str(tmp_path / "f"), "--device", "cpu"], capsys, monkeypatch)
    assert code == 2 and "searches text features, but the data set has only image inputs" in " ".join(err.split())
