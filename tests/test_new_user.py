"""What a new user runs into: each defect found by trying the commands as a new user would, one test each."""

from __future__ import annotations

import json
import shutil
import socket
from pathlib import Path

import optuna
import pytest

from difffeat_tune._errors import ConfigError, DataError
from difffeat_tune._paths import local_folder
from difffeat_tune.backbones._registry import FAMILY_TABLE, load_backbone
from difffeat_tune.data import load_manifest
from difffeat_tune.search.runner import summarize
from tests.test_cli import SPACE, _common, run_cli, write_manifest
from tests.test_cli import project  # noqa: F401 - the fixture

#: A space small enough for a whole search in a few seconds (one image and one text block).
ONE_BLOCK_SPACE = SPACE.replace("b = [8, 12]", "b = [8]").replace("b = [8, 24]", "b = [8]")


def _one_line(err: str) -> str:
    return " ".join(err.split())


# -- 1. URIs the store cannot serve --------------------------------------------------------------


@pytest.mark.parametrize(("command", "option"), [("extract", "--root"), ("run heuristic", "--runs"), ("compare", "--runs")])
def test_an_object_store_uri_is_refused_where_only_folders_serve_and_no_folder_is_named_after_its_scheme(
        command: str, option: str, project: Path, tmp_path: Path, capsys, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    # the feature store may live in a bucket (tests/test_object_store.py); runs and data roots may not
    monkeypatch.chdir(tmp_path)
    args = [*command.split(), "--dataset", str(project / "metadata.jsonl"), "--space", str(project / "space.toml"),
            "--device", "cpu", "--features", str(tmp_path / "features"), option, "s3://bucket/x"]
    code, out, err = run_cli(args, capsys, monkeypatch)
    assert code == 2 and "Traceback" not in err
    assert f"{option} s3://bucket/x: s3:// locations are not supported" in _one_line(err)
    assert not (tmp_path / "s3:").exists() and not list(tmp_path.rglob("*.parquet"))


def test_local_folder_takes_file_uris_and_masks_secrets_of_others() -> None:
    assert local_folder("file:///data/features", "--features") == Path("/data/features")
    assert local_folder(Path("runs/features"), "--features") == Path("runs/features")
    assert local_folder("C:/features", "--features") == Path("C:/features")  # a drive letter, not a scheme
    with pytest.raises(ConfigError) as excinfo:
        local_folder("s3://key:secret@bucket/prefix", "StoreSettings.features")
    assert "secret" not in str(excinfo.value) and "s3://key:***@bucket/prefix" in str(excinfo.value)


# -- 2. backbone names ---------------------------------------------------------------------------


def test_an_unknown_backbone_family_is_named_with_the_known_ones() -> None:
    with pytest.raises(ConfigError) as excinfo:
        load_backbone("nosuchfamily:foo", "image")
    message = str(excinfo.value)
    assert "unknown image backbone family 'nosuchfamily'" in message and "huggingface" not in message
    assert all(name in message for modality, name in FAMILY_TABLE if modality == "image")


@pytest.mark.parametrize("source", ["/nonexistent/dir", "./missing-dit"])
def test_a_missing_backbone_folder_is_named_as_a_missing_folder(source: str, tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.chdir(tmp_path)
    from difffeat_tune._errors import BackboneError

    with pytest.raises(BackboneError) as excinfo:
        load_backbone(source, "image")
    assert "does not exist" in str(excinfo.value) and "cannot load DiT weights" not in str(excinfo.value)


# -- 3. dashboard address ------------------------------------------------------------------------


@pytest.mark.parametrize(("args", "named"), [(["--port", "80000"], "--port 80000"), (["--port", "0"], "--port 0"),
                                             (["--host", "no.such.host.invalid"], "--host")])
def test_a_bad_dashboard_address_is_one_line_before_anything_starts(args: list[str], named: str, tmp_path: Path,
                                                                    capsys, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    code, out, err = run_cli(["dashboard", "--runs", str(tmp_path / "runs"), *args], capsys, monkeypatch)
    assert code == 2 and "Traceback" not in err and named in _one_line(err)
    assert "optuna-dashboard on" not in err and not (tmp_path / "runs").exists()


def test_a_taken_dashboard_port_is_one_line(tmp_path: Path, capsys, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code, out, err = run_cli(["dashboard", "--runs", str(tmp_path), "--port", str(port)], capsys, monkeypatch)
    assert code == 2 and f"cannot listen on 127.0.0.1:{port}" in _one_line(err)


# -- 4, 5, 6, 11: compare redraws the report, regret like with like, one study name, search time ------


@pytest.fixture(scope="module")
def spaced(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A manifest whose file name has a space, and a one-block space (a whole search in seconds)."""
    root = write_manifest(tmp_path_factory.mktemp("spaced"), seed=3)
    (root / "metadata.jsonl").rename(root / "my data.jsonl")
    (root / "space.toml").write_text(ONE_BLOCK_SPACE)
    return root


def _spaced_args(root: Path, tmp: Path) -> list[str]:
    return ["--dataset", str(root / "my data.jsonl"), "--space", str(root / "space.toml"), "--features",
            str(tmp / "features"), "--device", "cpu", "--runs", str(tmp / "runs"), "--threads", "1"]


def test_a_finished_study_of_a_manifest_with_a_space_in_its_name_is_found_on_a_rerun(
        spaced: Path, tmp_path: Path, capsys, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    args = ["run", "heuristic", *_spaced_args(spaced, tmp_path), "--no-report", "--json"]
    code, out, err = run_cli(args, capsys, monkeypatch)
    assert code == 0, err
    assert json.loads(out)["study_name"] == "my_data-heuristic"
    # The re-run takes the finished-study path: it reads the storage and never opens the feature store.
    shutil.rmtree(tmp_path / "features")
    code, again, err = run_cli(args, capsys, monkeypatch)
    assert code == 0, err
    assert json.loads(again) == json.loads(out) and not list((tmp_path / "features").rglob("*.parquet"))


def test_compare_redraws_the_heuristic_report_with_the_comparison_and_regret_compares_fusions(
        spaced: Path, tmp_path: Path, capsys, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    args = _spaced_args(spaced, tmp_path)
    code, out, err = run_cli(["run", "heuristic", *args, "--json"], capsys, monkeypatch)
    assert code == 0, err
    report = tmp_path / "runs" / "reports" / "my_data-heuristic"
    before = json.loads((report / "scores.json").read_text())
    assert "comparison" not in before  # no grid study yet
    code, out, err = run_cli(["compare", *args], capsys, monkeypatch)
    assert code == 0, err
    after = json.loads((report / "scores.json").read_text())
    assert after["comparison"]["regret_compares"] == "fusion"
    assert (report / "comparison.png").is_file()
    storage = f"sqlite:///{tmp_path / 'runs' / 'studies.db'}"
    h, g = (summarize(optuna.load_study(study_name=f"my_data-{s}", storage=storage)) for s in ("heuristic", "grid"))
    expected = g.best_by_modality["fusion"]["score"] - h.best_by_modality["fusion"]["score"]
    assert after["comparison"]["regret"] == pytest.approx(expected)
    assert "best fusion minus the heuristic's best fusion" in _one_line(out)
    assert f"Regret of the heuristic: {100 * expected:.2f} points" in _one_line(out)


def test_search_time_leaves_out_the_pause_between_two_runs_of_a_resumed_study(tmp_path: Path) -> None:
    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 's.db'}")
    study = optuna.create_study(storage=storage, study_name="s")
    from datetime import datetime, timedelta

    start = datetime(2026, 1, 1, 12, 0, 0)
    for begin, seconds in ((0, 2.0), (1, 2.0), (3600, 1.5)):  # two overlapping trials, then one an hour later
        trial = optuna.trial.create_trial(value=0.5, params={}, distributions={})
        trial.datetime_start = start + timedelta(seconds=begin)
        trial.datetime_complete = trial.datetime_start + timedelta(seconds=seconds)
        study.add_trial(trial)
    assert summarize(study).search_seconds == pytest.approx(3.0 + 1.5)


# -- 7. option names in errors -------------------------------------------------------------------


@pytest.mark.parametrize(("option", "value"), [("--epochs", "0"), ("--epochs", "-1"), ("--workers", "0"),
                                               ("--batch-size", "0"), ("--token-length", "0")])
def test_a_bad_value_is_named_by_the_option_the_user_typed(option: str, value: str, project: Path, tmp_path: Path,
                                                           capsys, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    code, out, err = run_cli(["run", "heuristic", *_common(project, tmp_path), option, value], capsys, monkeypatch)
    text = _one_line(err)
    assert code == 2 and f"error: {option} must be" in text and "TrainRecipe" not in text and "Settings." not in text


def test_python_callers_still_see_the_field_name() -> None:
    from difffeat_tune.probe.train import TrainRecipe

    with pytest.raises(ConfigError, match=r"TrainRecipe\.epochs must be a positive integer"):
        TrainRecipe(epochs=0)


# -- 8, 9. empty manifest, a file that is no image -----------------------------------------------


@pytest.mark.parametrize("name", ["empty.jsonl", "empty.csv"])
def test_an_empty_manifest_is_called_empty(name: str, tmp_path: Path) -> None:
    (tmp_path / name).write_text("")
    with pytest.raises(DataError, match=r"manifest .*empty\.(jsonl|csv) is empty"):
        load_manifest(tmp_path / name)


def test_an_image_file_holding_garbage_is_named_before_anything_is_written(tmp_path: Path, capsys, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "data").mkdir()
    root = write_manifest(tmp_path / "data", seed=1)
    (root / "images" / "val-3.png").write_bytes(b"this is not a PNG file\n" * 20)
    code, out, err = run_cli(["extract", *_common(root, tmp_path), "--modality", "image"], capsys, monkeypatch)
    text = _one_line(err)
    assert code == 2 and "Traceback" not in err
    assert "row id 'val-3'" in text and "val-3.png" in "".join(err.split()) and "nothing was extracted" in text
    assert not (tmp_path / "features").exists() or not list((tmp_path / "features").rglob("extraction.json"))


# -- 10. read-only commands create nothing -------------------------------------------------------


@pytest.mark.parametrize("command", ["report", "dashboard"])
def test_a_read_only_command_on_a_missing_database_creates_nothing(command: str, tmp_path: Path, capsys,
                                                                   monkeypatch) -> None:  # type: ignore[no-untyped-def]
    db = tmp_path / "other.db"
    code, out, err = run_cli([command, "--storage", f"sqlite:///{db}", "--runs", str(tmp_path / "runs")],
                             capsys, monkeypatch)
    assert code == 2 and "does not exist" in _one_line(err)
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_a_file_that_is_no_database_leaves_no_lock_file_beside_it(project: Path, tmp_path: Path, capsys,
                                                                  monkeypatch) -> None:  # type: ignore[no-untyped-def]
    notes = tmp_path / "notes.txt"
    notes.write_text("not a database\n" * 100)
    for args in (["report", "--storage", f"sqlite:///{notes}"],
                 ["run", "heuristic", *_common(project, tmp_path), "--storage", f"sqlite:///{notes}"]):
        code, out, err = run_cli(args, capsys, monkeypatch)
        assert code == 2 and "Traceback" not in err, err
        assert not (tmp_path / "notes.txt.lock").exists()
    assert notes.read_text() == "not a database\n" * 100


# -- 12. the backbones command -------------------------------------------------------------------


def test_the_backbones_command_prints_each_familys_default_source(capsys, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    code, out, err = run_cli(["backbones", "--json"], capsys, monkeypatch)
    rows = {(r["family"], r["modality"]): r for r in json.loads(out)}
    assert code == 0 and rows[("dit", "image")]["default"] == "facebook/DiT-XL-2-256"
    code, out, err = run_cli(["backbones"], capsys, monkeypatch)
    assert "default source" in out and "facebook/DiT-XL-2-256" in out


def test_the_backbones_command_answers_from_the_family_table_without_importing_a_model_library() -> None:
    import subprocess
    import sys

    from tests.test_cli import HEAVY

    code = ("import sys; sys.argv = ['difffeat-tune', 'backbones', '--json']\n"
            "from difffeat_tune import cli\n"
            "try:\n    cli.main()\nexcept SystemExit:\n    pass\n"
            f"print('HEAVY', sorted(m for m in {HEAVY!r} if m in sys.modules))\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "HEAVY []" in done.stdout, done.stdout[-500:] + done.stderr[-2000:]
    assert "Warning" not in done.stderr
