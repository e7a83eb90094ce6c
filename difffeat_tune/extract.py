"""The one-pass extraction loop: data set x timesteps -> backbone -> feature store, resumable.

Each batch is prepared once (VAE latents or tokens), then every requested timestep goes through
the backbone, several timesteps per pass, and every requested block comes out of that same pass
(which stops after the deepest block). Rows are written in parts of ``rows_per_part``; a part
already complete in the store is skipped, and a part missing only some blocks computes just those.

The work is planned first (:func:`plan_extraction`) as a list of :class:`Unit` (one part of a
split, for some timesteps), then each unit is computed by one loop (:func:`compute_unit`) and
written through the store (:func:`write_unit`). Inputs are prepared ahead of the model by loader
worker processes (:mod:`difffeat_tune._loader`, ``loader_workers``); the same units run on Ray
actors in :mod:`difffeat_tune.extract_ray`, which writes the same files at the same paths.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import closing
from dataclasses import dataclass, field

import numpy as np
import torch

from difffeat_tune._defaults import DEFAULT_BATCH_SIZE, DEFAULT_DTYPE
from difffeat_tune._errors import ConfigError, DataError
from difffeat_tune._loader import Job, default_loader_workers, prepared_batches
from difffeat_tune.backbones._base import Backbone, Encoded
from difffeat_tune.data._base import Dataset, Split
from difffeat_tune.store import Extraction, ExtractionKey, FeatureStore

logger = logging.getLogger(__name__)


#: ``progress(rows_done_now)`` is called after each batch; ``rows_total`` is announced first.
Progress = Callable[[int], None]


@dataclass
class ExtractReport:
    """What one call of :func:`extract` did (``rows`` and ``per_split`` count rows x timesteps)."""

    modality: str
    folder: str
    parts_written: int = 0
    parts_skipped: int = 0
    rows: int = 0
    seconds: float = 0.0
    per_split: dict[str, int] = field(default_factory=dict)

    @property
    def rows_per_second(self) -> float:
        return self.rows / self.seconds if self.seconds > 0 else 0.0

    def add(self, unit: Unit, parts_written: int) -> None:
        """Count a finished unit."""
        self.parts_written += parts_written
        self.rows += unit.row_passes
        self.per_split[unit.split] = self.per_split.get(unit.split, 0) + unit.row_passes


def check_request(dataset: Dataset, backbone: Backbone, timesteps: Sequence[int], blocks: Sequence[int],
                  splits: Sequence[str]) -> None:
    """Validate a whole request before any long work: timesteps, blocks, splits and inputs.

    Raises:
        BackboneError: a timestep or block the backbone cannot give.
        DataError: an unknown split, a split without the backbone's input, an empty caption.
    """
    if not timesteps or not blocks:
        raise ConfigError(f"{backbone.modality}: give at least one timestep and one block")
    backbone.validate(timesteps, blocks)
    for name in splits:
        split = dataset.split(name)
        backbone.check_split(split)
        if backbone.modality == "text":
            _check_captions(dataset.name, split)


def _check_captions(dataset_name: str, split: Split) -> None:
    assert split.captions is not None
    for row_id, caption in zip(split.ids, split.captions):
        if not caption or not caption.strip():
            raise DataError(f"data set {dataset_name!r}, split {split.name!r}: row id {row_id!r} has an empty caption",
                            "give every row a caption, or drop the row")


@dataclass(frozen=True)
class Unit:
    """One unit of an extraction plan: one part of a split for some timesteps, and the blocks each lacks.

    Every unit writes its own part files (one per timestep) and nothing else, so units can run
    in any order, on any worker; the rows' ids and noise seeds come from the split alone.
    """

    split: str
    part: int
    n_parts: int
    rows: range
    missing: Mapping[int, tuple[int, ...]]

    @property
    def timesteps(self) -> list[int]:
        return sorted(self.missing)

    @property
    def blocks(self) -> list[int]:
        """Every block some timestep of the unit lacks (one pass gives them all)."""
        return sorted(set().union(*self.missing.values()))

    @property
    def row_passes(self) -> int:
        """Rows times timesteps: the progress this unit makes."""
        return len(self.rows) * len(self.missing)

    def batches(self, batch_size: int) -> list[range]:
        """The unit's rows in batches of ``batch_size``."""
        return [range(lo, min(self.rows.stop, lo + batch_size)) for lo in range(self.rows.start, self.rows.stop,
                                                                                 batch_size)]


@dataclass
class Plan:
    """What an extraction will do: its folder, its units, and how many (t, split, part) are already complete."""

    extraction: Extraction
    units: list[Unit]
    parts_skipped: int

    @property
    def row_passes(self) -> int:
        return sum(u.row_passes for u in self.units)


@dataclass(frozen=True)
class ExtractSettings:
    """How an extraction is cut and stored (the arguments of :func:`extract` of the same names).

    Attributes:
        splits: which splits (``None``: all).
        batch_size: rows prepared per batch.
        timesteps_per_pass: timesteps sharing one forward pass (``None``: all of them).
        dtype: "float16" or "float32" storage.
        rows_per_part: rows per part file for a new extraction folder.
        verify: check the SHA-256 of every stored part; a damaged part is rebuilt.
    """

    splits: Sequence[str] | None = None
    batch_size: int = DEFAULT_BATCH_SIZE
    timesteps_per_pass: int | None = None
    dtype: str = DEFAULT_DTYPE
    rows_per_part: int | None = None
    verify: bool = False


def plan_extraction(dataset: Dataset, backbone: Backbone, store: FeatureStore, timesteps: Sequence[int],
                    blocks: Sequence[int], settings: ExtractSettings, *, unit_per_pass: bool = False) -> Plan:
    """Validate a request and list its units (split x part, or split x part x timestep group).

    Nothing is computed. When there is work, the data set's labels and the extraction's folder
    are written (so that workers find them); the manifest is only read (a damaged part it lists
    is dropped from it, to be rebuilt).

    Args:
        unit_per_pass: one unit per group of ``settings.timesteps_per_pass`` timesteps of a part
            (more units for more workers); otherwise one unit per part with all its timesteps, so
            each batch is prepared once.
        Others: as :func:`extract`.

    Raises:
        ConfigError, BackboneError, DataError: as :func:`check_request`, and a batch size below 1.
    """
    splits, batch_size, dtype = settings.splits, settings.batch_size, settings.dtype
    rows_per_part, verify = settings.rows_per_part, settings.verify
    timesteps_per_unit = settings.timesteps_per_pass if unit_per_pass else None
    timesteps = sorted(set(timesteps))
    blocks = sorted(set(blocks))
    splits = list(dataset.splits) if splits is None else list(splits)
    if batch_size < 1:
        raise ConfigError(f"batch size must be positive, got {batch_size}")
    check_request(dataset, backbone, timesteps, blocks, splits)
    key = ExtractionKey(backbone.modality, backbone.name, backbone.fingerprint(), backbone.settings(), dtype)
    ext = store.extraction(dataset, key, rows_per_part=rows_per_part, width=backbone.width,
                           num_blocks=backbone.num_blocks, create=False)
    units: list[Unit] = []
    skipped = 0
    for name in splits:
        split = dataset.split(name)
        n_parts = max(1, math.ceil(len(split) / ext.rows_per_part))
        for part in range(n_parts):
            rows = range(part * ext.rows_per_part, min(len(split), (part + 1) * ext.rows_per_part))
            have = {t: ext.part_blocks(t, name, part, verify=verify) for t in timesteps}
            missing = {t: tuple(b for b in blocks if b not in have[t]) for t in timesteps}
            missing = {t: bs for t, bs in missing.items() if bs}
            skipped += len(timesteps) - len(missing)  # (t, split, part) units already complete
            todo = sorted(missing)
            step = timesteps_per_unit or len(todo) or 1
            for i in range(0, len(todo), step):
                units.append(Unit(name, part, n_parts, rows, {t: missing[t] for t in todo[i : i + step]}))
    if units and backbone.modality == "image":
        _check_images(dataset, units)
    if units:  # the data set's labels and the extraction's folder appear only once there is work to do
        store.write_dataset(dataset)
        ext.create()
    return Plan(ext, units, skipped)


def _check_images(dataset: Dataset, units: Sequence[Unit]) -> None:
    """Read the header of every image the plan will decode, before anything is written."""
    checked: set[tuple[str, int]] = set()
    for unit in units:
        images = dataset.split(unit.split).images
        check = getattr(images, "check", None)  # files can be unreadable; in-memory arrays cannot
        if check is not None and (unit.split, unit.part) not in checked:
            checked.add((unit.split, unit.part))
            check(unit.rows)


def unit_jobs(dataset: Dataset, units: Sequence[Unit], batch_size: int) -> list[Job]:
    """The loader's jobs of ``units``, in order: each unit's batches."""
    return [(dataset.split(u.split), rows) for u in units for rows in u.batches(batch_size)]


def compute_unit(backbone: Backbone, unit: Unit, batches: Iterator[Encoded], *, batch_size: int,
                 timesteps_per_pass: int | None, progress: Progress | None = None) -> dict[int, dict[int, np.ndarray]]:
    """The unit's features ``{t: {block: float32 [rows, width]}}`` from its next batches of ``batches``."""
    todo_t, todo_b = unit.timesteps, unit.blocks
    per_pass = timesteps_per_pass or len(todo_t)
    collected: dict[int, dict[int, list[np.ndarray]]] = {t: {b: [] for b in todo_b} for t in todo_t}
    for _ in unit.batches(batch_size):
        batch = next(batches)
        for i in range(0, len(todo_t), per_pass):
            group = todo_t[i : i + per_pass]
            feats = backbone.features(batch, group, todo_b)
            for t in group:
                for b in todo_b:
                    collected[t][b].append(feats[t][b].to("cpu", torch.float32).numpy())
            if progress is not None:
                progress(len(batch) * len(group))
    return {t: {b: np.concatenate(collected[t][b]) for b in todo_b} for t in todo_t}


def write_unit(ext: Extraction, dataset: Dataset, unit: Unit, values: Mapping[int, Mapping[int, np.ndarray]],
               provenance: Mapping[str, object]) -> int:
    """Write the unit's parts (one per timestep) through the store; return how many."""
    ids = dataset.split(unit.split).ids[unit.rows.start : unit.rows.stop]
    for t in unit.timesteps:
        ext.write_part(t, unit.split, unit.part, ids, values[t], n_parts=unit.n_parts, provenance=provenance)
    return len(unit.timesteps)


def extraction_provenance(backbone: Backbone, batch_size: int) -> dict[str, object]:
    """What each part records of how it was computed (not part of the key)."""
    return {"batch_size": batch_size, "device": str(backbone.device)}


def extract(
    dataset: Dataset,
    backbone: Backbone,
    store: FeatureStore,
    timesteps: Sequence[int],
    blocks: Sequence[int],
    *,
    splits: Sequence[str] | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    timesteps_per_pass: int | None = None,
    dtype: str = DEFAULT_DTYPE,
    rows_per_part: int | None = None,
    progress: Progress | None = None,
    on_total: Callable[[int], None] | None = None,
    verify: bool = False,
    loader_workers: int | None = None,
) -> ExtractReport:
    """Extract pooled features of every (t, block) for the splits of ``dataset`` into ``store``.

    Args:
        dataset: the data set.
        backbone: image or text backbone.
        store: where the features go.
        timesteps: DDPM timesteps in ``[0, T)``.
        blocks: 1-based block numbers.
        splits: which splits (default: all).
        batch_size: rows prepared per batch.
        timesteps_per_pass: timesteps sharing one forward pass (default: all of them).
        dtype: "float16" (default) or "float32" storage.
        rows_per_part: rows per part file for a new extraction folder.
        progress: called with the number of rows finished (per timestep pass) after each batch.
        on_total: called once with the total number of row-passes to do.
        verify: check the SHA-256 of every stored part (default: only of parts whose size or
            modification time changed); a damaged part is rebuilt.
        loader_workers: processes preparing the inputs (decode and crop, tokenise) ahead of the
            model (``None``: :func:`~difffeat_tune._loader.default_loader_workers`; 0: in this
            process). The features do not depend on it.

    Returns:
        An :class:`ExtractReport`. Parts finished before an error stay in the store.
    """
    settings = ExtractSettings(splits, batch_size, timesteps_per_pass, dtype, rows_per_part, verify)
    plan = plan_extraction(dataset, backbone, store, timesteps, blocks, settings)
    ext = plan.extraction
    report = ExtractReport(modality=backbone.modality, folder=str(ext.folder), parts_skipped=plan.parts_skipped)
    if on_total is not None:
        on_total(plan.row_passes)
    workers = default_loader_workers() if loader_workers is None else loader_workers
    provenance = extraction_provenance(backbone, batch_size)
    start = time.perf_counter()
    with closing(prepared_batches(backbone, unit_jobs(dataset, plan.units, batch_size), workers)) as batches:
        for unit in plan.units:
            values = compute_unit(backbone, unit, batches, batch_size=batch_size,
                                  timesteps_per_pass=timesteps_per_pass, progress=progress)
            report.add(unit, write_unit(ext, dataset, unit, values, provenance))
    report.seconds = time.perf_counter() - start
    logger.info("%s extraction: %d parts written, %d skipped, %.1f rows/s into %s", backbone.modality,
                report.parts_written, report.parts_skipped, report.rows_per_second, ext.folder)
    return report
