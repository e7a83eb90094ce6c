"""Bad paths, bad files and damaged stores, as a new user meets them: one clear line, never a traceback."""

from __future__ import annotations

import json
from pathlib import Path

import optuna
import pyarrow.parquet as pq
import pytest

from tests.conftest import write_nan_block
from tests.test_cli import SPACE, _common, run_cli
from tests.test_cli import project  # noqa: F401 - the fixture

#: A folder nobody can create, not even root (the sandbox's tests may run as root).
UNWRITABLE = Path("/proc/difffeat-tune-unwritable")


def _path(kind: str, tmp: Path) -> Path:
    if kind == "file":
        path = tmp / "a-file.txt"
        path.write_text("not a folder\n")
        return path
    if kind == "missing":
        return tmp / "missing" / "folder"
    return UNWRITABLE


# (command, output option) pairs: an output folder that is a file or cannot be written is one
# line naming the option; a missing one is created.
OUTPUTS = [("extract", "--features"), ("run heuristic", "--features"), ("run heuristic", "--runs"),
           ("run grid", "--runs"), ("compare", "--features"), ("compare", "--runs")]


@pytest.mark.parametrize("kind", ["file", "unwritable"])
@pytest.mark.parametrize(("command", "option"), OUTPUTS)
def test_an_output_folder_that_is_a_file_or_unwritable_is_one_line_naming_the_option(
        command: str, option: str, kind: str, project: Path, tmp_path: Path, capsys, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.chdir(tmp_path)
    args = [*command.split(), "--dataset", str(project / "metadata.jsonl"), "--space", str(project / "space.toml"),
            "--device", "cpu", option, str(_path(kind, tmp_path))]
    code, out, err = run_cli(args, capsys, monkeypatch)  # an uncaught exception would fail the test here
    text = " ".join(err.split())
    assert code == 2 and "Traceback" not in err
    assert f"error: {option} " in text and ("is a file" in text if kind == "file" else "cannot be written" in text)
    assert not list(tmp_path.rglob("*.parquet"))  # nothing ran


@pytest.mark.parametrize(("option", "message"), [
    ("--space", "does not exist"), ("--dataset", "no such file or folder"), ("--root", "does not exist"),
    ("--tokenizer", "tokenizer file missing"), ("--text-backbone", "not an existing folder"),
    ("--image-backbone", "does not exist"),
])
@pytest.mark.parametrize("command", ["extract", "run heuristic", "compare"])
def test_a_missing_input_is_one_line_naming_it(command: str, option: str, message: str, project: Path,  # type: ignore[no-untyped-def]
                                               tmp_path: Path, capsys, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    missing = tmp_path / "nowhere" / "thing"
    args = [*command.split(), "--device", "cpu", "--space", str(project / "space.toml"),
            "--dataset", str(project / "metadata.jsonl")]
    if option == "--root":
        args += ["--dataset", "coco"]
    if option == "--tokenizer":
        args += ["--modality", "text"] if command == "extract" else []
    args += [option, str(missing)]
    code, out, err = run_cli(args, capsys, monkeypatch)
    assert code == 2 and "Traceback" not in err, err
    assert message in " ".join(err.split()).lower() or message in " ".join(err.split())


def test_a_missing_output_folder_is_created(project: Path, tmp_path: Path, capsys, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    features = _path("missing", tmp_path)
    code, out, err = run_cli(["extract", *_common(project, tmp_path)[:4], "--features", str(features), "--device",
                              "cpu", "--modality", "text", "--json"], capsys, monkeypatch)
    assert code == 0, err
    assert list(features.rglob("part-*.parquet"))


def test_dashboard_with_a_runs_folder_that_is_a_file_is_one_line(tmp_path: Path, capsys, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    code, out, err = run_cli(["dashboard", "--runs", str(_path("file", tmp_path))], capsys, monkeypatch)
    assert code == 2 and "--runs" in err and "Traceback" not in err


def test_a_space_key_error_keeps_the_section_name(tmp_path: Path, capsys, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    bad = tmp_path / "bad.toml"
    bad.write_text(SPACE.replace("d_alg = 16", "d_alg = 16\nwidth = 3"))
    code, out, err = run_cli(["extract", "--space", str(bad)], capsys, monkeypatch)
    assert code == 2
    assert "unknown key(s) width in [fusion]" in " ".join(err.split())  # user text is not read as markup


def _shard(view_folder: Path, t: int) -> Path:
    return next(view_folder.glob(f"image/*/t{t:04d}/train/part-00000.parquet"))


def test_a_damaged_shard_is_rebuilt_before_the_search_and_no_trial_fails(
        project: Path, tmp_path: Path, capsys, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    common = [*_common(project, tmp_path), "--runs", str(tmp_path / "runs")]
    code, out, err = run_cli(["extract", *common[:-2], "--json"], capsys, monkeypatch)
    assert code == 0, err
    shard = _shard(Path(json.loads(out)["extractions"][0]["folder"]).parents[1], 10)
    intact = shard.read_bytes()
    shard.write_bytes(intact[: len(intact) // 2])  # a truncated copy: disk damage
    code, out, err = run_cli(["run", "heuristic", *common, "--no-report", "--json"], capsys, monkeypatch)
    assert code == 0, err
    logged = " ".join(err.split())
    assert "damaged feature shard" in logged and "it will be rebuilt" in logged
    assert "fail" not in json.loads(out)["trials"]
    assert pq.read_table(shard).num_rows > 0  # rewritten whole


def test_a_shard_with_nan_fails_its_trials_with_one_line_each_and_the_summary_says_how_to_repair(
        project: Path, tmp_path: Path, capsys, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    common = [*_common(project, tmp_path), "--runs", str(tmp_path / "runs")]
    code, out, err = run_cli(["extract", *common[:-2], "--json"], capsys, monkeypatch)
    assert code == 0, err
    shard = write_nan_block(_shard(Path(json.loads(out)["extractions"][0]["folder"]).parents[1], 10), 8)
    code, out, err = run_cli(["run", "heuristic", *common, "--no-report"], capsys, monkeypatch)
    assert code == 0, err
    assert "Traceback" not in err
    logged = " ".join(err.split())
    assert logged.count("(image t=10 b=8) failed: StoreError:") == 2  # tried twice (max_failures=2), one line each
    assert "NaN/Inf at row 0" in logged
    text = " ".join(out.split())
    assert "failed image t=10 b=8" in text and "extract --verify" in text and "delete the shard it names" in text
    storage = f"sqlite:///{tmp_path / 'runs' / 'studies.db'}"
    study = optuna.load_study(study_name=f"{project.name}-heuristic", storage=storage)
    failed = [t for t in study.trials if t.state == optuna.trial.TrialState.FAIL]
    assert len(failed) == 2 and all(t.user_attrs["error"].startswith("StoreError: ") for t in failed)
    assert str(shard) in failed[0].user_attrs["error"]
    assert {t.user_attrs["config"] for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE} >= {
        "image t=10 b=12"}  # the same shard's other blocks are fine


def test_rerunning_a_finished_study_adds_no_trial(project: Path, tmp_path: Path, capsys, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    common = [*_common(project, tmp_path), "--runs", str(tmp_path / "runs"), "--no-report", "--json"]
    code, out, err = run_cli(["run", "heuristic", *common], capsys, monkeypatch)
    assert code == 0, err
    first = json.loads(out)
    for _ in range(2):
        code, out, err = run_cli(["run", "heuristic", *common], capsys, monkeypatch)
        assert code == 0, err
        again = json.loads(out)
        assert again["trials"] == first["trials"] and "pruned" not in again["trials"]
        assert again == first  # the summary of a finished study is the same whoever prints it, whenever
