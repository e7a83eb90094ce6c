"""Users' own data: a manifest file (JSONL, CSV or Parquet) listing images, captions and labels.

A manifest has one row per example, with these columns:

``id`` (optional)
    A unique row id, the join key of every feature shard. Default: ``file_name``; for a text-only
    manifest without ids, ``row-000001``, ``row-000002``, ... (the 1-based row number).
``file_name`` (optional: leave the column out for text-only data)
    The image path, relative to the manifest's folder (or to ``root``); absolute paths work too.
``text`` (optional: leave the column out for image-only data)
    The caption; it must not be empty.
``labels`` (required)
    The row's class names: a list of strings in JSONL and Parquet; in CSV (or as a string in any
    format) one string with the names separated by ``|`` (for example ``cat|dog``). An empty list
    or empty cell is an example without labels (an all-zero row).
``split`` (optional)
    ``train``, ``val`` or ``test`` (``validation``, ``valid`` and ``dev`` mean ``val``). Without
    this column the caller must say which split the rows are: ``load_manifest(path,
    split="train")`` (a search needs a validation split, so this is never guessed silently).

Other columns are ignored. This matches the Hugging Face ``imagefolder`` convention: a folder
holding ``metadata.jsonl``, ``metadata.csv`` or ``metadata.parquet`` with ``file_name``,
``text`` and ``labels``; passing the folder loads its metadata file.

Label names, in label-matrix column order: the ``label_names`` argument, else a ``classes.txt``
next to the manifest (one name per line; it fixes the order and every row's labels must be in
it), else the sorted union of the labels found (logged).

Every row is validated when the manifest is loaded, before anything runs: a missing image file,
an unknown label, a duplicate id, an empty caption, a missing value, an unknown split. All the
problems found are reported together in one :class:`DataError` naming the manifest file and,
for each problem, the row (``line N`` for JSONL and CSV, ``row N`` for Parquet) and its id.
A missing column or an unreadable manifest (for example a malformed JSON line) is reported at
once. Images are read lazily (:class:`FileImages`); only their existence is checked up front.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import stat
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

import numpy as np

from difffeat_tune._errors import DataError
from difffeat_tune.data._base import Dataset, FileImages, Split

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ManifestConventions:
    """The names and formats a manifest follows (see the module docstring).

    Attributes:
        metadata_names: file names looked for when a folder is given, in order.
        suffixes: manifest file suffix -> format.
        classes_file: the optional class list next to the manifest.
        label_delimiter: separator of class names in a CSV cell (or any string ``labels`` value).
        split_aliases: accepted ``split`` values -> split name.
        splits: split names, in the order of the returned data set.
        max_reported: most problems listed in one error.
    """

    metadata_names: tuple[str, ...] = ("metadata.jsonl", "metadata.csv", "metadata.parquet")
    suffixes: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({
        ".jsonl": "jsonl", ".ndjson": "jsonl", ".csv": "csv", ".parquet": "parquet", ".pq": "parquet",
    }))
    classes_file: str = "classes.txt"
    label_delimiter: str = "|"
    split_aliases: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({
        "train": "train", "training": "train",
        "val": "val", "valid": "val", "validation": "val", "dev": "val",
        "test": "test", "testing": "test",
    }))
    splits: tuple[str, ...] = ("train", "val", "test")
    max_reported: int = 20


CONVENTIONS = ManifestConventions()


@dataclass(frozen=True)
class _Record:
    where: str  # "line 7" or "row 7"
    index: int  # 1-based data row number
    values: Mapping[str, object]


@dataclass(frozen=True)
class _Problem:
    where: str
    row_id: str | None
    message: str
    hint: str


@dataclass
class _Problems:
    """Problems found while validating a manifest, raised together."""

    path: Path
    items: list[_Problem] = field(default_factory=list)

    def add(self, record: _Record, row_id: str | None, message: str, hint: str) -> None:
        self.items.append(_Problem(record.where, row_id, message, hint))

    def raise_if_any(self, conventions: ManifestConventions) -> None:
        if not self.items:
            return
        shown = self.items[: conventions.max_reported]
        lines = [f"  {p.where} (id {p.row_id!r}): {p.message}" if p.row_id is not None
                 else f"  {p.where}: {p.message}" for p in shown]
        if len(self.items) > len(shown):
            lines.append(f"  ... and {len(self.items) - len(shown)} more")
        count = len(self.items)
        hints = list(dict.fromkeys(p.hint for p in self.items))
        raise DataError(f"manifest {self.path}: {count} problem{'s' if count > 1 else ''}:\n" + "\n".join(lines),
                        "; ".join(hints))


# --------------------------------------------------------------------------------------------
# Reading the three formats
# --------------------------------------------------------------------------------------------


def _resolve(path: Path, conventions: ManifestConventions) -> tuple[Path, str]:
    """The manifest file (a folder means its metadata file) and its format."""
    if not path.exists():
        raise DataError(f"manifest {path} does not exist",
                        "give a .jsonl, .csv or .parquet manifest, or a folder holding metadata.jsonl/.csv/.parquet")
    if path.is_dir():
        found = [path / name for name in conventions.metadata_names if (path / name).is_file()]
        if not found:
            raise DataError(f"folder {path} holds no manifest",
                            f"add one of {', '.join(conventions.metadata_names)} (columns file_name, text, labels)")
        if len(found) > 1:
            raise DataError(f"folder {path} holds several manifests: {', '.join(p.name for p in found)}",
                            "keep one, or pass the manifest file itself")
        path = found[0]
    fmt = conventions.suffixes.get(path.suffix.lower())
    if fmt is None:
        raise DataError(f"manifest {path}: unknown format {path.suffix!r}",
                        f"use one of {', '.join(sorted(conventions.suffixes))}")
    return path, fmt


def _read_jsonl(path: Path) -> tuple[list[_Record], list[str]]:
    records: list[_Record] = []
    columns: dict[str, None] = {}
    try:
        with path.open(encoding="utf-8-sig") as f:
            for number, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                try:
                    values = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise DataError(f"manifest {path}, line {number}: malformed JSON ({exc.msg}, column {exc.colno})",
                                    "each line must be one JSON object; fix or remove the line") from None
                if not isinstance(values, dict):
                    raise DataError(f"manifest {path}, line {number}: expected a JSON object, "
                                    f"got {type(values).__name__}", "each line must be one JSON object")
                columns.update(dict.fromkeys(values))
                records.append(_Record(f"line {number}", len(records) + 1, values))
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"manifest {path} cannot be read ({exc})", "check the file is UTF-8 text") from exc
    return records, list(columns)


def _read_csv(path: Path) -> tuple[list[_Record], list[str]]:
    records: list[_Record] = []
    try:
        with path.open(encoding="utf-8-sig", newline="") as f:
            reader = csv.DictReader(f)
            columns = [c.strip() for c in (reader.fieldnames or [])]
            try:
                for row in reader:
                    where = f"line {reader.line_num}"
                    if None in row:
                        raise DataError(f"manifest {path}, {where}: more cells than the header's "
                                        f"{len(columns)} columns",
                                        "quote cells that contain commas, or fix the row")
                    values = {k.strip(): v for k, v in row.items()}
                    records.append(_Record(where, len(records) + 1, values))
            except csv.Error as exc:
                raise DataError(f"manifest {path}, line {reader.line_num}: malformed CSV ({exc})",
                                "fix the quoting of that line") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"manifest {path} cannot be read ({exc})", "check the file is UTF-8 CSV text") from exc
    return records, columns


def _read_parquet(path: Path) -> tuple[list[_Record], list[str]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except (OSError, pa.ArrowException) as exc:
        raise DataError(f"manifest {path} cannot be read as Parquet ({exc})",
                        "check the file is a Parquet file") from exc
    rows = table.to_pylist()
    records = [_Record(f"row {i}", i, values) for i, values in enumerate(rows, start=1)]
    return records, list(table.column_names)


_READERS = MappingProxyType({"jsonl": _read_jsonl, "csv": _read_csv, "parquet": _read_parquet})


# --------------------------------------------------------------------------------------------
# Labels
# --------------------------------------------------------------------------------------------


def _read_classes(path: Path) -> tuple[str, ...]:
    names: dict[str, int] = {}
    try:
        lines = path.read_text(encoding="utf-8-sig").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"class list {path} cannot be read ({exc})", "check the file is UTF-8 text") from exc
    for number, line in enumerate(lines, start=1):
        name = line.strip()
        if not name:
            continue
        if name in names:
            raise DataError(f"class list {path}, line {number}: duplicate class {name!r} (first on line {names[name]})",
                            "list each class once")
        names[name] = number
    if not names:
        raise DataError(f"class list {path} is empty", "list one class name per line, or delete the file")
    return tuple(names)


def _parse_labels(value: object, conventions: ManifestConventions) -> list[str] | str:
    """The class names of one ``labels`` value, or an error message."""
    if value is None:
        return "no labels value (use [] or an empty cell for an example without labels)"
    if isinstance(value, str):
        items: list[object] = list(value.split(conventions.label_delimiter))
    elif isinstance(value, (list, tuple, np.ndarray)):
        items = list(value)
    else:
        return f"labels must be a list of class names, got {type(value).__name__} {value!r}"
    names = []
    for item in items:
        if not isinstance(item, str):
            return f"labels must be class names (strings), got {item!r}"
        if item.strip():
            names.append(item.strip())
    return list(dict.fromkeys(names))


def _check_label_names(names: Sequence[str]) -> tuple[str, ...]:
    out = tuple(str(n) for n in names)
    if not out:
        raise DataError("label_names is empty", "give at least one class name")
    if len(set(out)) != len(out):
        dup = next(n for i, n in enumerate(out) if n in out[:i])
        raise DataError(f"label_names lists {dup!r} twice", "list each class once")
    return out


@dataclass(frozen=True)
class _Row:
    """One valid manifest row."""

    row_id: str
    labels: list[str]
    split: str
    caption: str | None
    file_name: str | None
    image_path: str | None
    image_size: int


@dataclass
class _RowChecker:
    """Validates rows one by one, recording every problem (and the ids seen, for duplicates)."""

    has_images: bool
    has_text: bool
    has_ids: bool
    has_split: bool
    fixed_split: str | None
    known: frozenset[str] | None  # the label names, when fixed before reading the rows
    known_from: str
    image_root: Path
    fmt: str
    conventions: ManifestConventions
    problems: _Problems
    first_seen: dict[str, str] = field(default_factory=dict)

    def check(self, record: _Record) -> _Row | None:
        """The valid row, or ``None`` after recording what is wrong with it."""
        values = record.values
        n_problems = len(self.problems.items)
        file_name = _text(values.get("file_name")) if self.has_images else None
        row_id = self._row_id(record, file_name)
        image_path, image_size = self._image(record, row_id, file_name)
        caption = self._caption(record, row_id)
        labels = self._labels(record, row_id)
        split = self._split(record, row_id)
        if len(self.problems.items) > n_problems:
            return None
        return _Row(row_id=row_id, labels=labels, split=split, caption=caption,  # type: ignore[arg-type]
                    file_name=file_name, image_path=image_path, image_size=image_size)

    def _row_id(self, record: _Record, file_name: str | None) -> str | None:
        raw = record.values.get("id") if self.has_ids else None
        if raw is not None:
            row_id = _text(raw)
            if row_id is None:
                self.problems.add(record, None, f"bad id {raw!r}", "ids must be non-empty strings or integers")
                return None
        else:
            row_id = file_name if self.has_images else f"row-{record.index:06d}"
        if row_id is not None:
            if row_id in self.first_seen:
                self.problems.add(record, row_id, f"duplicate id (first at {self.first_seen[row_id]})",
                                  "make ids unique (or file names, when there is no id column)")
            else:
                self.first_seen[row_id] = record.where
        return row_id

    def _image(self, record: _Record, row_id: str | None, file_name: str | None) -> tuple[str | None, int]:
        if not self.has_images:
            return None, 0
        if file_name is None:
            self.problems.add(record, row_id, "no file_name", "give each row an image path")
            return None, 0
        image = self.image_root / file_name
        try:
            st = image.stat()
            if stat.S_ISREG(st.st_mode):
                return str(image), st.st_size
        except OSError:
            pass
        self.problems.add(record, row_id, f"missing image file {image}",
                          f"check file_name (relative to {self.image_root}), or give the images' folder with --root (Python: root=), or remove the row")
        return None, 0

    def _caption(self, record: _Record, row_id: str | None) -> str | None:
        if not self.has_text:
            return None
        caption = record.values.get("text")
        if isinstance(caption, str) and caption.strip():
            return caption
        self.problems.add(record, row_id, "empty caption" if caption is None or isinstance(caption, str)
                          else f"caption is not text: {caption!r}",
                          "give every row a caption, or drop the 'text' column for image-only data")
        return None

    def _labels(self, record: _Record, row_id: str | None) -> list[str]:
        labels = _parse_labels(record.values.get("labels"), self.conventions)
        if isinstance(labels, str):
            self.problems.add(record, row_id, labels, "fix the row's labels")
            return []
        for unknown in (n for n in labels if self.known is not None and n not in self.known):
            hint = f"add it to {self.known_from} or fix the row"
            if self.fmt == "csv" and any(sep in unknown for sep in ",;"):
                hint += f" (CSV labels are separated by '{self.conventions.label_delimiter}')"
            self.problems.add(record, row_id, f"unknown label {unknown!r} (not in {self.known_from})", hint)
        return labels

    def _split(self, record: _Record, row_id: str | None) -> str | None:
        if not self.has_split:
            return self.fixed_split
        raw = record.values.get("split")
        name = self.conventions.split_aliases.get(raw.strip().lower()) if isinstance(raw, str) else None
        if name is None:
            self.problems.add(record, row_id, f"unknown split {raw!r}",
                              f"use one of {', '.join(self.conventions.splits)}")
        return name


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------


def _text(value: object) -> str | None:
    """A non-empty string value, or None."""
    if value is None:
        return None
    if isinstance(value, str):
        return value if value.strip() else None
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return str(value)
    return None


def load_manifest(path: str | Path, *, label_names: Sequence[str] | None = None, root: str | Path | None = None,
                  split: str | None = None, conventions: ManifestConventions = CONVENTIONS) -> Dataset:
    """Load a manifest (see the module docstring) as a multi-label :class:`Dataset`.

    Args:
        path: a ``.jsonl``, ``.csv`` or ``.parquet`` manifest, or a folder holding
            ``metadata.jsonl``, ``metadata.csv`` or ``metadata.parquet``.
        label_names: the class names in label-column order (default: ``classes.txt`` next to the
            manifest, else the sorted union of the labels found).
        root: the folder image paths are relative to (default: the manifest's folder).
        split: for a manifest without a ``split`` column, the split every row belongs to
            ("train", "val" or "test"); must be left out when the column exists.
        conventions: file names, delimiter and split names.

    Returns:
        A data set named after the manifest (its folder's name for ``metadata.*``), with one
        split per split name found, int8 0/1 labels, captions if there is a ``text`` column and
        images if there is a ``file_name`` column.

    Raises:
        DataError: if the manifest cannot be read, lacks a required column, or has bad rows (all
            bad rows are listed, each with its line or row number and id).
    """
    manifest, fmt = _resolve(Path(path), conventions)
    records, columns = _READERS[fmt](manifest)
    if not records and not columns:
        raise DataError(f"manifest {manifest} is empty",
                        "write one row per example (JSON lines, or a CSV header and rows) with 'labels' and "
                        "'file_name' and/or 'text'")
    column_set = set(columns)
    if "labels" not in column_set:
        raise DataError(f"manifest {manifest} has no 'labels' column (columns: {', '.join(columns) or 'none'})",
                        "add a 'labels' column: a list of class names per row "
                        f"('{conventions.label_delimiter}'-separated in CSV)")
    has_images, has_text = "file_name" in column_set, "text" in column_set
    if not (has_images or has_text):
        raise DataError(f"manifest {manifest} has neither a 'file_name' nor a 'text' column "
                        f"(columns: {', '.join(columns)})",
                        "add 'file_name' (image path) and/or 'text' (caption)")
    if not records:
        raise DataError(f"manifest {manifest} has no rows", "add one row per example")
    has_split = "split" in column_set
    fixed_split = None
    if has_split and split is not None:
        raise DataError(f"manifest {manifest} has a 'split' column, and split={split!r} was also given",
                        "leave out split=, or drop the column")
    if not has_split:
        if split is None:
            raise DataError(f"manifest {manifest} has no 'split' column",
                            "add a 'split' column (train / val / test), or pass split='train' (or 'val', "
                            "'test') to put every row in that split")
        fixed_split = conventions.split_aliases.get(str(split).strip().lower())
        if fixed_split is None:
            raise DataError(f"unknown split {split!r}", f"use one of {', '.join(conventions.splits)}")

    # Label names: the argument, else classes.txt, else (after reading the rows) their union.
    classes_path = manifest.parent / conventions.classes_file
    names: tuple[str, ...] | None
    if label_names is not None:
        names, source = _check_label_names(label_names), "argument"
    elif classes_path.is_file():
        names, source = _read_classes(classes_path), conventions.classes_file
    else:
        names, source = None, "union"
    known_from = "label_names" if source == "argument" else conventions.classes_file

    checker = _RowChecker(
        has_images=has_images, has_text=has_text, has_ids="id" in column_set, has_split=has_split,
        fixed_split=fixed_split, known=None if names is None else frozenset(names), known_from=known_from,
        image_root=Path(root) if root is not None else manifest.parent, fmt=fmt, conventions=conventions,
        problems=_Problems(manifest),
    )
    rows = [row for row in map(checker.check, records) if row is not None]
    problems = checker.problems
    row_labels = [row.labels for row in rows]
    ids = [row.row_id for row in rows]

    if names is None:  # the union of what the rows say
        names = tuple(sorted({n for labels in row_labels for n in labels}))
        if not names and not problems.items:
            raise DataError(f"manifest {manifest}: no row has any label", "give rows their class names")
        logger.info("manifest %s: no %s, using the %d labels found (sorted): %s", manifest,
                    conventions.classes_file, len(names), ", ".join(names))
    label_index = {n: i for i, n in enumerate(names)}
    problems.raise_if_any(conventions)

    matrix = np.zeros((len(ids), len(names)), dtype=np.int8)
    for r, labels in enumerate(row_labels):
        matrix[r, [label_index[n] for n in labels]] = 1
    splits: dict[str, Split] = {}
    for name in conventions.splits:
        members = [r for r, row in enumerate(rows) if row.split == name]
        if not members:
            continue
        split_ids = tuple(ids[r] for r in members)
        captions = tuple(str(rows[r].caption) for r in members) if has_text else None
        paths = [str(rows[r].image_path) for r in members]
        splits[name] = Split(name=name, ids=split_ids, labels=matrix[members], captions=captions,
                             images=FileImages(paths, split_ids) if has_images else None)
    options: dict[str, object] = {"format": fmt, "label_source": source}
    if fixed_split is not None:
        options["split"] = fixed_split
    if has_images:  # a changed image file changes the fingerprint (moving the folder does not)
        digest = hashlib.sha256()
        for row in rows:
            digest.update(f"{row.row_id}\x1f{row.file_name}\x1f{row.image_size}\x1e".encode())
        options["image_files"] = digest.hexdigest()[:16]
    dataset_name = manifest.parent.name if manifest.stem == "metadata" else manifest.stem
    logger.info("loaded manifest %s: %s; %d labels", manifest,
                ", ".join(f"{s.name} {len(s)}" for s in splits.values()), len(names))
    return Dataset(name=dataset_name or "manifest", label_names=names, task="multilabel", splits=splits,
                   options=options)
