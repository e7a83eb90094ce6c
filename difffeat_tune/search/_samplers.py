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

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING, Protocol

import optuna
from optuna.trial import TrialState

from difffeat_tune._defaults import DEFAULT_MAX_FAILURES
from difffeat_tune._errors import ConfigError
from difffeat_tune.search._heuristic import HeuristicSampler
from difffeat_tune.search._records import deferred_study_writes

if TYPE_CHECKING:
    from optuna.samplers._grid import GridValueType

    from difffeat_tune.search._plan import PlanStatus
    from difffeat_tune.space import SearchSpace


logger = logging.getLogger(__name__)


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


@dataclass(frozen=True)
class GridProgress:
    """Where a grid stands, from its trials: which grid points are done, running, or free.

    Attributes:
        size: the grid's points (ids ``0 .. size - 1``).
        done: points with a COMPLETE or PRUNED trial, or given up.
        given_up: points that failed ``max_failures`` times (skipped, as the heuristic skips a
            configuration).
        running: points held by a RUNNING trial, not done.
    """

    size: int
    done: frozenset[int]
    given_up: frozenset[int]
    running: frozenset[int]

    @property
    def free(self) -> list[int]:
        """Points a trial asked now may take: never tried, or failed fewer than ``max_failures`` times."""
        return sorted(set(range(self.size)) - self.done - self.running)

    @property
    def exhausted(self) -> bool:
        """Every point is done."""
        return len(self.done) >= self.size


class GridSearchSampler(optuna.samplers.GridSampler):
    """Optuna's GridSampler over the space's full grid, for engines that ask and tell themselves.

    The same grid and order as ``GridSampler(space.grid_axes(methods), seed=seed)``, with three
    differences: a grid point whose trial FAILED (an error, an interrupted run, a dead worker) is
    tried again, up to ``max_failures`` trials in all, as the heuristic retries a configuration
    (Optuna's sampler counts a failed point as visited, so an interrupted grid would never train
    it); its ``after_trial`` does not call ``study.stop()`` (engines read :func:`plan_state`
    instead); and ``before_trial`` writes the trial's grid point in one transaction.

    Args:
        search_space, seed: as for :class:`optuna.samplers.GridSampler`.
        max_failures: FAILED trials after which a grid point is given up (1: no retry).
        beat_claims: record the trial's first heartbeat in that transaction (for engines that
            beat their asked trials from a thread of their own, as
            :class:`~difffeat_tune.search._heuristic.HeuristicSampler` does with the same option).

    Notes:
        Distributed use: the first ``len(grid)`` trials take the point of their trial number
        (no two workers take the same one); later trials, which retry failed points, take a
        random free point, so that two workers rarely retry the same one.
    """

    def __init__(self, search_space: Mapping[str, Sequence[GridValueType]], seed: int | None = None, *,
                 max_failures: int = DEFAULT_MAX_FAILURES, beat_claims: bool = False) -> None:
        super().__init__(search_space, seed=seed)
        if not isinstance(max_failures, int) or isinstance(max_failures, bool) or max_failures < 1:
            raise ConfigError(f"max_failures must be an integer of 1 or more, got {max_failures!r}")
        self._max_failures = max_failures
        self._beat_claims = beat_claims

    @property
    def beats_claims(self) -> bool:
        """Whether :meth:`before_trial` records the trial's first heartbeat."""
        return self._beat_claims

    def progress(self, trials: Sequence[optuna.trial.FrozenTrial]) -> GridProgress:
        """Where the grid stands in ``trials`` (read once by the caller)."""
        done: set[int] = set()
        running: set[int] = set()
        failures: dict[int, int] = {}
        for t in trials:
            grid_id = t.system_attrs.get("grid_id")
            if grid_id is None or not self._same_search_space(t.system_attrs.get("search_space", {})):
                continue
            if t.state in (TrialState.COMPLETE, TrialState.PRUNED):
                done.add(grid_id)
            elif t.state == TrialState.FAIL:
                failures[grid_id] = failures.get(grid_id, 0) + 1
            elif t.state == TrialState.RUNNING:
                running.add(grid_id)
        given_up = {g for g, n in failures.items() if n >= self._max_failures} - done
        done |= given_up
        return GridProgress(self._n_min_trials, frozenset(done), frozenset(given_up), frozenset(running - done))

    def before_trial(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        # An enqueued trial, or one Optuna retries with its grid point, keeps what it holds.
        if "grid_id" in trial.system_attrs or "fixed_params" in trial.system_attrs:
            return
        free = self.progress(study._storage.get_all_trials(study._study_id, deepcopy=False)).free
        if 0 <= trial.number < self._n_min_trials and trial.number in free:
            grid_id = trial.number
        elif free:
            grid_id = int(self._rng.rng.choice(free))
        else:  # a race with another worker: re-evaluate a point, as Optuna's sampler does
            logger.warning("trial %d found no free grid point: it re-evaluates one", trial.number)
            grid_id = int(self._rng.rng.choice(self._n_min_trials))
        with deferred_study_writes(study, trial._trial_id, heartbeat=self._beat_claims) as view:
            view._storage.set_trial_system_attr(trial._trial_id, "search_space", self._search_space)
            view._storage.set_trial_system_attr(trial._trial_id, "grid_id", grid_id)

    def after_trial(self, study: optuna.Study, trial: optuna.trial.FrozenTrial, state: TrialState,
                    values: Sequence[float] | None) -> None:
        pass

    def exhausted_in(self, trials: Sequence[optuna.trial.FrozenTrial]) -> bool:
        """``is_exhausted`` judged on ``trials`` (read once by the caller): every grid point is done."""
        return self.progress(trials).exhausted

    def is_exhausted(self, study: optuna.Study) -> bool:
        """Every grid point has a COMPLETE or PRUNED trial, or was given up."""
        return self.exhausted_in(study.get_trials(deepcopy=False))


def _build_heuristic(space: SearchSpace, options: SearchOptions) -> optuna.samplers.BaseSampler:
    return HeuristicSampler(space, fusion_methods=options.fusion_methods or None,
                            neighbourhood=options.neighbourhood,  # type: ignore[arg-type]
                            radius=options.radius, max_failures=options.max_failures, proxy=options.unimodal_proxy,
                            proxy_top=options.proxy_top, seed=options.seed,
                            wait_timeout=0, beat_claims=True)  # the engines beat their trials (Heartbeat)


def _build_grid(space: SearchSpace, options: SearchOptions) -> optuna.samplers.BaseSampler:
    return GridSearchSampler(space.grid_axes(options.fusion_methods or None), seed=options.seed,
                             max_failures=options.max_failures,
                             beat_claims=True)  # the engines beat their trials (Heartbeat)


def _heuristic_state(study: optuna.Study, space: SearchSpace, options: SearchOptions) -> PlanState:
    sampler = study.sampler if isinstance(study.sampler, HeuristicSampler) else _build_heuristic(space, options)
    return PlanState.of(sampler.plan_status(study))  # type: ignore[union-attr]


def _grid_state(study: optuna.Study, space: SearchSpace, options: SearchOptions) -> PlanState:
    sampler = study.sampler if isinstance(study.sampler, GridSearchSampler) else _build_grid(space, options)
    trials = study.get_trials(deepcopy=False)
    progress = sampler.progress(trials)  # type: ignore[union-attr]
    waiting = sum(1 for t in trials if t.state == TrialState.WAITING)
    return PlanState(pending=len(progress.free) + waiting, running=len(progress.running),
                     finished=waiting == 0 and progress.exhausted, enqueued=waiting)


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
