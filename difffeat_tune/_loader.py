"""The extraction's input pipeline: batches prepared by worker processes while the device computes.

A backbone's :meth:`~difffeat_tune.backbones._base.Backbone.input_stage` (read and decode the
images, resize and crop them, or tokenise the captions) runs in ``workers`` processes of a torch
:class:`~torch.utils.data.DataLoader`, each batch one item, ``prefetch`` items ahead per worker
and in page-locked memory when the backbone's device is a CUDA device; the main process only runs
the device stage (the VAE, the transfer) and the model. With ``workers=0`` the input stage runs in
the main process, one batch after the other, as before the pipeline existed.

Batches come back in the order they were asked for (the loader's default in-order delivery),
and each row's noise is seeded by its id (:func:`~difffeat_tune.backbones._base.row_generator`),
so the features do not depend on the number of workers.

Example:
    >>> jobs = [(split, range(0, 64)), (split, range(64, 100))]  # doctest: +SKIP
    >>> with closing(prepared_batches(backbone, jobs, workers=2)) as batches:
    ...     for batch in batches:
    ...         feats = backbone.features(batch, [50], [12])

Notes:
    On Linux the workers are forked, so the data set and the input stage reach them without
    pickling; under ``spawn`` (macOS, Windows) they are pickled, which every built-in image
    source and input stage supports. Each worker runs torch with one thread.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from contextlib import closing
from dataclasses import dataclass

import torch
from torch.utils.data import DataLoader
from torch.utils.data import Dataset as TorchDataset

from difffeat_tune._device import available_cores
from difffeat_tune._errors import DiffFeatError
from difffeat_tune.backbones._base import Backbone, Encoded, InputStage
from difffeat_tune.data._base import Split

logger = logging.getLogger(__name__)

#: Batches each worker prepares ahead of the model.
PREFETCH_BATCHES = 2
#: At most this many workers by default (more rarely helps one device, and each holds its batches).
MAX_DEFAULT_WORKERS = 8

#: One batch to prepare: rows of a split, in order.
Job = tuple[Split, Sequence[int]]


def default_loader_workers(cores: int | None = None) -> int:
    """Half the cores this process may use (the rest run the model), at most :data:`MAX_DEFAULT_WORKERS`.

    A single core gives 0: the input stage then runs in the main process.
    """
    cores = available_cores() if cores is None else cores
    return min(MAX_DEFAULT_WORKERS, cores // 2)


def pins_memory(device: torch.device) -> bool:
    """Whether batches bound for ``device`` go through page-locked memory (CUDA devices only)."""
    return device.type == "cuda"


@dataclass(frozen=True)
class _Failure:
    """An error of our own raised in a worker, sent back whole (message and hint) to be raised again."""

    kind: type[DiffFeatError]
    message: str
    hint: str | None

    def error(self) -> DiffFeatError:
        return self.kind(self.message, self.hint)


class _Batches(TorchDataset):  # type: ignore[type-arg]
    """Item ``i`` is job ``i`` through the input stage (the loader's batching is off: one item, one batch)."""

    def __init__(self, stage: InputStage, jobs: Sequence[Job]) -> None:
        self.stage = stage
        self.jobs = list(jobs)

    def __len__(self) -> int:
        return len(self.jobs)

    def __getitem__(self, index: int) -> Encoded | _Failure:
        split, rows = self.jobs[index]
        try:
            return self.stage(split, rows)
        except DiffFeatError as exc:  # the loader would re-raise it as a new exception of the message alone
            return _Failure(type(exc), exc.message, exc.hint)


def input_batches(stage: InputStage, jobs: Sequence[Job], workers: int, *, pin: bool = False,
                  prefetch: int = PREFETCH_BATCHES) -> Iterator[Encoded]:
    """The batches of ``jobs`` through ``stage`` alone, in order, on CPU (pinned if ``pin``).

    Raises:
        DataError: as the input stage raises it, named by row id (and file).
    """
    if workers < 0:
        raise ValueError(f"loader workers must be 0 or more, got {workers}")
    if workers == 0 or len(jobs) <= 1:
        for split, rows in jobs:
            yield stage(split, rows)
        return
    loader = DataLoader(_Batches(stage, jobs), batch_size=None, shuffle=False, num_workers=min(workers, len(jobs)),
                        prefetch_factor=prefetch, pin_memory=pin)
    for item in loader:
        if isinstance(item, _Failure):
            raise item.error()
        yield item


def prepared_batches(backbone: Backbone, jobs: Sequence[Job], workers: int,
                     prefetch: int = PREFETCH_BATCHES) -> Iterator[Encoded]:
    """The batches of ``jobs``, in order, encoded and on the backbone's device.

    Args:
        backbone: the backbone (its input stage runs in the workers, its device stage here).
        jobs: ``(split, rows)`` of each batch.
        workers: loader worker processes (0: the input stage runs in this process).
        prefetch: batches each worker prepares ahead.

    Raises:
        DataError: an image that cannot be read or a caption that cannot be tokenised, named by
            row id (and file), as the backbone's own ``encode`` names it.

    Close the iterator (``contextlib.closing``) when leaving early: that stops the workers.
    """
    stage = backbone.input_stage()
    if stage is None:  # a backbone without an input stage prepares its batches whole, here
        for split, rows in jobs:
            yield backbone.encode(split, rows)
        return
    pin = pins_memory(backbone.device) and workers > 0
    with closing(input_batches(stage, jobs, workers, pin=pin, prefetch=prefetch)) as batches:
        for batch in batches:
            yield backbone.to_device(batch, non_blocking=pin)
