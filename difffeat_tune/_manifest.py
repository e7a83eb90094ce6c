"""An extraction's manifest: which parts are complete, as typed records, and its one JSON form.

The JSON form is the one every release has written (``manifest.json``)::

    {"_parts": {"val": 1},                                   split -> number of parts
     "val": {"30": {"0": {"rows": 16, "blocks": [8, 12],     split -> t -> part -> entry
                          "sha256": "...", "bytes": 1234, "mtime_ns": 1700000000000000000}}}}

Entries of the first releases carry no ``sha256``/``bytes``/``mtime_ns``; they read as
``None``. :meth:`Manifest.from_json` and :meth:`Manifest.to_json` are the only code that knows
this layout.

Example:
    >>> m = Manifest()
    >>> m.record(PartKey("val", 30, 0), PartEntry(rows=16, blocks=(8, 12)), n_parts=1)
    >>> m.to_json()
    {'_parts': {'val': 1}, 'val': {'30': {'0': {'rows': 16, 'blocks': [8, 12]}}}}
    >>> Manifest.from_json(m.to_json()) == m
    True
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

#: The JSON key of the parts-per-split table; every other top-level key is a split.
_PARTS_KEY = "_parts"


class PartKey(NamedTuple):
    """One part of one (split, t)."""

    split: str
    t: int
    part: int


@dataclass(frozen=True)
class PartEntry:
    """What the manifest records of one complete part file.

    Attributes:
        rows: rows in the part.
        blocks: the blocks (columns ``bNN``) it holds.
        sha256: SHA-256 of the file (``None``: written by a release that recorded none).
        bytes: the file's size when written.
        mtime_ns: the file's modification time when written (or when last found intact).
    """

    rows: int
    blocks: tuple[int, ...]
    sha256: str | None = None
    bytes: int | None = None
    mtime_ns: int | None = None

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> PartEntry:
        return cls(rows=int(obj["rows"]), blocks=tuple(int(b) for b in obj["blocks"]), sha256=obj.get("sha256"),
                   bytes=obj.get("bytes"), mtime_ns=obj.get("mtime_ns"))

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"rows": self.rows, "blocks": list(self.blocks)}
        for name in ("sha256", "bytes", "mtime_ns"):
            if getattr(self, name) is not None:
                out[name] = getattr(self, name)
        return out


@dataclass
class Manifest:
    """The complete parts of one extraction.

    Attributes:
        parts_total: split -> how many parts the split has (known once one part is written).
        entries: the complete parts.
    """

    parts_total: dict[str, int] = field(default_factory=dict)
    entries: dict[PartKey, PartEntry] = field(default_factory=dict)

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> Manifest:
        """Read the JSON form (see the module docstring)."""
        manifest = cls(parts_total={str(k): int(v) for k, v in obj.get(_PARTS_KEY, {}).items()})
        for split, by_t in obj.items():
            if split.startswith("_"):  # tables of the manifest itself, not splits
                continue
            for t, parts in by_t.items():
                for part, entry in parts.items():
                    manifest.entries[PartKey(split, int(t), int(part))] = PartEntry.from_json(entry)
        return manifest

    def to_json(self) -> dict[str, Any]:
        """The JSON form (see the module docstring)."""
        out: dict[str, Any] = {}
        if self.parts_total:
            out[_PARTS_KEY] = dict(self.parts_total)
        for key, entry in self.entries.items():
            out.setdefault(key.split, {}).setdefault(str(key.t), {})[str(key.part)] = entry.to_json()
        return out

    def get(self, key: PartKey) -> PartEntry | None:
        return self.entries.get(key)

    def record(self, key: PartKey, entry: PartEntry, *, n_parts: int) -> None:
        """Record a complete part of a split of ``n_parts`` parts."""
        self.parts_total[key.split] = n_parts
        self.entries[key] = entry

    def merge(self, other: Manifest) -> None:
        """Take every part count and entry of ``other`` (its entries win over this one's)."""
        self.parts_total.update(other.parts_total)
        self.entries.update(other.entries)

    def drop(self, key: PartKey) -> bool:
        """Forget a part; ``True`` if it was recorded."""
        return self.entries.pop(key, None) is not None

    def parts(self, split: str, t: int) -> dict[int, PartEntry]:
        """``{part: entry}`` of one (split, t)."""
        return {k.part: e for k, e in self.entries.items() if k.split == split and k.t == t}

    def timesteps(self, split: str) -> list[int]:
        """The timesteps of a split with at least one recorded part, ascending."""
        return sorted({k.t for k in self.entries if k.split == split})

    def __iter__(self) -> Iterator[PartKey]:
        return iter(list(self.entries))
