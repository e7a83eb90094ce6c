"""Studies: run the heuristic or the grid search, summarise what a study holds (storage: ``_storage``).

Every trial writes its phase, modality, configuration label, full metric set, epochs and seconds
as user attributes, so the dashboard and :func:`summarize` see everything. The best
configuration is re-trained and scored on the evaluation split once the search ends
(:meth:`~difffeat_tune.probe.objective.Objective.evaluate`) and stored on the study.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Literal

import optuna
from optuna.trial import TrialState

from difffeat_tune._errors import ConfigError
from difffeat_tune.config import DEFAULT_FUSION, FUSION_METHODS, TrialConfig
from difffeat_tune.probe.objective import Objective
from difffeat_tune.search._heuristic import HeuristicSampler
from difffeat_tune.search._storage import (  # noqa: F401 - re-exported: the storage used to live here
    DEFAULT_RUNS, GRACE_PERIOD, HEARTBEAT_INTERVAL, SQLITE_TIMEOUT, default_storage, open_storage, parse_storage_url,
)
from difffeat_tune.search._suggest import suggest_config
from difffeat_tune.search.space import SearchSpace

logger = logging.getLogger(__name__)

SamplerKind = Literal["heuristic", "grid"]
SAMPLERS: tuple[str, ...] = ("heuristic", "grid")
PRUNERS: tuple[str, ...] = ("none", "median", "halving")

A_PHASE, A_MODALITY, A_CONFIG, A_METRICS, A_EPOCHS, A_SECONDS, A_SPLIT = (
    "phase", "modality", "config", "metrics", "epochs_run", "seconds", "split")


@dataclass(frozen=True)
class SearchOptions:
    """How a search runs.

    Attributes:
        sampler: "heuristic" (Algorithm 1) or "grid" (every fusion pair of the space).
        fusion_methods: fusion methods to search (default: linear addition, the paper's choice).
        neighbourhood: the heuristic's neighbourhood: "cross", "box" or "radius".
        radius: its step on the grid.
        pruner: "none", "median" or "halving" (successive halving over the probe's epochs).
        workers: parallel trials in this process (Optuna ``n_jobs``); more processes may join
            the same study through a shared storage.
        seed: seed of the grid order.
        max_failures: a configuration that failed this often is skipped.
        evaluate_best: re-train the best configuration and score the evaluation split at the end.
    """

    sampler: SamplerKind = "heuristic"
    fusion_methods: tuple[str, ...] = (DEFAULT_FUSION,)
    neighbourhood: str = "cross"
    radius: int = 1
    pruner: str = "none"
    workers: int = 1
    seed: int = 0
    max_failures: int = 2
    evaluate_best: bool = True

    def __post_init__(self) -> None:
        if self.sampler not in SAMPLERS:
            raise ConfigError(f"unknown sampler {self.sampler!r}", f"use {' or '.join(SAMPLERS)}")
        if self.pruner not in PRUNERS:
            raise ConfigError(f"unknown pruner {self.pruner!r}", f"use one of {', '.join(PRUNERS)}")
        for m in self.fusion_methods:
            if m not in FUSION_METHODS:
                raise ConfigError(f"unknown fusion method {m!r}", f"use {', '.join(FUSION_METHODS)} or 'all'")
        if self.workers < 1:
            raise ConfigError(f"workers must be at least 1, got {self.workers}")


@dataclass
class SearchSummary:
    """What a study holds: the best configuration, its scores, and what the search spent."""

    study_name: str
    sampler: str
    best_config: dict[str, object] | None
    best_label: str | None
    best_score: float | None
    selection_split: str | None
    best_metrics: dict[str, float]
    eval_split: str | None
    eval_metrics: dict[str, float]
    trials: dict[str, int]
    phases: dict[str, int]
    probe_epochs: int
    wall_seconds: float
    extra: dict[str, object] = field(default_factory=dict)

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def make_sampler(space: SearchSpace, options: SearchOptions) -> optuna.samplers.BaseSampler:
    """The sampler of ``options``: the HeuristicSampler or Optuna's GridSampler over the fusion grid."""
    if options.sampler == "heuristic":
        return HeuristicSampler(space, fusion_methods=options.fusion_methods, neighbourhood=options.neighbourhood,
                                radius=options.radius, max_failures=options.max_failures, seed=options.seed)
    return optuna.samplers.GridSampler(space.fusion_grid(options.fusion_methods), seed=options.seed)


def make_pruner(name: str, epochs: int) -> optuna.pruners.BasePruner:
    """Pruner over the probe's per-epoch validation scores."""
    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=max(1, epochs // 4))
    if name == "halving":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=max(1, epochs // 8), reduction_factor=3)
    return optuna.pruners.NopPruner()


def record_config(trial: optuna.Trial, config: TrialConfig) -> None:
    """User attributes every trial gets once its configuration is known (any engine)."""
    trial.set_user_attr(A_MODALITY, config.modality)
    trial.set_user_attr(A_CONFIG, config.label())
    if trial.user_attrs.get(A_PHASE) is None:  # the HeuristicSampler sets the phase itself
        trial.set_user_attr(A_PHASE, config.modality)


def result_attrs(metrics: Mapping[str, float], epochs_run: int, seconds: float, split: str | None) -> dict[str, object]:
    """User attributes of a finished trial: the metric set, flat copies of each metric (sortable
    columns in the dashboard), epochs, seconds and the scored split."""
    return {A_METRICS: dict(metrics), **metrics, A_EPOCHS: int(epochs_run), A_SECONDS: round(float(seconds), 4),
            A_SPLIT: split}


def trial_function(objective: Objective, space: SearchSpace) -> Callable[[optuna.Trial], float]:
    """The Optuna objective: suggest a configuration, train with per-epoch reports, record attributes."""

    def run(trial: optuna.Trial) -> float:
        config = suggest_config(trial, space)
        record_config(trial, config)

        def on_epoch(epoch: int, score: float) -> bool:
            trial.report(score, epoch)
            return trial.should_prune()

        result = objective(config, on_epoch)
        for key, value in result_attrs(result.metrics, result.epochs_run, result.seconds, result.split).items():
            trial.set_user_attr(key, value)
        if result.stopped_early:
            raise optuna.TrialPruned(f"pruned after epoch {result.epochs_run} at {result.score:.4f}")
        return result.score

    return run


def run_search(
    objective: Objective,
    space: SearchSpace,
    options: SearchOptions,
    *,
    storage: str,
    study_name: str,
    n_trials: int | None = None,
    callbacks: Sequence[Callable[[optuna.Study, optuna.trial.FrozenTrial], None]] = (),
) -> SearchSummary:
    """Run (or resume) a search study until its sampler's plan is exhausted.

    Args:
        objective: trains and scores one configuration.
        space: the search space.
        options: sampler, pruner, workers...
        storage: SQLAlchemy URL of the Optuna storage.
        study_name: the study; re-running with the same name resumes it.
        n_trials: stop after this many trials in this call (default: until the plan is done).
        callbacks: passed to ``study.optimize`` (e.g. a progress display).
    """
    epochs = objective.settings.recipe.epochs
    study = optuna.create_study(
        storage=open_storage(storage), study_name=study_name, direction="maximize", load_if_exists=True,
        sampler=make_sampler(space, options), pruner=make_pruner(options.pruner, epochs),
    )
    record_study_attrs(study, options, space, objective, engine="local")
    if options.sampler == "grid":
        grid_size = len(space.fusion_configs(options.fusion_methods))
        done = sum(t.state.is_finished() for t in study.get_trials(deepcopy=False))
        n_trials = min(n_trials, max(0, grid_size - done)) if n_trials is not None else max(0, grid_size - done)
    start = time.perf_counter()
    if n_trials is None or n_trials > 0:
        study.optimize(trial_function(objective, space), n_trials=n_trials, n_jobs=options.workers,
                       callbacks=list(callbacks), catch=(Exception,), gc_after_trial=False)
    elapsed = time.perf_counter() - start
    study.set_user_attr("wall_seconds", float(study.user_attrs.get("wall_seconds", 0.0)) + elapsed)
    if options.evaluate_best:
        evaluate_best(study, objective, space)
    return summarize(study)


def record_study_attrs(study: optuna.Study, options: SearchOptions, space: SearchSpace, objective: Objective,
                       *, engine: str) -> None:
    """Check that a resumed study was run with the same sampler and space, then record the run's settings."""
    _check_study_matches(study, options, space)
    for key, value in {"sampler": options.sampler, "space": space.source or space.name,
                       "fusion_methods": list(options.fusion_methods), "neighbourhood": options.neighbourhood,
                       "pruner": options.pruner, "features": str(objective.view.folder),
                       "image_extraction": objective.view.image.folder.name if objective.view.image else None,
                       "text_extraction": objective.view.text.folder.name if objective.view.text else None,
                       "selection_split": objective.selection_split, "eval_split": objective.eval_split,
                       "epochs": objective.settings.recipe.epochs, "engine": engine}.items():
        study.set_user_attr(key, value)


def _check_study_matches(study: optuna.Study, options: SearchOptions, space: SearchSpace) -> None:
    previous = study.user_attrs.get("sampler")
    if previous is not None and previous != options.sampler:
        raise ConfigError(f"study {study.study_name!r} was run with the {previous} sampler, not {options.sampler}",
                          "choose another --study-name")
    old_space = study.user_attrs.get("space")
    if old_space is not None and old_space != (space.source or space.name):
        raise ConfigError(f"study {study.study_name!r} was run on space {old_space}, not {space.source or space.name}",
                          "choose another --study-name")


def evaluate_best(study: optuna.Study, objective: Objective, space: SearchSpace) -> None:
    """Re-train the study's best configuration and store its evaluation-split metrics (once per best trial)."""
    try:
        best = study.best_trial
    except ValueError:
        return
    if study.user_attrs.get("eval_trial") == best.number or objective.eval_split is None:
        return
    config = TrialConfig.from_params(best.params, d_alg=space.d_alg)
    result = objective.evaluate(config)
    study.set_user_attr("eval_trial", best.number)
    study.set_user_attr("eval_split", result.split)
    study.set_user_attr("eval_metrics", result.metrics)
    study.set_user_attr("eval_epochs", result.epochs_run)


def summarize(study: optuna.Study) -> SearchSummary:
    """Summarise a study from storage alone (works for runs of other processes and engines)."""
    trials = study.get_trials(deepcopy=False)
    states = Counter(t.state.name.lower() for t in trials)
    phases = Counter(str(t.user_attrs.get(A_PHASE, "?")) for t in trials
                     if t.state in (TrialState.COMPLETE, TrialState.PRUNED))
    try:
        best = study.best_trial
    except ValueError:
        best = None
    attrs = study.user_attrs
    return SearchSummary(
        study_name=study.study_name,
        sampler=str(attrs.get("sampler", "?")),
        best_config=dict(best.params) if best else None,
        best_label=str(best.user_attrs.get(A_CONFIG)) if best else None,
        best_score=float(best.value) if best and best.value is not None else None,
        selection_split=str(best.user_attrs.get(A_SPLIT)) if best else attrs.get("selection_split"),
        best_metrics=dict(best.user_attrs.get(A_METRICS, {})) if best else {},
        eval_split=attrs.get("eval_split"),
        eval_metrics=dict(attrs.get("eval_metrics", {})) if best and attrs.get("eval_trial") == best.number else {},
        trials=dict(states),
        phases=dict(phases),
        probe_epochs=int(sum(int(t.user_attrs.get(A_EPOCHS, 0)) for t in trials)),
        wall_seconds=float(attrs.get("wall_seconds", 0.0)),
    )
