"""README "Extending": each kind of plug-in is one table entry, and the command line then offers it.

Each test adds a toy entry to its table (as an edit of the module would) and runs it through the
command line on a small manifest with a one-block space and three probe epochs.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import MappingProxyType

import optuna
import pytest
from torch import Tensor, nn
from typer.testing import CliRunner

from difffeat_tune import cli
from difffeat_tune.probe.heads import _FusionHead
from tests.test_cli import SPACE, run_cli, write_manifest

#: The shipped search spaces (read by path: the files of this checkout).
SHIPPED = sorted((Path(__file__).parents[1] / "searchspaces").glob("*.toml"))
#: One image and one text block: a whole search in seconds.
ONE_BLOCK_SPACE = SPACE.replace("b = [8, 12]", "b = [8]").replace("b = [8, 24]", "b = [8]")


@pytest.fixture(scope="module")
def toy_project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = write_manifest(tmp_path_factory.mktemp("toy"), seed=5)
    (root / "space.toml").write_text(ONE_BLOCK_SPACE)
    return root


def _args(root: Path, tmp: Path) -> list[str]:
    return ["--space", str(root / "space.toml"), "--features", str(tmp / "features"), "--device", "cpu",
            "--runs", str(tmp / "runs"), "--threads", "1", "--no-report", "--json"]


def _add(monkeypatch: pytest.MonkeyPatch, module: object, table: str, name: str, entry: object) -> None:
    """``module.table`` with one more entry, as one more line in the module's table would give."""
    monkeypatch.setattr(module, table, MappingProxyType({**getattr(module, table), name: entry}))


def test_a_new_sampler_gets_its_run_command(toy_project: Path, tmp_path: Path, capsys, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from difffeat_tune.search import _samplers

    grid = _samplers.SAMPLERS["grid"]
    _add(monkeypatch, _samplers, "SAMPLERS", "toy",
         _samplers.SamplerKind("toy", "A toy: the grid under another name.", grid.build, grid.state))
    listed = CliRunner().invoke(cli.app, ["run", "--help"])
    assert listed.exit_code == 0 and "toy" in listed.output and "A toy: the grid" in listed.output
    code, out, err = run_cli(["run", "toy", "--dataset", str(toy_project / "metadata.jsonl"),
                              *_args(toy_project, tmp_path)], capsys, monkeypatch)
    assert code == 0, err
    summary = json.loads(out)
    assert summary["study_name"] == f"{toy_project.name}-toy" and summary["sampler"] == "toy"
    assert summary["trials"] == {"complete": 2 * 2}  # image t x text t, the default fusion method
    code, out, err = run_cli(["run", "nosuch", "--dataset", str(toy_project / "metadata.jsonl")], capsys, monkeypatch)
    assert code == 2 and "No sampler 'nosuch': use one of heuristic, grid, toy" in " ".join(err.split())


def test_a_new_data_set_is_found_by_its_name(toy_project: Path, tmp_path: Path, capsys, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    import difffeat_tune.data as data
    from difffeat_tune.data import _loaders, load_manifest

    def load_toy(root: Path) -> object:
        return load_manifest(Path(root) / "metadata.jsonl")

    for module in (data, _loaders):  # the package re-exports the table under the same name
        _add(monkeypatch, module, "DATASETS", "toy-set", _loaders.DatasetKind(load_toy, True))
    code, out, err = run_cli(["run", "heuristic", "--dataset", "toy-set", "--root", str(toy_project),
                              *_args(toy_project, tmp_path)], capsys, monkeypatch)
    assert code == 0, err
    summary = json.loads(out)
    assert summary["phases"]["image"] == 2 and summary["phases"]["text"] == 2 and summary["best_config"]
    storage = f"sqlite:///{tmp_path / 'runs' / 'studies.db'}"
    assert optuna.load_study(study_name=summary["study_name"], storage=storage).user_attrs["dataset"] == "toy-set"


def test_every_shipped_space_searches_every_fusion_head() -> None:
    from difffeat_tune.config import FUSION_METHODS
    from difffeat_tune.space import load_space

    assert SHIPPED
    for path in SHIPPED:
        assert load_space(path).fusion_methods == FUSION_METHODS, path


class ToyMean(_FusionHead):
    """A toy fusion head: the mean of both features projected to ``d_alg``."""

    def __init__(self, image_dim: int, text_dim: int, n_classes: int, d_alg: int = 16) -> None:
        super().__init__(image_dim, text_dim, n_classes)
        self.image_proj = nn.Linear(image_dim, d_alg)
        self.text_proj = nn.Linear(text_dim, d_alg)
        self.classifier = nn.Linear(d_alg, n_classes)

    def fuse(self, image: Tensor, text: Tensor) -> Tensor:
        return (self.image_proj(image) + self.text_proj(text)) / 2


def test_a_new_fusion_head_is_searched_by_a_space_that_lists_no_methods(toy_project: Path, tmp_path: Path, capsys,  # type: ignore[no-untyped-def]
                                                                        monkeypatch) -> None:
    from difffeat_tune import config, space
    from difffeat_tune.probe import heads
    from difffeat_tune.search import _options

    for module in (config, heads):  # the heads module reads the table under the same name
        _add(monkeypatch, module, "HEAD_TABLE", "toy_mean", f"{__name__}:ToyMean")
    methods = (*config.FUSION_METHODS, "toy_mean")
    for module in (config, heads, space, _options):  # FUSION_METHODS: the table's heads but "linear"
        monkeypatch.setattr(module, "FUSION_METHODS", methods)
    assert all(space.load_space(path).fusion_methods == methods for path in SHIPPED)  # each searches it
    spaced = tmp_path / "space.toml"
    spaced.write_text(ONE_BLOCK_SPACE.replace('methods = ["linear_add", "simple_concat"]\n', ""))
    args = [*_args(toy_project, tmp_path), "--space", str(spaced)]
    code, out, err = run_cli(["run", "grid", "--dataset", str(toy_project / "metadata.jsonl"), *args,
                              "--fusion", "toy_mean"], capsys, monkeypatch)
    assert code == 0, err
    summary = json.loads(out)
    assert summary["trials"] == {"complete": 2 * 2} and summary["best_config"]["fusion"] == "toy_mean"
