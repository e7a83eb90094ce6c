"""The Parquet feature store: pooled features keyed by data set, backbone, settings, t and split.

Layout under the store root::

    <dataset>-<dataset fingerprint>/
        dataset.json                      label names, task, options, split sizes
        labels/<split>.parquet            id, labels (int8 list: 1 / 0 / -1 = ignore), once per split
        <modality>/<backbone>-<key>/      one extraction: key = hash(backbone fingerprint, settings, dtype)
            extraction.json               backbone, fingerprint, settings, width, dtype, rows per part
            manifest.json                 the complete parts: split -> t -> part -> rows, blocks
            t0030/<split>/part-00000.parquet
                                          columns: id, b08, b12, ... (one fixed-size list per block)

A trial reading one (modality, t, b, split) opens only that t and split's part files and only
the ``id`` and ``bNN`` columns (Parquet column projection; memory-mapped locally, ranged reads
on an object store). Every part file carries its full provenance in the Parquet schema
metadata. The manifest is the only thing readers trust, and a part enters it only after its
file is complete: an interrupted extraction never leaves a part that looks complete.

Where the store lives (:mod:`difffeat_tune._store_fs`): a local or shared folder, or any URI
pyarrow opens (``s3://bucket/prefix``). Locally, files are written under a temporary name and
renamed into place, and ``manifest.json`` is rewritten whole the same way after each part.
An object store has no rename: each part is one object sent in one upload (visible only once
complete), and each writer (one :class:`Extraction` object: host, process, random suffix) keeps
its own manifest fragment ``manifests/<writer>.json``, rewritten after each of its parts, so two
writers never overwrite each other's entries. Readers merge ``manifest.json`` (a store copied in
from a folder) and every fragment, later fragments winning for a part both name; if the part's
object was since rewritten by the other writer, its size or checksum disagrees, so it is
reported damaged and rebuilt, never read wrongly. On an object store the cheap check of a part
is its size (an object changes only by a whole new upload); ``--verify`` hashes every part.

The manifest is a typed :class:`~difffeat_tune._manifest.Manifest`. Queries (``part_problem``,
``part_blocks``, ``verify``, ``available``, ``load``) never change a file or the manifest; only
``write_part``, ``forget_part`` and ``repair`` do.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import socket
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import torch

from difffeat_tune import _store_fs as sfs
from difffeat_tune._defaults import DEFAULT_DTYPE
from difffeat_tune._errors import StoreError
from difffeat_tune._manifest import Manifest, PartEntry, PartKey
from difffeat_tune._paths import store_location
from difffeat_tune._store_fs import Location
from difffeat_tune._version import __version__
from difffeat_tune.data._base import Dataset, Task

logger = logging.getLogger(__name__)

#: Feature dtypes a store can hold.
DTYPES = {"float16": (np.float16, pa.float16()), "float32": (np.float32, pa.float32())}
#: Rows per part file: bounds memory during writes and makes a resumed extraction lose little.
DEFAULT_ROWS_PER_PART = 16384
_META_KEY = b"difffeat_tune"
#: Folder of the writers' manifest fragments in an extraction on an object store.
_FRAGMENTS = "manifests"


def _read_json(path: Location, *, missing_ok: bool = False) -> dict | None:
    data = sfs.read_bytes(path)
    if data is None:
        if missing_ok:
            return None
        raise StoreError(f"missing store file {path}", "re-run `difffeat-tune extract` for this data set")
    try:
        return json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise StoreError(f"corrupt store file {path}: {exc}", f"delete {path} and re-run the extraction") from exc


def _write_json(path: Location, obj: object) -> None:
    """Indented, key-sorted JSON, written whole (the layout every release wrote)."""
    sfs.write_bytes(path, json.dumps(obj, indent=1, sort_keys=True, default=str).encode())


#: Rows checked for NaN/Inf at a time (a whole part's boolean mask would be another copy of it).
_CHECK_ROWS = 8192


def _first_non_finite_row(values: np.ndarray) -> int | None:
    """The first row of ``values`` holding a NaN or an infinity, or ``None``."""
    for start in range(0, values.shape[0], _CHECK_ROWS):
        finite = np.isfinite(values[start:start + _CHECK_ROWS]).all(axis=1)
        if not finite.all():
            return start + int(np.nonzero(~finite)[0][0])
    return None


def block_column(block: int) -> str:
    """Column name of block ``block`` in a part file."""
    return f"b{block:02d}"


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text.strip("/\\")).strip("_")[-40:] or "backbone"


@dataclass(frozen=True)
class ExtractionKey:
    """Everything that decides the values of an extraction's features.

    Two extractions share a folder only if their keys are equal: a changed seed, noising mode,
    token length, weight file or dtype gives a new folder, never a stale reuse.
    """

    modality: str
    backbone: str
    fingerprint: str
    settings: Mapping[str, object]
    dtype: str = DEFAULT_DTYPE

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise StoreError(f"unknown feature dtype {self.dtype!r}", f"use one of {', '.join(DTYPES)}")

    @property
    def digest(self) -> str:
        payload = json.dumps(
            [self.modality, self.fingerprint, dict(self.settings), self.dtype], sort_keys=True, default=str
        )
        return hashlib.sha256(payload.encode()).hexdigest()[:12]

    @property
    def folder_name(self) -> str:
        return f"{_slug(self.backbone)}-{self.digest}"

    def as_dict(self) -> dict[str, object]:
        return {
            "modality": self.modality,
            "backbone": self.backbone,
            "fingerprint": self.fingerprint,
            "settings": dict(self.settings),
            "dtype": self.dtype,
            "key": self.digest,
        }


@dataclass(frozen=True)
class Features:
    """Features of one (modality, t, block, split), read from the store."""

    ids: tuple[str, ...]
    values: torch.Tensor


@dataclass(frozen=True)
class Labels:
    """The label matrix of one split (int8: 1 / 0 / -1 = ignore)."""

    ids: tuple[str, ...]
    values: np.ndarray
    label_names: tuple[str, ...]
    task: Task


class Extraction:
    """One extraction folder: the parts of every (t, split) for one backbone and key."""

    def __init__(self, folder: Location | str, key: ExtractionKey | None = None, *, rows_per_part: int | None = None,
                 width: int | None = None, num_blocks: int | None = None, dataset_fingerprint: str = "",
                 create: bool = True) -> None:
        self.folder = folder = store_location(folder, "extraction folder")
        info_path = folder / "extraction.json"
        found = _read_json(info_path, missing_ok=True)
        if key is not None and found is None:
            self.info = {
                **key.as_dict(),
                "rows_per_part": rows_per_part or DEFAULT_ROWS_PER_PART,
                "width": width,
                "num_blocks": num_blocks,
                "dataset_fingerprint": dataset_fingerprint,
                "package_version": __version__,
            }
            if create:
                self.create()
        else:
            self.info = found if found is not None else _read_json(info_path)
            if key is not None and self.info.get("key") != key.digest:
                raise StoreError(f"{info_path} belongs to key {self.info.get('key')}, not {key.digest}",
                                 f"delete {folder} or choose another store root")
        self._manifest_path = folder / "manifest.json"
        self.manifest = self._read_manifest()
        #: Parts found intact (by checksum) under another size or time than recorded: key -> (bytes, mtime_ns).
        self._intact: dict[PartKey, tuple[int, int | None]] = {}
        #: On an object store, the entries this writer recorded (its own fragment) and the fragment's name.
        self._own = Manifest()
        self._writer = f"{_slug(socket.gethostname())}-{os.getpid()}-{uuid.uuid4().hex[:8]}"

    def _read_manifest(self) -> Manifest:
        """``manifest.json``, then the writers' fragments under ``manifests/``, later ones winning."""
        found = _read_json(self._manifest_path, missing_ok=True)
        manifest = Manifest.from_json(found) if found is not None else Manifest()
        for item in sorted(sfs.files(self.folder / _FRAGMENTS), key=lambda i: (i.mtime_ns or 0, i.base_name)):
            fragment = _read_json(self.folder / _FRAGMENTS / item.base_name, missing_ok=True)
            if fragment is not None:
                manifest.merge(Manifest.from_json(fragment))
        return manifest

    def _save_manifest(self, changed: Manifest | None = None) -> None:
        """Local: rewrite ``manifest.json`` whole. Object store: rewrite this writer's own fragment."""
        if sfs.is_local(self.folder):
            _write_json(self._manifest_path, self.manifest.to_json())
            return
        if changed is not None:
            self._own.merge(changed)
        _write_json(self.folder / _FRAGMENTS / f"{self._writer}.json", self._own.to_json())

    def create(self) -> None:
        """Write the folder's ``extraction.json`` (what makes it an extraction), unless it is there."""
        if not sfs.is_file(self.folder / "extraction.json"):
            _write_json(self.folder / "extraction.json", self.info)

    @property
    def modality(self) -> str:
        return str(self.info["modality"])

    @property
    def rows_per_part(self) -> int:
        return int(self.info["rows_per_part"])

    @property
    def dtype(self) -> str:
        return str(self.info["dtype"])

    def part_path(self, t: int, split: str, part: int) -> Location:
        return self.folder / f"t{t:04d}" / split / f"part-{part:05d}.parquet"

    def part_blocks(self, t: int, split: str, part: int, *, verify: bool = False) -> set[int]:
        """Blocks of a part that the manifest lists as complete, if its file is intact.

        A damaged part (see :meth:`part_problem`) gives an empty set, so that it is rebuilt,
        never trusted; the manifest is not changed (:meth:`repair` does that).
        """
        entry = self.manifest.get(PartKey(split, t, part))
        if entry is None:
            return set()
        problem = self.part_problem(t, split, part, verify=verify)
        if problem is not None:
            logger.warning("damaged feature shard %s (%s): it will be rebuilt", self.part_path(t, split, part), problem)
            return set()
        return set(entry.blocks)

    def part_problem(self, t: int, split: str, part: int, *, verify: bool = False) -> str | None:
        """Why a part recorded in the manifest cannot be trusted, or ``None`` if it is intact.

        A part whose file is missing, or whose size or modification time differ from the
        manifest's and whose SHA-256 then differs too, is damaged. ``verify`` checks the SHA-256
        whatever the size and time. A part found intact under a new time (e.g. copied) is
        remembered by this object, not written: :meth:`repair` records its new time.
        """
        key = PartKey(split, t, part)
        entry = self.manifest.get(key)
        path = self.part_path(t, split, part)
        if entry is None:
            return "not in the manifest"
        stat = sfs.info(path)
        if stat.type != pafs.FileType.File:
            return "the file is missing"
        if entry.sha256 is None:  # written by a release that recorded no checksum
            return None
        # An object changes only by a whole new upload: its size is the cheap check (its time is the upload's).
        mtime_ns = stat.mtime_ns if sfs.is_local(path) else entry.mtime_ns
        seen = (stat.size, mtime_ns)
        if not verify and (seen == (entry.bytes, entry.mtime_ns) or self._intact.get(key) == seen):
            return None
        if sfs.sha256(path) != entry.sha256:
            return f"checksum mismatch ({stat.size} bytes, the manifest says {entry.bytes})"
        self._intact[key] = seen
        return None

    def forget_part(self, t: int, split: str, part: int) -> None:
        """Drop a part from the manifest (its file is left for inspection until it is rewritten)."""
        if self.manifest.drop(PartKey(split, t, part)):
            self._save_manifest()

    def repair(self, *, full: bool = False) -> list[tuple[Location, str]]:
        """Bring the manifest in line with the files: the one method that changes it without writing a part.

        Damaged parts are dropped (they are rebuilt by the next extraction); intact parts found
        under a new modification time get that time recorded, so the next check is cheap again.
        The manifest is rewritten once, only if something changed. On an object store a writer
        cannot drop another writer's entry: a damaged part stays listed (and is reported as
        damaged) until the next extraction rewrites it, and its new entry wins.

        Args:
            full: check the SHA-256 of every part, whatever its size and time.

        Returns:
            The dropped parts as ``(path, reason)``.
        """
        damaged = self._damaged(full=full)
        changed = Manifest()
        dropped = False
        if sfs.is_local(self.folder):
            for key, _ in damaged:
                dropped |= self.manifest.drop(key)
        for key, (size, mtime_ns) in self._intact.items():
            entry = self.manifest.get(key)
            if entry is not None and (entry.bytes, entry.mtime_ns) != (size, mtime_ns):
                self.manifest.entries[key] = changed.entries[key] = replace(entry, bytes=size, mtime_ns=mtime_ns)
        if dropped or changed.entries:
            self._save_manifest(changed)
        return [(self.part_path(k.t, k.split, k.part), why) for k, why in damaged]

    def verify(self, *, full: bool = True) -> list[tuple[Location, str]]:
        """Every damaged part as ``(path, reason)``, checking each part's SHA-256 (``full``) or size and time."""
        return [(self.part_path(k.t, k.split, k.part), why) for k, why in self._damaged(full=full)]

    def _damaged(self, *, full: bool) -> list[tuple[PartKey, str]]:
        found = ((k, self.part_problem(k.t, k.split, k.part, verify=full)) for k in self.manifest)
        return [(k, why) for k, why in found if why is not None]

    def available(self, split: str) -> dict[int, set[int]]:
        """``{t: blocks complete for every part}`` of a split."""
        parts_total = self.manifest.parts_total.get(split)
        out: dict[int, set[int]] = {}
        if parts_total is None:
            return out
        for t in self.manifest.timesteps(split):
            parts = self.manifest.parts(split, t)
            if len(parts) < parts_total:
                continue
            blocks = set.intersection(*(set(p.blocks) for p in parts.values()))
            if blocks:
                out[t] = blocks
        return out

    def write_part(self, t: int, split: str, part: int, ids: Sequence[str], features: Mapping[int, np.ndarray],
                   *, n_parts: int, provenance: Mapping[str, object]) -> Location:
        """Write (or extend with new blocks) one part file atomically, then record it in the manifest."""
        np_dtype, pa_dtype = DTYPES[self.dtype]
        path = self.part_path(t, split, part)
        columns: dict[str, pa.Array] = {}
        old_blocks = self.part_blocks(t, split, part)
        if old_blocks:
            old = sfs.read_table(path)
            if list(old.column("id").to_pylist()) != list(ids):
                raise StoreError(f"{path} holds other row ids than the rows being added",
                                 f"delete {path.parent} and re-run the extraction")
            columns.update({name: old.column(name) for name in old.column_names if name != "id"})
        for block, values in sorted(features.items()):
            with np.errstate(over="ignore"):  # overflow is reported below, by name
                cast = np.ascontiguousarray(values, dtype=np_dtype)
            if not np.isfinite(cast).all():
                bad = "NaN/Inf from the model" if not np.isfinite(values).all() else f"overflow in {self.dtype}"
                raise StoreError(f"features of t={t}, block {block}, split {split!r} are not finite ({bad})",
                                 "use --dtype float32" if "overflow" in bad else "check the backbone weights")
            flat = pa.array(cast.reshape(-1), type=pa_dtype)
            columns[block_column(block)] = pa.FixedSizeListArray.from_arrays(flat, cast.shape[1])
        blocks = sorted(old_blocks | set(features))
        meta = {
            **{k: self.info[k] for k in ("modality", "backbone", "fingerprint", "settings", "dtype", "key")},
            "dataset_fingerprint": self.info.get("dataset_fingerprint"),
            "t": t, "split": split, "part": part, "rows": len(ids), "blocks": blocks,
            "package_version": __version__, **provenance,
        }
        names = ["id", *sorted(columns)]
        arrays = [pa.array(list(ids), type=pa.string()), *(columns[n] for n in names[1:])]
        schema = pa.schema([pa.field(n, a.type) for n, a in zip(names, arrays)],
                           metadata={_META_KEY: json.dumps(meta, default=str).encode()})
        sfs.write_table(path, pa.Table.from_arrays(arrays, schema=schema))  # the part, whole, then its entry
        stat = sfs.info(path)
        entry = PartEntry(rows=len(ids), blocks=tuple(blocks), sha256=sfs.sha256(path), bytes=stat.size,
                          mtime_ns=stat.mtime_ns)
        self.record_parts({PartKey(split, t, part): entry}, n_parts=n_parts)
        return path

    def record_parts(self, entries: Mapping[PartKey, PartEntry], *, n_parts: int) -> None:
        """Record complete parts of one split of ``n_parts`` parts, saving the manifest once.

        :meth:`write_part` records its own part; a driver records here the parts its workers wrote.
        """
        recorded = Manifest()
        for key, entry in entries.items():
            self.manifest.record(key, entry, n_parts=n_parts)
            recorded.record(key, entry, n_parts=n_parts)
        self._save_manifest(recorded)

    def load(self, t: int, block: int, split: str, device: torch.device | str = "cpu",
             dtype: torch.dtype = torch.float32) -> Features:
        """Read one (t, block, split) onto ``device``, validating every part file.

        Raises:
            StoreError: naming the file, for a missing (t, block), a truncated or corrupt part, a
                row count that disagrees with the manifest, or a NaN/Inf value.
        """
        entries = self.manifest.parts(split, t)
        n_parts = self.manifest.parts_total.get(split)
        have = self.available(split)
        if not entries or n_parts is None or t not in have or block not in have[t]:
            listing = ", ".join(f"t={tt}: blocks {sorted(bb)}" for tt, bb in sorted(have.items())) or "nothing"
            raise StoreError(
                f"{self.modality} features for t={t}, block {block}, split {split!r} are not in {self.folder}"
                f" (complete: {listing})",
                f"run `difffeat-tune extract` with --{self.modality}-timesteps including {t} and "
                f"--{self.modality}-blocks including {block}",
            )
        column = block_column(block)
        ids: list[str] = []
        chunks: list[np.ndarray] = []
        for part in range(n_parts):
            path = self.part_path(t, split, part)
            problem = self.part_problem(t, split, part)
            if problem is not None:
                raise StoreError(f"feature shard {path} is damaged: {problem}",
                                 "run the same `difffeat-tune extract` with --verify to rebuild it")
            try:
                table = sfs.read_table(path, columns=["id", column])
            except (OSError, pa.ArrowException) as exc:
                raise StoreError(f"cannot read feature shard {path}: {exc}",
                                 f"delete {path} and re-run the same `difffeat-tune extract` to rebuild it") from exc
            expected = entries[part].rows
            if table.num_rows != expected:
                raise StoreError(f"feature shard {path} has {table.num_rows} rows, the manifest says {expected}",
                                 f"delete {path} and re-run the extraction")
            col = table.column(column).combine_chunks()
            values = col.flatten().to_numpy(zero_copy_only=False).reshape(table.num_rows, col.type.list_size)
            row = _first_non_finite_row(values)
            if row is not None:
                raise StoreError(f"feature shard {path}, column {column}: NaN/Inf at row {row}",
                                 f"delete {path} and re-run the extraction")
            ids.extend(table.column("id").to_pylist())
            chunks.append(values)
        values = np.concatenate(chunks) if len(chunks) > 1 else chunks[0]
        if not values.flags.writeable:  # a view of Arrow's (memory-mapped) buffer: the tensor gets its own copy
            values = values.copy()
        tensor = torch.from_numpy(values).to(device=device, dtype=dtype)
        return Features(ids=tuple(ids), values=tensor)


@dataclass
class FeatureStore:
    """A folder of extracted features (see the module docstring for the layout).

    Example:
        >>> store = FeatureStore("features")                                   # doctest: +SKIP
        >>> view = store.view("shapes")                                        # doctest: +SKIP
        >>> view.load("image", t=30, block=12, split="val").values.shape      # doctest: +SKIP
    """

    root: Location
    _extractions: dict[Location, Extraction] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self.root = store_location(self.root, "feature store")
        sfs.check_reachable(self.root)

    def dataset_dir(self, name: str, fingerprint: str) -> Location:
        return self.root / f"{_slug(name)}-{fingerprint}"

    def write_dataset(self, dataset: Dataset) -> Location:
        """Record a data set's description and its labels, once per split (skipped if present)."""
        folder = self.dataset_dir(dataset.name, dataset.fingerprint())
        info = {
            "name": dataset.name, "fingerprint": dataset.fingerprint(), "task": dataset.task,
            "label_names": list(dataset.label_names), "options": dict(dataset.options),
            "splits": {name: len(split) for name, split in dataset.splits.items()},
            "has_images": dataset.has_images, "has_text": dataset.has_text,
        }
        for name, split in dataset.splits.items():
            path = folder / "labels" / f"{name}.parquet"
            if sfs.is_file(path):
                continue
            flat = pa.array(np.ascontiguousarray(split.labels, dtype=np.int8).reshape(-1), type=pa.int8())
            table = pa.table({"id": pa.array(list(split.ids), type=pa.string()),
                              "labels": pa.FixedSizeListArray.from_arrays(flat, len(dataset.label_names))})
            sfs.write_table(path, table)
        _write_json(folder / "dataset.json", info)
        return folder

    def extraction(self, dataset: Dataset, key: ExtractionKey, *, rows_per_part: int | None = None,
                   width: int | None = None, num_blocks: int | None = None, create: bool = True) -> Extraction:
        """The folder of ``key``'s features of ``dataset``, created if new (``create=False``: on
        :meth:`Extraction.create`, once there is something to write)."""
        folder = self.dataset_dir(dataset.name, dataset.fingerprint()) / key.modality / key.folder_name
        return Extraction(folder, key, rows_per_part=rows_per_part, width=width, num_blocks=num_blocks,
                          dataset_fingerprint=dataset.fingerprint(), create=create)

    def datasets(self) -> list[Location]:
        """Data-set folders in the store."""
        folders = (self.root / name for name in sfs.subfolders(self.root))
        return [p for p in folders if sfs.is_file(p / "dataset.json")]

    def view(self, dataset: str | Location | None = None, *, image: str | None = None, text: str | None = None) -> FeatureView:
        """Open the features of one data set for reading.

        Args:
            dataset: data-set folder, or its name (prefix of the folder name); may be omitted when
                the store holds one data set.
            image: the image extraction's key (or folder name) when there are several.
            text: the text extraction's key (or folder name) when there are several.
        """
        folder = self._resolve_dataset(dataset)
        return FeatureView(folder, image=self._resolve_extraction(folder, "image", image),
                           text=self._resolve_extraction(folder, "text", text))

    def _resolve_dataset(self, dataset: str | Location | None) -> Location:
        if isinstance(dataset, sfs.ObjectPath) or (dataset is not None and Path(dataset).is_dir()):
            folder = store_location(dataset, "data-set folder")
            if sfs.is_file(folder / "dataset.json"):
                return folder
        found = self.datasets()
        matches = [p for p in found if dataset is None or p.name == dataset or p.name.startswith(f"{dataset}-")]
        if len(matches) == 1:
            return matches[0]
        names = ", ".join(p.name for p in found) or "none"
        what = "no data set" if not matches else "several data sets"
        raise StoreError(f"{what} matching {dataset!r} in feature store {self.root} (found: {names})",
                         "run `difffeat-tune extract` first, or pass the data-set folder name")

    def _resolve_extraction(self, folder: Location, modality: str, wanted: str | None) -> Extraction | None:
        base = folder / modality
        candidates = [base / n for n in sfs.subfolders(base)
                      if sfs.is_file(base / n / "extraction.json")]
        if wanted is not None:
            candidates = [p for p in candidates if p.name == wanted or p.name.endswith(f"-{wanted}")]
        if not candidates:
            if wanted is not None:
                raise StoreError(f"no {modality} extraction {wanted!r} under {base}")
            return None
        if len(candidates) > 1:
            raise StoreError(
                f"several {modality} extractions under {base}: {', '.join(p.name for p in candidates)}",
                f"choose one with the {modality} key (the part after the last '-')",
            )
        path = candidates[0]
        if path not in self._extractions:
            self._extractions[path] = Extraction(path)
        return self._extractions[path]


@dataclass
class FeatureView:
    """Read access to one data set's labels and its image and text extractions."""

    folder: Location
    image: Extraction | None
    text: Extraction | None
    info: dict = field(init=False)

    def __post_init__(self) -> None:
        self.info = _read_json(self.folder / "dataset.json")

    @property
    def label_names(self) -> tuple[str, ...]:
        return tuple(self.info["label_names"])

    @property
    def task(self) -> Task:
        return self.info["task"]

    @property
    def splits(self) -> tuple[str, ...]:
        return tuple(self.info["splits"])

    def extraction(self, modality: str) -> Extraction:
        ext = self.image if modality == "image" else self.text if modality == "text" else None
        if ext is None:
            raise StoreError(f"no {modality} features for data set {self.folder.name}",
                             f"run `difffeat-tune extract` with the {modality} backbone")
        return ext

    def load(self, modality: str, t: int, block: int, split: str, device: torch.device | str = "cpu",
             dtype: torch.dtype = torch.float32) -> Features:
        return self.extraction(modality).load(t, block, split, device, dtype)

    def labels(self, split: str) -> Labels:
        path = self.folder / "labels" / f"{split}.parquet"
        if not sfs.is_file(path):
            raise StoreError(f"no labels for split {split!r}: {path} is missing",
                             f"available splits: {', '.join(self.splits)}; re-run the extraction to rewrite labels")
        try:
            table = sfs.read_table(path)
        except (OSError, pa.ArrowException) as exc:
            raise StoreError(f"cannot read label file {path}: {exc}", f"delete {path} and re-run the extraction") from exc
        col = table.column("labels").combine_chunks()
        values = col.flatten().to_numpy(zero_copy_only=False).reshape(table.num_rows, col.type.list_size)
        return Labels(ids=tuple(table.column("id").to_pylist()), values=values.astype(np.int8),
                      label_names=self.label_names, task=self.task)

    def available(self, modality: str, split: str) -> dict[int, set[int]]:
        ext = self.image if modality == "image" else self.text
        return {} if ext is None else ext.available(split)


def check_aligned(name_a: str, ids_a: Iterable[str], name_b: str, ids_b: Iterable[str]) -> None:
    """Raise :class:`StoreError` if two id sequences differ, naming the first mismatch."""
    a, b = list(ids_a), list(ids_b)
    if a == b:
        return
    if len(a) != len(b):
        raise StoreError(f"{name_a} has {len(a)} rows but {name_b} has {len(b)}",
                         "re-extract both from the same data set")
    i = next(i for i, (x, y) in enumerate(zip(a, b)) if x != y)
    raise StoreError(f"row {i}: {name_a} has id {a[i]!r} but {name_b} has {b[i]!r}",
                     "re-extract both from the same data set")
