"""Extraction on a Ray cluster: the plan's units spread over Ray actors, the driver the manifest's only writer.

The driver plans the extraction exactly as :func:`~difffeat_tune.extract.extract` does (same
folder, same parts, same resumption), with one unit per split x part x timestep group
(``timesteps_per_pass``). Each actor loads the backbone once (``num_gpus=1`` per actor when the
cluster has GPUs, one CPU otherwise), then computes whole units with the same loop as a local
extraction (:func:`~difffeat_tune.extract.compute_unit`, its inputs prepared by its own loader
workers) and writes each unit's part files itself, atomically, through the store's
``write_part``. It returns the parts' manifest entries; the driver records them in the manifest
as units finish. So the files and their paths are those of a local extraction, and nothing is lost
to two processes writing the manifest at once.

Resumable like a local extraction: a part is in the store once the driver has recorded it, and a
new run skips it. An actor that dies mid-unit (a node lost, ``ray.kill``) loses only that unit:
its part files are either complete (atomic rename) or absent, and none of them is in the
manifest, so the unit goes back in the queue and a new actor takes the dead one's place.

Why Ray core actors, not Ray Data:

* the unit of work is already defined by the store (one part of one split at some timesteps);
  an actor per device holding the backbone, fed unit after unit, is all the scheduling needed;
* the store's manifest stays the only commit point, written by one process; Ray Data's
  ``map_batches`` with an actor pool reorders rows unless told otherwise and its Parquet writes
  are not committed anywhere, so the ids and the commit would have to be rebuilt around it;
* each actor keeps the project's own input pipeline (a torch ``DataLoader`` over its unit), so a
  Ray extraction and a local one run the same code on each batch.

Example:
    >>> from functools import partial
    >>> from difffeat_tune.backbones._registry import load_backbone
    >>> load = partial(load_backbone, "tiny", "image", LoadOptions(device="cpu"))  # doctest: +SKIP
    >>> report = extract_ray(dataset, load(), FeatureStore("runs/features"), [10, 50], [8, 12],
    ...                      load=load, settings=ExtractSettings(batch_size=32), actors=4)  # doctest: +SKIP

Notes:
    Every actor must see the store: a folder at the same path on every node (a shared file
    system), or a bucket (``s3://...``, credentials from each node's environment). ``ray`` is
    imported only when this function runs.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import closing
from typing import Any

from difffeat_tune._errors import BackboneError, DiffFeatError
from difffeat_tune._loader import prepared_batches
from difffeat_tune._manifest import Manifest, PartEntry, PartKey
from difffeat_tune.backbones._base import Backbone
from difffeat_tune.data._base import Dataset
from difffeat_tune.extract import (
    ExtractReport,
    ExtractSettings,
    Progress,
    Unit,
    compute_unit,
    extraction_provenance,
    plan_extraction,
    unit_jobs,
    write_unit,
)
from difffeat_tune.store import Extraction, FeatureStore

logger = logging.getLogger(__name__)

#: Loader workers per actor: none by default (an actor's CPUs are its own; one CPU per CPU actor).
DEFAULT_ACTOR_LOADER_WORKERS = 0


class _ActorExtraction(Extraction):
    """The extraction as an actor sees it: parts written to their paths, the manifest never saved.

    ``write_part`` writes the part file atomically and records it in this object's manifest in
    memory only; the driver, the manifest's only writer, records the entries the actor returns.
    """

    def _save_manifest(self, changed: Manifest | None = None) -> None:
        pass

    def entry(self, t: int, split: str, part: int) -> PartEntry:
        """The manifest entry ``write_part`` made for one part."""
        entry = self.manifest.get(PartKey(split, t, part))
        assert entry is not None, "write_part records every part it writes"
        return entry


def _record(ext: Extraction, unit: Unit, entries: Mapping[int, PartEntry]) -> None:
    """Record a finished unit's parts in the extraction's manifest (the driver's side of ``write_part``)."""
    ext.record_parts({PartKey(unit.split, t, unit.part): entry for t, entry in entries.items()},
                     n_parts=unit.n_parts)


class _UnitWorker:
    """A Ray actor: one backbone, units computed and written one after the other."""

    def __init__(self, load: Callable[[], Backbone], fingerprint: str, dataset: Dataset, folder: str,
                 batch_size: int, timesteps_per_pass: int | None, loader_workers: int) -> None:
        # An error here is kept for ready(): Ray would report a failed __init__ without its cause.
        self.error: DiffFeatError | None = None
        try:
            self.backbone = load()
            if self.backbone.fingerprint() != fingerprint:
                raise BackboneError(
                    f"the backbone loaded on a Ray worker ({self.backbone.fingerprint()}) differs from the "
                    f"driver's ({fingerprint})",
                    "give every node the same weights (the same hub id, or a folder on shared storage)")
            # Read once: the actor's units write distinct part files, so the manifest it starts
            # from (the parts already there) is all it needs; its own entries stay in memory.
            self.extraction = _ActorExtraction(folder)
        except DiffFeatError as exc:
            self.error = exc
        self.dataset = dataset
        self.batch_size = batch_size
        self.timesteps_per_pass = timesteps_per_pass
        self.loader_workers = loader_workers

    def ready(self) -> str:
        """The actor's device, once its backbone is loaded; the load's error otherwise."""
        if self.error is not None:
            raise self.error
        return str(self.backbone.device)

    def run(self, unit: Unit) -> dict[int, PartEntry]:
        """Compute and write one unit; return ``{t: manifest entry}`` of its parts."""
        ext = self.extraction
        jobs = unit_jobs(self.dataset, [unit], self.batch_size)
        with closing(prepared_batches(self.backbone, jobs, self.loader_workers)) as batches:
            values = compute_unit(self.backbone, unit, batches, batch_size=self.batch_size,
                                  timesteps_per_pass=self.timesteps_per_pass)
        write_unit(ext, self.dataset, unit, values, extraction_provenance(self.backbone, self.batch_size))
        return {t: ext.entry(t, unit.split, unit.part) for t in unit.timesteps}


def default_actors(units: int, device: str | None = None) -> int:
    """One actor per GPU of the cluster, else one per CPU; never more than there are units (call after ``ray.init``)."""
    import ray

    total = ray.cluster_resources()
    gpus = int(total.get("GPU", 0)) if device != "cpu" else 0
    return max(1, min(units, gpus or int(total.get("CPU", 1))))


def extract_ray(
    dataset: Dataset,
    backbone: Backbone,
    store: FeatureStore,
    timesteps: Sequence[int],
    blocks: Sequence[int],
    *,
    load: Callable[[], Backbone],
    settings: ExtractSettings | None = None,
    actors: int | None = None,
    ray_address: str | None = None,
    progress: Progress | None = None,
    on_total: Callable[[int], None] | None = None,
    loader_workers: int | None = None,
    on_started: Callable[[list[Any]], None] | None = None,
) -> ExtractReport:
    """:func:`~difffeat_tune.extract.extract` with the units computed by Ray actors.

    Args:
        backbone: the backbone as the driver loaded it (for the plan: key, widths, checks).
        load: builds the same backbone on a worker; picklable (e.g. a ``functools.partial`` of
            :func:`~difffeat_tune.backbones._registry.load_backbone`). Each actor calls it once.
        settings: splits, batch size, dtype, part size, verification; ``timesteps_per_pass``
            also cuts each part's timesteps into units of that many.
        actors: how many actors (``None``: :func:`default_actors`).
        ray_address: the cluster to join (``None``: the Ray this process runs, else a local one).
        progress: called with the rows x timesteps of each unit as it finishes.
        loader_workers: input-preparation processes inside each actor (``None``:
            :data:`DEFAULT_ACTOR_LOADER_WORKERS`).
        on_started: called with the actor handles once they are created (tests kill one).
        Others: as :func:`~difffeat_tune.extract.extract`.

    Returns:
        An :class:`~difffeat_tune.extract.ExtractReport`. Units recorded before an error stay
        in the store.

    Raises:
        BackboneError: an actor cannot load the backbone, or loads other weights than the driver.
    """
    settings = settings or ExtractSettings()
    loader_workers = DEFAULT_ACTOR_LOADER_WORKERS if loader_workers is None else loader_workers
    batch_size, timesteps_per_pass = settings.batch_size, settings.timesteps_per_pass
    plan = plan_extraction(dataset, backbone, store, timesteps, blocks, settings, unit_per_pass=True)
    ext = plan.extraction
    report = ExtractReport(modality=backbone.modality, folder=str(ext.folder), parts_skipped=plan.parts_skipped)
    if on_total is not None:
        on_total(plan.row_passes)
    if not plan.units:
        return report
    import ray

    from difffeat_tune._ray import start_ray

    started = start_ray(ray_address)
    start = time.perf_counter()
    try:
        n_actors = actors or default_actors(len(plan.units), str(backbone.device))
        gpu = float(ray.cluster_resources().get("GPU", 0)) > 0 and backbone.device.type != "cpu"
        actor_class = ray.remote(num_gpus=1, num_cpus=1)(_UnitWorker) if gpu else ray.remote(num_cpus=1)(_UnitWorker)
        data_ref = ray.put(dataset)

        def new_actor() -> Any:
            actor = actor_class.remote(load, backbone.fingerprint(), data_ref, str(ext.folder), batch_size,
                                       timesteps_per_pass, loader_workers)
            try:
                ray.get(actor.ready.remote())
            except ray.exceptions.RayTaskError as exc:  # the load failed: every replacement's would too
                ray.kill(actor)
                raise _cause(exc) from None
            return actor

        pool = [new_actor() for _ in range(min(n_actors, len(plan.units)))]
        logger.info("extracting %d units on %d Ray actors", len(plan.units), len(pool))
        if on_started is not None:
            on_started(list(pool))
        _drive(pool, plan.units, ext, report, progress, new_actor)
    finally:
        if started:
            ray.shutdown()
    report.seconds = time.perf_counter() - start
    logger.info("%s extraction on Ray: %d parts written, %d skipped, %.1f rows/s into %s", backbone.modality,
                report.parts_written, report.parts_skipped, report.rows_per_second, ext.folder)
    return report


def _drive(pool: list[Any], units: Sequence[Unit], ext: Extraction, report: ExtractReport,
           progress: Progress | None, new_actor: Callable[[], Any]) -> None:
    """Feed units to idle actors; record each finished unit; redo the unit of an actor that died."""
    import ray

    queue = list(reversed(units))  # popped from the end: plan order
    running: dict[Any, tuple[Any, Unit]] = {}
    idle = list(pool)
    lost = 0
    try:
        while queue or running:
            while queue and idle:
                actor = idle.pop()
                unit = queue.pop()
                running[actor.run.remote(unit)] = (actor, unit)
            done, _ = ray.wait(list(running), num_returns=1)
            actor, unit = running.pop(done[0])
            try:
                entries = ray.get(done[0])
            except ray.exceptions.RayActorError:
                lost += 1
                if lost > len(units):  # every unit could have been redone once: something kills actors
                    raise
                logger.warning("a Ray actor died during %s part %d (t=%s): the unit is redone", unit.split,
                               unit.part, unit.timesteps)
                queue.append(unit)
                idle.append(new_actor())
                continue
            except ray.exceptions.RayTaskError as exc:
                raise _cause(exc) from None
            _record(ext, unit, entries)
            report.add(unit, len(entries))
            if progress is not None:
                progress(unit.row_passes)
            idle.append(actor)
    finally:
        for actor in [*idle, *(a for a, _ in running.values())]:
            ray.kill(actor)


def _cause(exc: Exception) -> Exception:
    """The error of our own behind a Ray error (so that it names the file or value), else the Ray error."""
    cause = getattr(exc, "cause", None)
    while cause is not None and not isinstance(cause, DiffFeatError) and getattr(cause, "cause", None) is not None:
        cause = cause.cause
    return cause if isinstance(cause, DiffFeatError) else exc
