"""The loader table and load_named."""

from __future__ import annotations

from pathlib import Path

import pytest

from difffeat_tune._errors import ConfigError, DataError
from difffeat_tune.data._loaders import LOADERS, load_named
from tests.data.test_agnews import write_agnews
from tests.data.test_coco import write_coco

NAMES = {"coco", "coco-enhanced", "coco-plain", "vg500", "voc2007", "cifar100", "tiny-imagenet", "ag-news"}


def test_table_names() -> None:
    assert set(LOADERS) == NAMES


def test_load_named_dispatches_and_checks_options(tmp_path: Path) -> None:
    folder = write_agnews(tmp_path)
    assert load_named("ag-news", folder).name == "ag-news"
    with pytest.raises(ConfigError, match="bad options") as err:
        load_named("ag-news", folder, difficult="ignore")
    assert "options of ag-news: none" in str(err.value)


def test_load_named_coco_variants(tmp_path: Path) -> None:
    root = write_coco(tmp_path / "coco")
    plain = load_named("coco-plain", root, keep_empty=False)
    assert plain.name == "coco" and plain.options["enhanced"] is False and plain.options["keep_empty"] is False
    assert load_named("coco-enhanced", root).options["enhanced"] is True
    with pytest.raises(ConfigError, match="fixes enhanced=False"):
        load_named("coco-plain", root, enhanced=True)


def test_load_named_unknown_name_and_missing_root(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="unknown data set 'imagenet'") as err:
        load_named("imagenet", tmp_path)
    assert "coco-enhanced" in str(err.value) and "ag-news" in str(err.value)
    with pytest.raises(DataError, match="does not exist") as err:
        load_named("voc2007", tmp_path / "nowhere")
    assert "difffeat_tune.data.voc" in str(err.value)
