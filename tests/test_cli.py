"""The `difffeat-tune` command end to end: a small manifest data set, the tiny backbones, real files."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import optuna
import pytest
from PIL import Image

from difffeat_tune import cli

SPACE = """
[image]
t = [10, 50]
b = [8, 12]
[text]
t = [0, 10]
b = [8, 24]
[fusion]
methods = ["linear_add", "simple_concat"]
d_alg = 16
[probe]
epochs = 3
batch_size = 16
"""
WORDS = ["circle", "square", "star"]


def write_manifest(root: Path, *, seed: int, captions: bool = True, size: tuple[int, int] = (48, 40)) -> Path:
    """A manifest data set in ``root``: 24 / 8 / 8 rows of random images, labels and (optionally) captions."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir()
    rows = []
    for split, n in (("train", 24), ("val", 8), ("test", 8)):
        for i in range(n):
            labels = [w for w in WORDS if rng.random() < 0.5] or [WORDS[i % 3]]
            name = f"images/{split}-{i}.png"
            Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(root / name)
            row = {"id": f"{split}-{i}", "file_name": name, "labels": labels, "split": split}
            if captions:
                row["text"] = f"a photo with a {' and a '.join(labels)}"
            rows.append(row)
    (root / "metadata.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    (root / "space.toml").write_text(SPACE)
    return root


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A manifest with 24 / 8 / 8 rows of images, captions and labels, and a small space."""
    return write_manifest(tmp_path_factory.mktemp("project"), seed=0)


def run_cli(args: list[str], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> tuple[int, str, str]:
    """Run the console-script entry point; return (exit code, stdout, stderr)."""
    monkeypatch.setattr(sys, "argv", ["difffeat-tune", *args])
    code = 0
    try:
        cli.main()
    except SystemExit as exc:
        code = int(exc.code or 0)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _common(project: Path, tmp: Path) -> list[str]:
    return ["--dataset", str(project / "metadata.jsonl"), "--space", str(project / "space.toml"),
            "--features", str(tmp / "features"), "--device", "cpu"]


def test_extract_writes_the_grids_and_a_rerun_reuses_them(project: Path, tmp_path: Path, capsys, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    code, out, err = run_cli(["extract", *_common(project, tmp_path), "--json"], capsys, monkeypatch)
    assert code == 0, err
    summary = json.loads(out)
    by_modality = {e["modality"]: e for e in summary["extractions"]}
    assert by_modality["image"]["parts_written"] == 2 * 3 and by_modality["text"]["parts_written"] == 2 * 3
    assert len(list((tmp_path / "features").rglob("part-*.parquet"))) == 12
    code, out, _ = run_cli(["extract", *_common(project, tmp_path), "--json"], capsys, monkeypatch)
    assert code == 0 and all(e["parts_written"] == 0 for e in json.loads(out)["extractions"])


@pytest.mark.slow
def test_run_heuristic_then_grid_then_compare(project: Path, tmp_path: Path, capsys, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    storage = f"sqlite:///{tmp_path}/runs/studies.db"
    common = [*_common(project, tmp_path), "--storage", storage, "--runs", str(tmp_path / "runs")]
    code, out, err = run_cli(["run", "heuristic", *common, "--no-report", "--json"], capsys, monkeypatch)
    assert code == 0, err
    heuristic = json.loads(out)
    assert heuristic["phases"]["image"] == 4 and heuristic["phases"]["text"] == 4
    assert 4 <= heuristic["phases"]["fusion"] <= 9  # a 2 x 2 grid: the cross covers 3 points per modality
    assert heuristic["best_config"] is not None and heuristic["eval_split"] == "test"
    code, out, err = run_cli(["run", "grid", *common, "--no-report", "--json"], capsys, monkeypatch)
    assert code == 0, err
    assert json.loads(out)["trials"] == {"complete": 16}
    code, out, err = run_cli(["compare", *common, "--study-name", "metadata"], capsys, monkeypatch)
    assert code == 0, err
    assert "Regret of the heuristic" in out
    assert (tmp_path / "runs" / "compare-metadata.md").is_file()
    names = {s.study_name for s in optuna.get_all_study_summaries(storage)}
    assert {"metadata-heuristic", "metadata-grid"} <= names


def test_run_heuristic_prints_the_best_configuration_and_the_dashboard_line(project: Path, tmp_path: Path, capsys, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    common = [*_common(project, tmp_path), "--runs", str(tmp_path / "runs")]
    code, out, err = run_cli(["run", "heuristic", *common], capsys, monkeypatch)
    assert code == 0, err
    assert "difffeat-tune dashboard --storage sqlite:///" in " ".join(out.split())
    [report] = (tmp_path / "runs" / "reports").glob("*-heuristic/index.html")  # the run ends with its report
    assert str(report) in "".join(err.split())
    rows = {line.split("│")[1].strip() for line in out.splitlines() if line.count("│") > 3}
    assert {"image", "text", "fusion", "chosen"} <= rows  # each modality's best, then the chosen one on test
    header = next(line for line in out.splitlines() if "mAP" in line)
    assert [c for c in ("mAP", "CP", "CR", "CF1", "OP", "OR", "OF1") if c in header] == \
        ["mAP", "CP", "CR", "CF1", "OP", "OR", "OF1"]
    assert header.index("mAP") < header.index("CP") < header.index("OF1")
    written = report.stat().st_mtime_ns
    code, out, err = run_cli(["run", "heuristic", *common], capsys, monkeypatch)  # the study is finished
    assert code == 0, err
    assert "(up to date;" in " ".join(err.split()) and report.stat().st_mtime_ns == written  # not drawn again


@pytest.mark.slow
def test_run_heuristic_on_ray_records_the_same_plan(project: Path, tmp_path: Path, capsys, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    storage = f"sqlite:///{tmp_path}/studies.db"
    common = [*_common(project, tmp_path), "--storage", storage, "--runs", str(tmp_path / "runs")]
    code, out, err = run_cli(["run", "heuristic", *common, "--study-name", "local", "--no-report", "--json"], capsys, monkeypatch)
    assert code == 0, err
    code, out, err = run_cli(["run", "heuristic", *common, "--study-name", "ray", "--engine", "ray", "--no-report", "--json"],
                             capsys, monkeypatch)
    assert code == 0, err
    assert json.loads(out)["study_name"] == "ray"  # stdout holds the JSON alone, Ray's output went to stderr

    def plan(name: str) -> set[tuple]:
        study = optuna.load_study(study_name=name, storage=storage)
        return {tuple(sorted(t.params.items())) for t in study.trials if t.state.is_finished() and t.params}

    assert plan("ray") == plan("local")
    assert optuna.load_study(study_name="ray", storage=storage).user_attrs["engine"] == "ray"


@pytest.mark.parametrize(("args", "message"), [
    (["extract", "--dataset", "no-such-set"], "unknown data set 'no-such-set'"),
    (["extract", "--space", "nowhere.toml"], "does not exist"),
    (["extract", "--image-blocks", "8,29", "--modality", "image"], "block 29"),
    (["extract", "--dataset", "coco"], "--root PATH"),
    (["run", "heuristic", "--fusion", "late"], "unknown fusion method 'late'"),
])
def test_bad_input_exits_2_with_a_message_naming_it(args: list[str], message: str, tmp_path: Path, capsys,  # type: ignore[no-untyped-def]
                                                     monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    code, out, err = run_cli(args, capsys, monkeypatch)
    assert code == 2
    assert message in " ".join((out + err).split())
    assert not list(tmp_path.rglob("*.parquet"))


def test_bad_space_file_names_the_key(tmp_path: Path, capsys, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    bad = tmp_path / "bad.toml"
    bad.write_text(SPACE.replace("[probe]", "[image_extra]\nx = 1\n[probe]"))
    code, out, err = run_cli(["extract", "--space", str(bad)], capsys, monkeypatch)
    assert code == 2 and "image_extra" in err


def test_extract_and_search_run_end_to_end_on_a_coco_fixture(project: Path, tmp_path: Path, capsys, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from tests.data.test_coco import write_coco

    root = write_coco(tmp_path / "coco")
    common = ["--dataset", "coco-enhanced", "--root", str(root), "--space", str(project / "space.toml"),
              "--features", str(tmp_path / "features"), "--device", "cpu"]
    code, out, err = run_cli(["extract", *common, "--json"], capsys, monkeypatch)
    assert code == 0, err
    assert json.loads(out)["dataset"].startswith("coco-enhanced-")
    code, out, err = run_cli(["run", "heuristic", *common, "--storage", f"sqlite:///{tmp_path}/s.db", "--no-report", "--json"],
                             capsys, monkeypatch)
    assert code == 0, err
    summary = json.loads(out)
    # COCO has no test labels: selection on a seeded hold-out of train, evaluation on val.
    assert summary["selection_split"] == "train-holdout" and summary["eval_split"] == "val"
    assert summary["phases"]["image"] == 4 and summary["phases"]["text"] == 4 and summary["best_config"]


def test_extractions_with_other_settings_sit_side_by_side(project: Path, tmp_path: Path, capsys, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    common = _common(project, tmp_path)
    for seed in ("0", "1"):
        code, _, err = run_cli(["extract", *common, "--modality", "image", "--noise-seed", seed, "--json"],
                               capsys, monkeypatch)
        assert code == 0, err
    image_folders = list((tmp_path / "features").glob("*/image/*"))
    assert len(image_folders) == 2  # a changed seed is a new key, never a stale reuse
    code, out, err = run_cli(["extract", *common, "--modality", "text", "--json"], capsys, monkeypatch)
    assert code == 0, err
    assert [e["modality"] for e in json.loads(out)["extractions"]] == ["text"]


HEAVY = ("torch", "optuna", "ray", "diffusers", "transformers", "pyarrow", "numpy", "sklearn", "plotly", "matplotlib")


@pytest.mark.parametrize("args", [["--help"], ["run", "heuristic", "--help"], ["extract", "--help"],
                                  ["compare", "--help"], ["report", "--help"]])
def test_help_imports_nothing_heavy(args: list[str]) -> None:
    import subprocess

    code = (f"import sys; sys.argv = ['difffeat-tune', *{args!r}]\n"
            "from difffeat_tune import cli\n"
            "try:\n    cli.main()\nexcept SystemExit:\n    pass\n"
            f"heavy = sorted(m for m in {HEAVY!r} if m in sys.modules)\n"
            "print('HEAVY', heavy)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert "Usage" in done.stdout and "HEAVY []" in done.stdout, done.stdout[-500:] + done.stderr[-2000:]
