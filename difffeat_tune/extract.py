"""The one-pass extraction loop: data set x timesteps -> backbone -> feature store, resumable.

Each batch is prepared once (VAE latents or tokens), then every requested timestep goes through
the backbone, several timesteps per pass, and every requested block comes out of that same pass
(which stops after the deepest block). Rows are written in parts of ``rows_per_part``; a part
already complete in the store is skipped, and a part missing only some blocks computes just those.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from difffeat_tune._defaults import DEFAULT_BATCH_SIZE, DEFAULT_DTYPE
from difffeat_tune._errors import ConfigError, DataError
from difffeat_tune.backbones._base import Backbone
from difffeat_tune.data._base import Dataset, Split
from difffeat_tune.store import ExtractionKey, FeatureStore

logger = logging.getLogger(__name__)


#: ``progress(rows_done_now)`` is called after each batch; ``rows_total`` is announced first.
Progress = Callable[[int], None]


@dataclass
class ExtractReport:
    """What one call of :func:`extract` did."""

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


def _check_images(plan: Sequence[tuple[Split, int, int, range, dict[int, list[int]]]]) -> None:
    """Read the header of every image the plan will decode, before anything is written."""
    for split, _, _, rows, _ in plan:
        check = getattr(split.images, "check", None)  # files can be unreadable; in-memory arrays cannot
        if check is not None:
            check(rows)


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

    Returns:
        An :class:`ExtractReport`. Parts finished before an error stay in the store.
    """
    timesteps = sorted(set(timesteps))
    blocks = sorted(set(blocks))
    splits = list(dataset.splits) if splits is None else list(splits)
    if batch_size < 1:
        raise ConfigError(f"batch size must be positive, got {batch_size}")
    check_request(dataset, backbone, timesteps, blocks, splits)
    key = ExtractionKey(backbone.modality, backbone.name, backbone.fingerprint(), backbone.settings(), dtype)
    ext = store.extraction(dataset, key, rows_per_part=rows_per_part, width=backbone.width,
                           num_blocks=backbone.num_blocks, create=False)
    per_pass = timesteps_per_pass or len(timesteps)
    report = ExtractReport(modality=backbone.modality, folder=str(ext.folder))

    plan: list[tuple[Split, int, int, range, dict[int, list[int]]]] = []
    for name in splits:
        split = dataset.split(name)
        n_parts = max(1, math.ceil(len(split) / ext.rows_per_part))
        for part in range(n_parts):
            rows = range(part * ext.rows_per_part, min(len(split), (part + 1) * ext.rows_per_part))
            have = {t: ext.part_blocks(t, name, part, verify=verify) for t in timesteps}
            missing = {t: [b for b in blocks if b not in have[t]] for t in timesteps}
            missing = {t: bs for t, bs in missing.items() if bs}
            report.parts_skipped += len(timesteps) - len(missing)  # (t, split, part) units already complete
            if missing:
                plan.append((split, part, n_parts, rows, missing))
    if plan and backbone.modality == "image":
        _check_images(plan)
    if plan:  # the data set's labels and the extraction's folder appear only once there is work to do
        store.write_dataset(dataset)
        ext.create()
    if on_total is not None:
        on_total(sum(len(rows) * len(missing) for _, _, _, rows, missing in plan))

    start = time.perf_counter()
    for split, part, n_parts, rows, missing in plan:
        todo_t = sorted(missing)
        todo_b = sorted(set().union(*missing.values()))
        collected: dict[int, dict[int, list[np.ndarray]]] = {t: {b: [] for b in todo_b} for t in todo_t}
        for lo in range(rows.start, rows.stop, batch_size):
            batch = backbone.encode(split, range(lo, min(rows.stop, lo + batch_size)))
            for i in range(0, len(todo_t), per_pass):
                group = todo_t[i : i + per_pass]
                feats = backbone.features(batch, group, todo_b)
                for t in group:
                    for b in todo_b:
                        collected[t][b].append(feats[t][b].to("cpu", torch.float32).numpy())
                if progress is not None:
                    progress(len(batch) * len(group))
        ids = split.ids[rows.start : rows.stop]
        for t in todo_t:
            values = {b: np.concatenate(collected[t][b]) for b in todo_b}
            ext.write_part(t, split.name, part, ids, values, n_parts=n_parts,
                           provenance={"batch_size": batch_size, "device": str(backbone.device)})
            report.parts_written += 1
        report.rows += len(rows) * len(todo_t)
        report.per_split[split.name] = report.per_split.get(split.name, 0) + len(rows)
    report.seconds = time.perf_counter() - start
    logger.info("%s extraction: %d parts written, %d skipped, %.1f rows/s into %s", backbone.modality,
                report.parts_written, report.parts_skipped, report.rows_per_second, ext.folder)
    return report
