"""AG News (single-label, 4 classes), text only.

Expected folder layout (``ag_news_csv.tar.gz`` extracted)::

    root/
        classes.txt   class names, one per line, for class numbers 1..4 (World, Sports, Business, Sci/Tech)
        train.csv     120,000 rows: "<class 1-4>","<title>","<description>"
        test.csv      7,600 rows

``root`` may also be the folder holding ``ag_news_csv/``. The original files have no header;
some mirrors (e.g. Kaggle's) add one ("Class Index,Title,Description"): it is detected (the first
field of the first row is not a number) and its columns are matched by name. Fields use CSV
``""`` escapes; the literal two-character sequence ``\\n`` and other stray backslashes of the
original text become spaces (``\\$`` becomes ``$``), and runs of whitespace collapse.

Splits "train" and "test"; row ids are ``"train-000000"`` ... (the row's position; the files hold
no id). The caption is ``title + ". " + description`` (just a space after a title that already
ends in ".", "!" or "?"). Images are ``None``. Without ``classes.txt`` the standard four names are
used (with a warning).
"""

from __future__ import annotations

import csv
import io
import logging
import re
from pathlib import Path

import numpy as np

from difffeat_tune._errors import DataError
from difffeat_tune.data._base import Dataset, Split
from difffeat_tune.data._files import read_lines, read_text, require_root

logger = logging.getLogger(__name__)

DATASET = "AG News"
FOLDER = "ag_news_csv"
SPLITS: tuple[str, ...] = ("train", "test")
#: The class names of the original ``classes.txt``, used only when that file is absent.
STANDARD_CLASSES: tuple[str, ...] = ("World", "Sports", "Business", "Sci/Tech")
#: Class numbers in the CSV start at 1.
FIRST_CLASS = 1
TITLE_SEPARATOR = ". "
#: Header names (lower case) of the class, title and description columns in mirrors that add one.
HEADER_NAMES: tuple[tuple[str, ...], ...] = (
    ("class index", "class", "label", "class_index"),
    ("title",),
    ("description", "text", "content"),
)
_COLUMNS = len(HEADER_NAMES)
_HINT = "use the original ag_news_csv files (or a mirror with the same three columns)"
_TERMINAL_PUNCTUATION = ".!?"


def clean_text(text: str) -> str:
    """Undo the original's escapes: literal ``\\n`` and stray backslashes become spaces,
    ``\\$`` becomes ``$``; whitespace runs collapse to one space."""
    text = text.replace("\\n", " ").replace("\\$", "$").replace("\\", " ")
    return re.sub(r"\s+", " ", text).strip()


def _caption(title: str, description: str) -> str:
    if not title or not description:
        return title or description
    separator = " " if title[-1] in _TERMINAL_PUNCTUATION else TITLE_SEPARATOR
    return title + separator + description


def _header_columns(row: list[str], path: Path) -> tuple[int, int, int]:
    lowered = [cell.strip().lower() for cell in row]
    columns = []
    for accepted in HEADER_NAMES:
        matches = [i for i, cell in enumerate(lowered) if cell in accepted]
        columns.append(matches[0] if matches else None)
    if None in columns:
        if len(row) == _COLUMNS:
            logger.warning("%s: header %s of %s not recognised: reading its columns as class, title, description",
                           DATASET, row, path)
            return 0, 1, 2
        raise DataError(f"{DATASET}: {path}: header {row} has no class/title/description columns", _HINT)
    return columns[0], columns[1], columns[2]  # type: ignore[return-value]


def _read_split(path: Path, n_classes: int) -> tuple[list[int], list[str], bool]:
    text = read_text(path, DATASET, _HINT)
    reader = csv.reader(io.StringIO(text, newline=""))
    classes: list[int] = []
    captions: list[str] = []
    columns = (0, 1, 2)
    header = False
    try:
        for row in reader:
            lineno = reader.line_num
            if not row or all(not cell.strip() for cell in row):
                continue
            if not classes and not header and not row[0].strip().lstrip("-").isdigit():
                columns, header = _header_columns(row, path), True
                continue
            if len(row) <= max(columns):
                raise DataError(f"{DATASET}: {path} line {lineno}: expected {_COLUMNS} fields, got {len(row)}: {row}",
                                _HINT)
            label_text = row[columns[0]].strip()
            try:
                label = int(label_text)
            except ValueError:
                label = None
            if label is None or not FIRST_CLASS <= label < FIRST_CLASS + n_classes:
                raise DataError(f"{DATASET}: {path} line {lineno}: class {label_text!r} is not a number from "
                                f"{FIRST_CLASS} to {FIRST_CLASS + n_classes - 1}", _HINT)
            classes.append(label - FIRST_CLASS)
            captions.append(_caption(clean_text(row[columns[1]]), clean_text(row[columns[2]])))
    except csv.Error as exc:
        raise DataError(f"{DATASET}: {path} line {reader.line_num}: malformed CSV ({exc})", _HINT) from exc
    if not classes:
        raise DataError(f"{DATASET}: {path} holds no data row", _HINT)
    return classes, captions, header


def load_ag_news(root: str | Path) -> Dataset:
    """Load AG News from its CSV files (layout in the module docstring).

    Args:
        root: the ``ag_news_csv`` folder (or its parent).

    Returns:
        A text-only single-label :class:`Dataset` named "ag-news" with splits "train" and "test".

    Raises:
        DataError: naming the file for a missing or malformed CSV (with the line) or a class
            number outside the classes of ``classes.txt``.
    """
    base = require_root(root, DATASET)
    if not (base / "train.csv").exists() and (base / FOLDER).is_dir():
        base = base / FOLDER
    classes_path = base / "classes.txt"
    if classes_path.exists():
        names = tuple(line for _, line in read_lines(classes_path, DATASET, _HINT))
        if not names:
            raise DataError(f"{DATASET}: {classes_path} lists no class", "one class name per line, class 1 first")
    else:
        logger.warning("%s: %s is missing: using the standard class names %s", DATASET, classes_path,
                       ", ".join(STANDARD_CLASSES))
        names = STANDARD_CLASSES
    splits: dict[str, Split] = {}
    headers: dict[str, bool] = {}
    for split in SPLITS:
        classes, captions, headers[split] = _read_split(base / f"{split}.csv", len(names))
        labels = np.zeros((len(classes), len(names)), dtype=np.int8)
        labels[np.arange(len(classes)), classes] = 1
        splits[split] = Split(name=split, ids=tuple(f"{split}-{i:06d}" for i in range(len(classes))),
                              labels=labels, captions=tuple(captions), images=None)
        logger.info("%s %s: %d rows%s", DATASET, split, len(classes), " (header skipped)" if headers[split] else "")
    return Dataset(name="ag-news", label_names=names, task="singlelabel", splits=splits)
