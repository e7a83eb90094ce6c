"""How a search runs: the ``search`` part of the settings tree (sampler, pruner, engine, study).

This module is light (no Optuna, no torch): the command line reads :class:`SearchOptions`'
defaults for its help at start-up. The tables a value is checked against (samplers, pruners,
neighbourhoods) are imported when an instance is checked. Study names are made here, and only
here (:func:`study_name`, :meth:`SearchOptions.study_name_for`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from types import MappingProxyType

from difffeat_tune._defaults import DEFAULT_FUSION, DEFAULT_MAX_FAILURES, DEFAULT_RUNS
from difffeat_tune._errors import ConfigError, check_int
from difffeat_tune._paths import local_folder
from difffeat_tune.config import FUSION_METHODS

#: The engines that run a search's trials, by name: ``"module:function"`` of
#: ``engine(run, **engine_options)``, imported when used (the Ray engine imports Ray).
ENGINES: Mapping[str, str] = MappingProxyType({
    "local": "difffeat_tune.search._local:run_local",
    "ray": "difffeat_tune.search.ray_engine:run_ray",
})


def _check_int(name: str, value: object, minimum: int, *, optional: bool = False) -> None:
    check_int(f"SearchOptions.{name}", value, minimum, optional=optional)


@dataclass(frozen=True)
class SearchOptions:
    """How a search runs and where its study lives.

    Attributes:
        sampler: a name of :data:`~difffeat_tune.search._samplers.SAMPLERS`: "heuristic"
            (Algorithm 1) or "grid" (the space's whole grid).
        fusion_methods: fusion methods to search (default: linear addition, the paper's choice);
            :meth:`~difffeat_tune.settings.Settings.create` turns "all" into the space's.
        neighbourhood: the heuristic's neighbourhood: "cross", "box" or "radius".
        radius: its step on the grid.
        pruner: "none", "median" or "halving" (successive halving over the probe's epochs).
        workers: trial loops in this process (threads); more processes may join the same
            study through a shared storage.
        threads: torch intra-op threads of this process (``None``: the cores divided by
            ``workers``, at least 1).
        batch_trials: probes trained together as one computation, in this process or in one
            Ray Tune trial (``None``: as many as the phase offers and memory allows; 1 with a
            pruner, since the trials of one batch finish together and so could not prune each
            other).
        seed: seed of the grid order.
        max_failures: a configuration that failed this often is skipped.
        evaluate_best: re-train the best configuration and score the evaluation split at the end.
        n_trials: stop after this many new trials (``None``: until the plan is finished).
        engine: "local" (this process) or "ray" (Ray Tune trials on a Ray cluster).
        ray_address: with the Ray engine, the cluster to join ("auto", "host:port"); ``None``
            starts a private local Ray.
        storage: the Optuna storage (any SQLAlchemy URL); ``None``: a SQLite file in ``runs``.
        study_name: the study (``None``: ``<data set>-<sampler>``); the same name resumes it.
        runs: the local runs folder (default storage, comparisons, reports, Ray results).
        unimodal_proxy: the heuristic's proxy-guided unimodal phase: "logme" or "ridge" scores
            every unimodal configuration in closed form and only the ``proxy_top`` best per
            modality are trained (``None``: all are trained, as in the paper).
        proxy_top: the configurations per modality trained after the proxy stage.
    """

    sampler: str = "heuristic"
    fusion_methods: tuple[str, ...] = (DEFAULT_FUSION,)
    neighbourhood: str = "cross"
    radius: int = 1
    pruner: str = "none"
    workers: int = 1
    threads: int | None = None
    batch_trials: int | None = None
    seed: int = 0
    max_failures: int = DEFAULT_MAX_FAILURES
    evaluate_best: bool = True
    n_trials: int | None = None
    engine: str = "local"
    ray_address: str | None = None
    storage: str | None = None
    study_name: str | None = None
    runs: Path = DEFAULT_RUNS
    unimodal_proxy: str | None = None
    proxy_top: int = 3

    def __post_init__(self) -> None:
        from difffeat_tune.search._heuristic import NEIGHBOURHOODS
        from difffeat_tune.search._plan import PROXIES
        from difffeat_tune.search._samplers import PRUNERS, SAMPLERS

        if self.sampler not in SAMPLERS:
            raise ConfigError(f"unknown sampler {self.sampler!r}", f"use one of {', '.join(SAMPLERS)}")
        if self.pruner not in PRUNERS:
            raise ConfigError(f"unknown pruner {self.pruner!r}", f"use one of {', '.join(PRUNERS)}")
        if self.neighbourhood not in NEIGHBOURHOODS:
            raise ConfigError(f"unknown neighbourhood {self.neighbourhood!r}", f"use one of {', '.join(NEIGHBOURHOODS)}")
        if self.engine not in ENGINES:
            raise ConfigError(f"unknown engine {self.engine!r}", f"use one of {', '.join(ENGINES)}")
        for m in self.fusion_methods:
            if m not in FUSION_METHODS:
                raise ConfigError(f"unknown fusion method {m!r}", f"use {', '.join(FUSION_METHODS)} or 'all'")
        _check_int("radius", self.radius, 0)
        _check_int("workers", self.workers, 1)
        _check_int("threads", self.threads, 1, optional=True)
        _check_int("batch_trials", self.batch_trials, 1, optional=True)
        _check_int("max_failures", self.max_failures, 1)
        _check_int("n_trials", self.n_trials, 0, optional=True)
        object.__setattr__(self, "runs", local_folder(self.runs, "SearchOptions.runs"))
        _check_int("proxy_top", self.proxy_top, 1)
        if self.unimodal_proxy is not None and self.unimodal_proxy not in PROXIES:
            raise ConfigError(f"SearchOptions.unimodal_proxy: unknown proxy {self.unimodal_proxy!r}",
                              f"use one of {', '.join(PROXIES)}, or None to train every unimodal configuration",
                              field="SearchOptions.unimodal_proxy")
        if self.unimodal_proxy is not None and self.sampler != "heuristic":
            raise ConfigError(f"SearchOptions.unimodal_proxy applies to the heuristic sampler, not {self.sampler!r}",
                              "leave unimodal_proxy None for this sampler", field="SearchOptions.unimodal_proxy")

    def storage_url(self) -> str:
        """The storage URL: ``storage``, else the SQLite file ``<runs>/studies.db``."""
        from difffeat_tune.search._storage import default_storage

        return self.storage or default_storage(self.runs)

    def study_base(self, dataset_folder: str) -> str:
        """What the studies of a data set are named after: ``study_name`` if given (``compare``'s
        base), else the data set's name as its feature-store folder spells it (``my data.jsonl`` ->
        ``my_data``), so every command finds the same study."""
        return self.study_name or dataset_folder.rsplit("-", 1)[0]  # the folder is "<name slug>-<fingerprint>"

    @property
    def plan_label(self) -> str:
        """The sampler, and the proxy that guides it (``heuristic-ridge``): what names its study."""
        return plan_label(self.sampler, self.unimodal_proxy)

    def study_name_for(self, dataset_folder: str) -> str:
        """The study name: ``study_name``, else ``<data set name>-<sampler>`` (``-<proxy>`` appended
        for a proxy-guided heuristic, which is another plan; see :meth:`study_base`)."""
        return self.study_name or study_name(self.study_base(dataset_folder), self.plan_label)

    def for_sampler(self, sampler: str, base: str) -> SearchOptions:
        """These options with ``sampler``, on its study of ``base`` (one study of a ``compare`` pair)."""
        return replace(self, sampler=sampler, study_name=study_name(base, sampler))

    def report_folder(self, study: str) -> Path:
        """The folder of ``study``'s report: ``<runs>/reports/<study>``."""
        return report_folder(self.runs, study)


#: The samplers ``compare`` runs on the same features, the one it judges first.
COMPARED: tuple[str, str] = ("heuristic", "grid")


def study_name(base: str, sampler: str) -> str:
    """The study of ``sampler`` on ``base``: ``<base>-<sampler>`` (``compare`` writes one per sampler)."""
    return f"{base}-{sampler}"


def plan_label(sampler: str, proxy: str | None = None) -> str:
    """What names a plan's study after its base: the sampler, ``-<proxy>`` appended for a proxy-guided one."""
    return sampler if proxy is None else f"{sampler}-{proxy}"


def compare_role(name: str) -> tuple[str, str] | None:
    """``(base, plan label)`` of a study ``compare`` writes: ``x-heuristic``, ``x-grid`` or the
    proxy-guided ``x-heuristic-<proxy>`` (``None`` for another name)."""
    from difffeat_tune.search._plan import PROXIES

    for label in (*(plan_label(COMPARED[0], p) for p in PROXIES), *COMPARED):
        suffix = study_name("", label)
        if name.endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)], label
    return None


def compare_studies(name: str) -> tuple[str, ...]:
    """The other studies of the ``compare`` that ``name`` belongs to, by their names.

    For ``x-heuristic`` or ``x-grid``: the other one, then every proxy-guided ``x-heuristic-<proxy>``
    (``compare --unimodal-proxy`` adds one); for ``x-heuristic-<proxy>``: ``x-heuristic`` and
    ``x-grid``. Empty for a name ``compare`` does not write.
    """
    from difffeat_tune.search._plan import PROXIES

    role = compare_role(name)
    if role is None:
        return ()
    base, label = role
    plain = tuple(study_name(base, s) for s in COMPARED)
    if label not in COMPARED:
        return plain
    return tuple(n for n in (*plain, *(study_name(base, plan_label(COMPARED[0], p)) for p in PROXIES)) if n != name)


def report_folder(runs: Path, study: str) -> Path:
    """The folder of ``study``'s report in the runs folder ``runs``: ``<runs>/reports/<study>``."""
    return Path(runs) / "reports" / study
