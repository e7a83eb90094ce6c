"""The data-set interface every loader returns: splits of ids, labels, captions and images."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol, runtime_checkable

import numpy as np
from PIL import Image

from difffeat_tune._errors import DataError

Task = Literal["multilabel", "singlelabel"]

#: Label value meaning "ignore this entry" (VOC's difficult objects); 1 = positive, 0 = negative.
IGNORE = -1


@runtime_checkable
class ImageSource(Protocol):
    """Random access to a split's images, in the split's row order."""

    def __len__(self) -> int: ...

    def load(self, index: int) -> Image.Image:
        """Return image ``index`` as an RGB PIL image; raise :class:`DataError` naming it if unreadable."""
        ...


class ArrayImages:
    """Images held in memory as a uint8 array ``[N, H, W, 3]`` (the embedded data set)."""

    def __init__(self, pixels: np.ndarray) -> None:
        if pixels.ndim != 4 or pixels.shape[-1] != 3 or pixels.dtype != np.uint8:
            raise DataError(f"image array must be uint8 [N, H, W, 3], got {pixels.dtype} {pixels.shape}")
        self._pixels = pixels

    def __len__(self) -> int:
        return len(self._pixels)

    def load(self, index: int) -> Image.Image:
        return Image.fromarray(self._pixels[index], mode="RGB")


#: Unreadable images named in one error (the rest are counted).
_SHOWN_BAD_IMAGES = 5


class FileImages:
    """Images read from files on demand; errors name the row id and the path."""

    def __init__(self, paths: Sequence[str], ids: Sequence[str]) -> None:
        self._paths = list(paths)
        self._ids = list(ids)

    def __len__(self) -> int:
        return len(self._paths)

    def check(self, indices: Sequence[int]) -> None:
        """Read the header of each image ``indices`` names (no decoding): every unreadable one is named.

        Called before a long extraction, so that a file that is not an image fails at once, not
        hours in. A header that reads fine can still hide damaged pixel data: :meth:`load` names
        such a file when it meets it.

        Raises:
            DataError: listing the rows (id and path) whose file is missing or not an image.
        """
        bad: list[str] = []
        for index in indices:
            path = self._paths[index]
            try:
                with Image.open(path):
                    pass
            except (OSError, ValueError, Image.DecompressionBombError) as exc:
                bad.append(f"row id {self._ids[index]!r}: {path} ({exc})")
        if bad:
            shown = "; ".join(bad[:_SHOWN_BAD_IMAGES]) + (f"; and {len(bad) - _SHOWN_BAD_IMAGES} more"
                                                         if len(bad) > _SHOWN_BAD_IMAGES else "")
            raise DataError(f"{len(bad)} image file(s) cannot be read as images: {shown}",
                            "replace or remove these rows; nothing was extracted")

    def load(self, index: int) -> Image.Image:
        path = self._paths[index]
        try:
            with Image.open(path) as img:
                return img.convert("RGB")
        except (OSError, ValueError, Image.DecompressionBombError) as exc:
            raise DataError(
                f"cannot read image of row id {self._ids[index]!r}: {path} ({exc})",
                "check that the file exists and is a valid image, or remove the row",
            ) from exc


@dataclass(frozen=True)
class Split:
    """One split of a data set. Rows are aligned across ``ids``, ``labels``, ``captions`` and ``images``.

    Attributes:
        name: split name ("train", "val", "test").
        ids: unique row ids (strings), the join key of every feature shard.
        labels: int8 matrix ``[N, C]``: 1 positive, 0 negative, -1 ignore.
        captions: one caption per row, or ``None`` for an image-only data set.
        images: the images, or ``None`` for a text-only data set.
    """

    name: str
    ids: tuple[str, ...]
    labels: np.ndarray
    captions: tuple[str, ...] | None = None
    images: ImageSource | None = None

    def __post_init__(self) -> None:
        n = len(self.ids)
        if self.labels.ndim != 2 or self.labels.shape[0] != n:
            raise DataError(f"split {self.name!r}: labels shape {self.labels.shape} does not match {n} ids")
        if self.captions is not None and len(self.captions) != n:
            raise DataError(f"split {self.name!r}: {len(self.captions)} captions for {n} ids")
        if self.images is not None and len(self.images) != n:
            raise DataError(f"split {self.name!r}: {len(self.images)} images for {n} ids")
        if len(set(self.ids)) != n:
            seen: set[str] = set()
            dup = next(i for i in self.ids if i in seen or seen.add(i))  # type: ignore[func-returns-value]
            raise DataError(f"split {self.name!r}: duplicate id {dup!r}", "ids must be unique within a split")

    def __len__(self) -> int:
        return len(self.ids)


@dataclass(frozen=True)
class Dataset:
    """A labelled data set with named splits.

    Attributes:
        name: short name (used in folder names).
        label_names: class names, in label-matrix column order.
        task: "multilabel" (BCE) or "singlelabel" (cross-entropy, top-k accuracy).
        splits: split name -> :class:`Split`.
        options: loader options that change the data (recorded in the feature store's metadata).
    """

    name: str
    label_names: tuple[str, ...]
    task: Task
    splits: Mapping[str, Split]
    options: Mapping[str, object] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for split in self.splits.values():
            if split.labels.shape[1] != len(self.label_names):
                raise DataError(
                    f"data set {self.name!r}, split {split.name!r}: {split.labels.shape[1]} label columns "
                    f"for {len(self.label_names)} label names"
                )

    @property
    def has_images(self) -> bool:
        return all(s.images is not None for s in self.splits.values())

    @property
    def has_text(self) -> bool:
        return all(s.captions is not None for s in self.splits.values())

    def split(self, name: str) -> Split:
        try:
            return self.splits[name]
        except KeyError:
            raise DataError(
                f"data set {self.name!r} has no split {name!r}", f"available: {', '.join(self.splits)}"
            ) from None

    def fingerprint(self) -> str:
        """A hash of everything that defines the data: names, options, ids, labels and captions.

        Images are identified by their row ids and the loader options (hashing every pixel of a
        real data set would cost a full read); a changed image set under the same ids and options
        is the one case this cannot see.
        """
        h = hashlib.sha256()
        h.update(json.dumps([self.name, list(self.label_names), self.task, dict(self.options)],
                            sort_keys=True, default=str).encode())
        for name in sorted(self.splits):
            split = self.splits[name]
            h.update(name.encode())
            h.update("\x1f".join(split.ids).encode())
            h.update(np.ascontiguousarray(split.labels, dtype=np.int8).tobytes())
            if split.captions is not None:
                h.update("\x1f".join(split.captions).encode())
            h.update(b"I" if split.images is not None else b"-")
        return h.hexdigest()[:16]
