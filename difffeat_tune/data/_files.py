"""File helpers shared by the public data-set loaders: every failure is a :class:`DataError`
naming the exact file (and, for a row problem, the row) and saying what to do."""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Collection, Iterator, Mapping, Sequence
from pathlib import Path

from difffeat_tune._errors import DataError

logger = logging.getLogger(__name__)

#: Bytes read at a time when streaming a large JSON array.
_JSON_CHUNK = 1 << 20
_NUMBER_START = frozenset("-0123456789")
_NUMBER_END = re.compile(r"[,\]\s]")
#: How many missing images an error message lists by name.
_MAX_LISTED = 5


def require_root(root: str | os.PathLike[str], dataset: str) -> Path:
    """``root`` as a :class:`Path`, or a :class:`DataError` if it is not an existing folder."""
    path = Path(root).expanduser()
    if not path.is_dir():
        raise DataError(f"{dataset}: data folder {path} does not exist or is not a folder",
                        f"pass the folder that holds the {dataset} files (see the loader's docstring)")
    return path


def require_file(path: Path, dataset: str, hint: str | None = None) -> Path:
    """``path`` if it is an existing file, else a :class:`DataError` naming it."""
    if not path.is_file():
        what = "is a folder, not a file" if path.is_dir() else "is missing"
        raise DataError(f"{dataset}: {path} {what}",
                        hint or f"check the {dataset} folder layout described in the loader's docstring")
    return path


def require_dir(path: Path, dataset: str, hint: str | None = None) -> Path:
    """``path`` if it is an existing folder, else a :class:`DataError` naming it."""
    if not path.is_dir():
        raise DataError(f"{dataset}: folder {path} is missing",
                        hint or f"check the {dataset} folder layout described in the loader's docstring")
    return path


def read_text(path: Path, dataset: str, hint: str | None = None) -> str:
    """The UTF-8 text of a required file (a BOM is dropped)."""
    require_file(path, dataset, hint)
    try:
        return path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{dataset}: cannot read {path} as UTF-8 text ({exc})",
                        "re-download or re-extract the file") from exc


def read_lines(path: Path, dataset: str, hint: str | None = None) -> list[tuple[int, str]]:
    """``(1-based line number, stripped line)`` of every non-blank line of a required text file."""
    text = read_text(path, dataset, hint)
    return [(i, line.strip()) for i, line in enumerate(text.splitlines(), start=1) if line.strip()]


def read_json(path: Path, dataset: str, hint: str | None = None) -> object:
    """The parsed JSON of a required file."""
    require_file(path, dataset, hint)
    try:
        with path.open("rb") as f:
            return json.load(f)
    except json.JSONDecodeError as exc:
        raise DataError(f"{dataset}: {path} is not valid JSON ({exc.msg} at line {exc.lineno}, "
                        f"column {exc.colno})", "the file is probably truncated: re-download or re-extract it") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{dataset}: cannot read {path} ({exc})", "re-download or re-extract the file") from exc


def iter_json_array(path: Path, dataset: str, hint: str | None = None) -> Iterator[object]:
    """Yield the elements of a top-level JSON array one at a time, without loading the whole file.

    For multi-gigabyte files such as Visual Genome's ``region_descriptions.json``.
    """
    require_file(path, dataset, hint)
    decoder = json.JSONDecoder()

    def malformed(detail: str) -> DataError:
        return DataError(f"{dataset}: {path} is not a valid JSON array ({detail})",
                         "the file is probably truncated: re-download or re-extract it")

    try:
        with path.open("r", encoding="utf-8-sig") as f:
            buf, pos, eof = "", 0, False

            def fill() -> bool:
                nonlocal buf, pos, eof
                chunk = f.read(_JSON_CHUNK)
                if not chunk:
                    eof = True
                    return False
                buf, pos = buf[pos:] + chunk, 0
                return True

            def skip_ws() -> None:
                nonlocal pos
                while True:
                    while pos < len(buf) and buf[pos] in " \t\r\n":
                        pos += 1
                    if pos < len(buf) or not fill():
                        return

            skip_ws()
            if pos >= len(buf) or buf[pos] != "[":
                raise malformed("it does not start with '['")
            pos += 1
            first = True
            while True:
                skip_ws()
                if pos >= len(buf):
                    raise malformed("it ends before the closing ']'")
                if buf[pos] == "]":
                    return
                if not first:
                    if buf[pos] != ",":
                        raise malformed(f"expected ',' but found {buf[pos]!r}")
                    pos += 1
                    skip_ws()
                first = False
                if buf[pos] in _NUMBER_START:
                    # A number cut by the chunk boundary would decode as a shorter number: read on
                    # until the buffer holds the delimiter that ends it.
                    while not _NUMBER_END.search(buf, pos) and fill():
                        pass
                while True:
                    try:
                        value, end = decoder.raw_decode(buf, pos)
                    except json.JSONDecodeError as exc:
                        if eof or not fill():
                            raise malformed(exc.msg) from exc
                        continue
                    pos = end
                    break
                yield value
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{dataset}: cannot read {path} ({exc})", "re-download or re-extract the file") from exc


def get_key(record: object, key: str, path: Path, dataset: str, where: str) -> object:
    """``record[key]`` of a JSON object, or a :class:`DataError` naming the file, place and key."""
    if not isinstance(record, Mapping) or key not in record:
        raise DataError(f"{dataset}: {path}: {where} has no key {key!r}",
                        "the file does not have the expected format: re-download the original")
    return record[key]


def get_list(record: object, key: str, path: Path, dataset: str, where: str) -> list[object]:
    """``record[key]`` that must be a JSON list."""
    value = get_key(record, key, path, dataset, where)
    if not isinstance(value, list):
        raise DataError(f"{dataset}: {path}: {where}[{key!r}] is a {type(value).__name__}, not a list",
                        "the file does not have the expected format: re-download the original")
    return value


def list_files(folder: Path) -> frozenset[str]:
    """The names of the entries of ``folder`` (empty if it does not exist): one directory read
    instead of one ``stat`` per image, which matters for 100k-image folders."""
    try:
        with os.scandir(folder) as it:
            return frozenset(entry.name for entry in it)
    except (FileNotFoundError, NotADirectoryError):
        return frozenset()


def exists_in(folder: Path, name: str, listing: Collection[str]) -> bool:
    """Whether ``folder / name`` exists, using ``listing`` (``list_files(folder)``) for plain names."""
    if "/" in name or os.sep in name:
        return (folder / name).is_file()
    return name in listing


def missing_images_error(dataset: str, missing: Sequence[tuple[str, str | Path]], listed_in: str,
                         hint: str | None = None) -> DataError:
    """A :class:`DataError` for images listed in ``listed_in`` but absent: ``missing`` holds
    ``(row id, expected path)`` pairs; the first few are named."""
    shown = "; ".join(f"id {rid!r}: {path}" for rid, path in missing[:_MAX_LISTED])
    more = f" (and {len(missing) - _MAX_LISTED} more)" if len(missing) > _MAX_LISTED else ""
    return DataError(f"{dataset}: {len(missing)} image(s) listed in {listed_in} are missing: {shown}{more}",
                     hint or "extract the image archives into the data folder, or remove those rows")
