"""The samplers and pruners a search can use, each found in one table.

A sampler kind says how to build its Optuna sampler from the space and the options, and where a
study stands (:class:`PlanState`: can a trial be asked now, how many, is the plan finished) from
the study's trials alone: for the heuristic, the counts of its one plan type
(:class:`~difffeat_tune.search._plan.PlanStatus`); for the grid, its grid points. Every
engine and every summary asks :func:`plan_state`, so "finished" has one definition. Adding a
sampler is one module (the sampler) plus one entry of :data:`SAMPLERS`.

Engines ask and tell trials themselves (``study.ask`` / ``study.tell``), asking only when the
state says a configuration is pending, so samplers are built for that use: the
:class:`~difffeat_tune.search._heuristic.HeuristicSampler` never waits inside ``ask``
(``wait_timeout=0``), and the grid sampler does not call ``study.stop()`` (which raises outside
``optimize``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING, Protocol

import optuna
from optuna.trial import TrialState

from difffeat_tune._errors import ConfigError
from difffeat_tune.search._heuristic import HeuristicSampler
from difffeat_tune.search._records import deferred_study_writes

if TYPE_CHECKING:
    from optuna.samplers._grid import GridValueType

    from difffeat_tune.search._plan import PlanStatus
    from difffeat_tune.space import SearchSpace


class SearchOptions(Protocol):
    """What samplers read of :class:`~difffeat_tune.search._options.SearchOptions`."""

    sampler: str
    fusion_methods: tuple[str, ...]
    neighbourhood: str
    radius: int
    max_failures: int
    seed: int
    unimodal_proxy: str | None
    proxy_top: int


@dataclass(frozen=True)
class PlanState:
    """Where a study's plan stands, in the counts every engine reads, whatever the sampler.

    Attributes:
        pending: configurations a trial asked now would get (enqueued ones, and configurations
            awaiting their proxy score, included).
        running: planned configurations held by RUNNING trials (proxy trials included).
        finished: every planned configuration is finished (COMPLETE, PRUNED, or given up).
        enqueued: WAITING trials in the study (``study.ask`` pops them); with none, an engine
            may create its trials without looking for one.
    """

    pending: int
    running: int
    finished: bool
    enqueued: int = 0

    @property
    def can_ask(self) -> bool:
        """A trial asked now gets a configuration."""
        return self.pending > 0 and not self.finished

    @classmethod
    def of(cls, status: PlanStatus) -> PlanState:
        """The counts of a heuristic plan (its enqueued configurations are what a trial asked now pops)."""
        return cls(pending=len(status.pending) + len(status.queued) + len(status.proxy_pending),
                   running=len(status.in_progress), finished=status.exhausted,
                   enqueued=status.enqueued)


class GridSearchSampler(optuna.samplers.GridSampler):
    """Optuna's GridSampler over the space's full grid, for engines that ask and tell themselves.

    The same grid and order as ``GridSampler(space.grid_axes(methods), seed=seed)``; its
    ``after_trial`` does not call ``study.stop()`` (engines read :func:`plan_state` instead), and
    ``before_trial`` writes the trial's grid point in one transaction.

    Args:
        search_space, seed: as for :class:`optuna.samplers.GridSampler`.
        beat_claims: record the trial's first heartbeat in that transaction (for engines that
            beat their asked trials from a thread of their own, as
            :class:`~difffeat_tune.search._heuristic.HeuristicSampler` does with the same option).
    """

    def __init__(self, search_space: Mapping[str, Sequence[GridValueType]], seed: int | None = None, *,
                 beat_claims: bool = False) -> None:
        super().__init__(search_space, seed=seed)
        self._beat_claims = beat_claims

    @property
    def beats_claims(self) -> bool:
        """Whether :meth:`before_trial` records the trial's first heartbeat."""
        return self._beat_claims

    def before_trial(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        with deferred_study_writes(study, trial._trial_id, heartbeat=self._beat_claims) as view:
            super().before_trial(view, trial)

    def after_trial(self, study: optuna.Study, trial: optuna.trial.FrozenTrial, state: TrialState,
                    values: Sequence[float] | None) -> None:
        pass

    def exhausted_in(self, trials: Sequence[optuna.trial.FrozenTrial]) -> bool:
        """``is_exhausted`` judged on ``trials`` (read once by the caller): every grid point has a finished trial."""
        visited = {t.system_attrs["grid_id"] for t in trials
                   if t.state.is_finished() and "grid_id" in t.system_attrs
                   and self._same_search_space(t.system_attrs.get("search_space", {}))}
        return visited >= set(range(self._n_min_trials))


def _build_heuristic(space: SearchSpace, options: SearchOptions) -> optuna.samplers.BaseSampler:
    return HeuristicSampler(space, fusion_methods=options.fusion_methods or None,
                            neighbourhood=options.neighbourhood,  # type: ignore[arg-type]
                            radius=options.radius, max_failures=options.max_failures, proxy=options.unimodal_proxy,
                            proxy_top=options.proxy_top, seed=options.seed,
                            wait_timeout=0, beat_claims=True)  # the engines beat their trials (Heartbeat)


def _build_grid(space: SearchSpace, options: SearchOptions) -> optuna.samplers.BaseSampler:
    return GridSearchSampler(space.grid_axes(options.fusion_methods or None), seed=options.seed,
                             beat_claims=True)  # the engines beat their trials (Heartbeat)


def _heuristic_state(study: optuna.Study, space: SearchSpace, options: SearchOptions) -> PlanState:
    sampler = study.sampler if isinstance(study.sampler, HeuristicSampler) else _build_heuristic(space, options)
    return PlanState.of(sampler.plan_status(study))  # type: ignore[union-attr]


def _grid_state(study: optuna.Study, space: SearchSpace, options: SearchOptions) -> PlanState:
    sampler = study.sampler
    if not isinstance(sampler, optuna.samplers.GridSampler):
        sampler = _build_grid(space, options)
    size = len(space.grid_configs(options.fusion_methods or None))
    trials = study.get_trials(deepcopy=False)
    finished_ids = {t.system_attrs.get("grid_id") for t in trials if t.state.is_finished()}
    running_ids = {t.system_attrs.get("grid_id") for t in trials if t.state == TrialState.RUNNING} - finished_ids
    waiting = sum(1 for t in trials if t.state == TrialState.WAITING)
    grid_ids = set(range(size))
    free = len(grid_ids - finished_ids - running_ids)
    exhausted = (sampler.exhausted_in(trials) if isinstance(sampler, GridSearchSampler)
                 else sampler.is_exhausted(study))  # type: ignore[union-attr]
    return PlanState(pending=free + waiting, running=len(running_ids & grid_ids),
                     finished=waiting == 0 and exhausted, enqueued=waiting)


@dataclass(frozen=True)
class SamplerKind:
    """One way of choosing configurations.

    Attributes:
        name: the name users give (``run <name>``, ``SearchOptions.sampler``).
        summary: one line for help texts.
        build: ``build(space, options) -> optuna sampler``.
        state: ``state(study, space, options) -> PlanState``, from the study's storage.
    """

    name: str
    summary: str
    build: Callable[[SearchSpace, SearchOptions], optuna.samplers.BaseSampler]
    state: Callable[[optuna.Study, SearchSpace, SearchOptions], PlanState]


#: The samplers by name: the one table to extend with a new sampler.
SAMPLERS: Mapping[str, SamplerKind] = MappingProxyType({
    "heuristic": SamplerKind("heuristic", "Algorithm 1: every unimodal (t, b), then fusion around each modality's best.",
                             _build_heuristic, _heuristic_state),
    "grid": SamplerKind("grid", "The full-grid baseline: every image (t, b) x text (t, b) pair (Optuna's GridSampler).",
                        _build_grid, _grid_state),
})


def sampler_kind(name: str) -> SamplerKind:
    """The entry of :data:`SAMPLERS` named ``name`` (:class:`ConfigError` listing them otherwise)."""
    kind = SAMPLERS.get(name)
    if kind is None:
        raise ConfigError(f"unknown sampler {name!r}", f"use one of {', '.join(SAMPLERS)}")
    return kind


def make_sampler(space: SearchSpace, options: SearchOptions) -> optuna.samplers.BaseSampler:
    """The Optuna sampler of ``options.sampler`` for ``space``."""
    return sampler_kind(options.sampler).build(space, options)


def plan_state(study: optuna.Study, space: SearchSpace, options: SearchOptions) -> PlanState:
    """Where ``study``, searched over ``space`` with ``options.sampler``, stands."""
    return sampler_kind(options.sampler).state(study, space, options)


def _median(epochs: int) -> optuna.pruners.BasePruner:
    return optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=max(1, epochs // 4))


def _halving(epochs: int) -> optuna.pruners.BasePruner:
    return optuna.pruners.SuccessiveHalvingPruner(min_resource=max(1, epochs // 8), reduction_factor=3)


#: Pruners over the probe's per-epoch validation scores, by name (built from the probe's epochs).
PRUNERS: Mapping[str, Callable[[int], optuna.pruners.BasePruner]] = MappingProxyType({
    "none": lambda epochs: optuna.pruners.NopPruner(),
    "median": _median,
    "halving": _halving,
})


def make_pruner(name: str, epochs: int) -> optuna.pruners.BasePruner:
    """The pruner named ``name`` for probes of ``epochs`` epochs."""
    build = PRUNERS.get(name)
    if build is None:
        raise ConfigError(f"unknown pruner {name!r}", f"use one of {', '.join(PRUNERS)}")
    return build(epochs)
