"""What a study records of its search space loads the space again, from any folder."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest

from difffeat_tune._errors import ConfigError
from difffeat_tune.probe.objective import Objective
from difffeat_tune.search.runner import record_study_attrs
from difffeat_tune.settings import Settings
from difffeat_tune.space import load_space
from tests.conftest import write_synthetic_store

SMALL = """
[image]
t = [10, 30]
b = [4, 8]
"""


def test_a_shipped_space_is_recorded_by_its_label_which_loads_it_from_any_folder(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    space = load_space("embedded")
    assert space.reference == space.label == "searchspaces/embedded.toml"
    monkeypatch.chdir(tmp_path)  # no searchspaces/ folder here
    again = load_space(space.reference)
    assert again == space and again.reference == space.reference


def test_a_space_file_is_recorded_by_its_absolute_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "small.toml").write_text(SMALL)
    monkeypatch.chdir(tmp_path)
    space = load_space("small.toml")
    assert space.label == "small.toml" and space.reference == str(tmp_path / "small.toml")
    monkeypatch.chdir(tmp_path.parent)
    assert load_space(space.reference).image == space.image
    with pytest.raises(ConfigError, match="search space file small.toml does not exist"):
        load_space(space.label)  # what older versions recorded only loads from the folder it was run in


def test_a_study_recorded_with_the_relative_path_of_its_space_resumes(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "small.toml").write_text(SMALL)
    (tmp_path / "other.toml").write_text(SMALL.replace("[10, 30]", "[10, 50]"))
    monkeypatch.chdir(tmp_path)
    view = write_synthetic_store(tmp_path / "features")
    def record(space_file: str, previous: str) -> optuna.Study:
        settings = Settings.create(space=load_space(space_file), device="cpu")
        study = optuna.create_study(direction="maximize")
        study.set_user_attr("space", previous)
        record_study_attrs(study, settings, Objective(view, settings.probe, device="cpu"))
        return study

    assert record("small.toml", "small.toml").user_attrs["space"] == str(tmp_path / "small.toml")
    assert record("small.toml", str(tmp_path / "small.toml")).user_attrs["space"] == str(tmp_path / "small.toml")
    with pytest.raises(ConfigError, match="was run with space small.toml, not .*other.toml"):
        record("other.toml", "small.toml")
