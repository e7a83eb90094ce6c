"""AG News loader on tiny CSV fixtures in the exact upstream format (and a mirror with a header)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

from difffeat_tune._errors import DataError
from difffeat_tune.data.agnews import STANDARD_CLASSES, clean_text, load_ag_news

# Upstream: every field quoted, "" escapes, literal \n and backslashes in the text, no header.
TRAIN_CSV = (
    '"3","Wall St. Bears Claw Back Into the Black (Reuters)","Reuters - Short-sellers, Wall Street\'s dwindling\\'
    'band of ultra-cynics, are seeing green again."\n'
    '"2","Phelps wins ""gold""!","ATHENS - Michael Phelps won.\\nHe was happy."\n'
    '"4","Space probe","A probe costs \\$1 billion, said NASA"\n'
)
TEST_CSV = '"1","Summit ends","Leaders met."\n"4","New chip",""\n'
CLASSES_TXT = "World\nSports\nBusiness\nSci/Tech\n"


def write_agnews(root: Path, *, header: bool = False, classes: bool = True) -> Path:
    folder = root / "ag_news_csv"
    folder.mkdir(parents=True)
    prefix = '"Class Index","Title","Description"\n' if header else ""
    (folder / "train.csv").write_text(prefix + TRAIN_CSV)
    (folder / "test.csv").write_text(prefix + TEST_CSV)
    if classes:
        (folder / "classes.txt").write_text(CLASSES_TXT)
    return folder


EXPECTED_TRAIN = (
    "Wall St. Bears Claw Back Into the Black (Reuters). Reuters - Short-sellers, Wall Street's dwindling band of "
    "ultra-cynics, are seeing green again.",
    'Phelps wins "gold"! ATHENS - Michael Phelps won. He was happy.',
    "Space probe. A probe costs $1 billion, said NASA",
)


def test_ag_news_reads_original_format(tmp_path: Path) -> None:
    ds = load_ag_news(write_agnews(tmp_path))
    assert ds.name == "ag-news" and ds.task == "singlelabel"
    assert ds.label_names == ("World", "Sports", "Business", "Sci/Tech")
    train, test = ds.split("train"), ds.split("test")
    assert train.ids == ("train-000000", "train-000001", "train-000002") and test.ids == ("test-000000", "test-000001")
    assert train.labels.dtype == np.int8 and train.labels.argmax(axis=1).tolist() == [2, 1, 3]
    assert (train.labels.sum(axis=1) == 1).all()
    assert train.captions == EXPECTED_TRAIN
    assert test.captions == ("Summit ends. Leaders met.", "New chip")
    assert train.images is None and not ds.has_images and ds.has_text


def test_ag_news_with_header_gives_the_same_data(tmp_path: Path) -> None:
    plain = load_ag_news(write_agnews(tmp_path / "plain"))
    with_header = load_ag_news(write_agnews(tmp_path / "mirror", header=True))
    assert with_header.split("train").captions == EXPECTED_TRAIN
    assert with_header.fingerprint() == plain.fingerprint()


def test_ag_news_parent_folder_and_missing_classes(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    write_agnews(tmp_path, classes=False)
    with caplog.at_level(logging.WARNING):
        ds = load_ag_news(tmp_path)
    assert ds.label_names == STANDARD_CLASSES and "classes.txt is missing" in caplog.text


def test_ag_news_errors_name_file_and_line(tmp_path: Path) -> None:
    folder = write_agnews(tmp_path)
    (folder / "test.csv").write_text('"1","a","b"\n"5","c","d"\n')
    with pytest.raises(DataError, match=r"test.csv line 2: class '5' is not a number from 1 to 4"):
        load_ag_news(folder)
    (folder / "test.csv").write_text('"1","a","b"\n"2","only two"\n')
    with pytest.raises(DataError, match=r"test.csv line 2: expected 3 fields, got 2"):
        load_ag_news(folder)
    (folder / "train.csv").unlink()
    with pytest.raises(DataError) as err:
        load_ag_news(folder)
    assert str(folder / "train.csv") in str(err.value)


def test_clean_text() -> None:
    assert clean_text("a\\nb  c\\\\d \\$5") == "a b c d $5"
