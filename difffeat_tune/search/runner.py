"""The search skeleton every engine shares: open the study, record the run, run trials, evaluate, summarise.

:func:`run_search` is the one way a search runs, whatever runs its trials:

1. name the study (:meth:`~difffeat_tune.search._options.SearchOptions.study_name_for`) and open
   it, once, with the sampler and pruner of the settings; a study with nothing left to do (its
   plan finished, its best configuration evaluated, its report current) is summarised from the
   storage alone, without loading backbones or features;
2. otherwise extract (or reuse) the features, check that a resumed study was searched the same
   way, record the run's settings on it and name its objective (e.g. "val mAP") for the dashboard;
3. unless the plan is already finished, hand the trials to the engine (:data:`ENGINES`):
   ``local`` (this process, :mod:`~difffeat_tune.search._local`) or ``ray`` (Ray Tune,
   :mod:`~difffeat_tune.search.ray_engine`); an engine only decides how a batch of trials runs;
4. re-train the best configuration and score the evaluation split (once per best trial);
5. when asked, draw the study's report (:func:`~difffeat_tune.search._study_report.write_study_report`);
6. summarise the study from its storage (:func:`summarize`), the same whoever calls it.
"""

from __future__ import annotations

import importlib
import inspect
import json
import logging
import warnings
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import asdict, dataclass, field, replace
from typing import TYPE_CHECKING

import optuna
from optuna.trial import TrialState

from difffeat_tune._defaults import DEFAULT_RUNS
from difffeat_tune._errors import ConfigError
from difffeat_tune.config import TrialConfig
from difffeat_tune.features import FeatureRequest, PreparedFeatures, data_modalities, ensure_features
from difffeat_tune.probe.objective import Objective
from difffeat_tune.search import _attrs as A
from difffeat_tune.search._run import Callback, SearchRun, record_config
from difffeat_tune.search._options import ENGINES, SearchOptions
from difffeat_tune.search._storage import (
    GRACE_PERIOD, HEARTBEAT_INTERVAL, SQLITE_TIMEOUT, default_storage, open_storage, parse_storage_url,
)
from difffeat_tune.search._plan import best_trained, is_proxy
from difffeat_tune.search._samplers import make_pruner, make_sampler, plan_state
from difffeat_tune.search._study_report import ReportCallback, report_is_current, report_page, write_study_report
from difffeat_tune.space import SearchSpace
from difffeat_tune.store import FeatureStore, FeatureView

if TYPE_CHECKING:
    from difffeat_tune.data._base import Dataset
    from difffeat_tune.search._settings import Settings

logger = logging.getLogger(__name__)
_ABSENT = object()
#: ``prepare(request, dataset) -> PreparedFeatures``: extract (or reuse) the features of a run
#: (default :func:`~difffeat_tune.features.ensure_features`; the CLI adds progress bars).
Prepare = Callable[[FeatureRequest, "Dataset"], PreparedFeatures]
#: ``progress(run)``: a context manager around the engine's trials that yields one more
#: ``callback(study, trial)`` (the CLI's progress line).
Progress = Callable[[SearchRun], AbstractContextManager[Callback]]

__all__ = ["DEFAULT_RUNS", "GRACE_PERIOD", "HEARTBEAT_INTERVAL", "SQLITE_TIMEOUT", "SearchOptions", "SearchRun",
           "SearchSummary", "default_storage", "evaluate_best", "open_storage", "open_study", "parse_storage_url",
           "record_config", "run_search", "summarize"]


@dataclass
class SearchSummary:
    """What a study holds: the best configuration, its scores, and what the search spent.

    Every score and metric is a fraction in [0, 1] (``eval_metrics["map"] == 0.277`` is 27.7 mAP);
    the command line prints them as percent.

    Attributes:
        study_name, sampler: the study and how it was searched.
        best_config, best_label, best_score: the best trial's parameters, label and selection score.
        selection_split: the split scores were selected on.
        best_metrics: every metric of the best trial on the selection split.
        eval_split, eval_metrics: the best configuration re-trained and scored on the evaluation split.
        best_by_modality: per modality ("image", "text", "fusion"), the best COMPLETE trial's
            ``label``, ``score`` and ``metrics``.
        trials: trial counts by state.
        phases: finished (COMPLETE or PRUNED) trials per phase.
        probe_epochs: training epochs of every trial.
        search_seconds: the time during which at least one trial was running (the union of the
            trials' start-to-end intervals, read from the storage, so the same for every worker):
            the pauses between runs of a resumed study are not counted, and trials trained
            together in one batch count once.
        failures: the configurations whose trials failed and never completed, with the last error.
    """

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
    search_seconds: float
    best_by_modality: dict[str, dict[str, object]] = field(default_factory=dict)
    failures: list[dict[str, str]] = field(default_factory=list)

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def _engine(name: str, options: Mapping[str, object]) -> Callable[..., None]:
    """The engine ``name``, once ``options`` are checked against the keyword options it takes."""
    module, _, attribute = ENGINES[name].partition(":")
    engine: Callable[..., None] = getattr(importlib.import_module(module), attribute)
    accepted = [p.name for p in list(inspect.signature(engine).parameters.values())[1:]
                if p.kind == inspect.Parameter.KEYWORD_ONLY]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise ConfigError(f"the {name} engine takes no option {', '.join(map(repr, unknown))}",
                          f"its options: {', '.join(accepted) or 'none'}")
    return engine


def open_study(settings: Settings, study_name: str, *, storage: optuna.storages.BaseStorage | None = None
               ) -> optuna.Study:
    """Create or load ``study_name`` with the settings' sampler and pruner."""
    search = settings.search
    return optuna.create_study(
        storage=storage or open_storage(search.storage_url()), study_name=study_name, direction="maximize",
        load_if_exists=True, sampler=make_sampler(settings.space, search),
        pruner=make_pruner(search.pruner, settings.probe.recipe.epochs),
    )


def run_search(settings: Settings, view: FeatureView | None = None, *, callbacks: Sequence[Callback] = (),
               objective: Objective | None = None, engine_options: Mapping[str, object] | None = None,
               storage: optuna.storages.BaseStorage | None = None, prepare: Prepare | None = None,
               progress: Progress | None = None, report: bool = False,
               on_report: ReportCallback | None = None) -> SearchSummary:
    """Run (or resume) the search of ``settings`` (see the module docstring).

    Args:
        settings: the run's settings; with ``view``, ``settings.space`` must hold only the view's
            modalities (:attr:`~difffeat_tune.features.PreparedFeatures.space` is).
        view: the features; ``None``: the data set of ``settings`` is loaded and its features are
            extracted or reused by ``prepare`` (only when the study has something left to do).
        callbacks: ``callback(study, frozen_trial)`` after each told trial.
        objective: the driver's objective (default: ``Objective(view, settings.probe, device)``).
        engine_options: keyword options of the engine (e.g. the Ray engine's
            ``resources_per_trial={"cpu": 2, "gpu": 0.5}``; see :func:`~difffeat_tune.search.ray_engine.run_ray`).
        storage: an open Optuna storage to use instead of ``settings.search``'s (e.g. Optuna's
            in-memory storage, to measure what the database costs).
        prepare: extracts the features when ``view`` is ``None`` (default: :func:`ensure_features`).
        progress: wraps the engine's trials (see :data:`Progress`).
        report: draw the study's report into ``<runs>/reports/<study>/`` at the end (kept when
            it is current); a finished study is then only finished once its report is current.
        on_report: told where the report is and what was drawn (see
            :data:`~difffeat_tune.search._study_report.ReportCallback`).

    Returns:
        :func:`summarize` of the study.
    """
    search = settings.search
    dataset = None
    if view is None:
        dataset = settings.data.load()
        settings = settings.with_space(settings.space.restricted_to(data_modalities(dataset)))
        folder = FeatureStore(settings.store.features).dataset_dir(dataset.name, dataset.fingerprint()).name
    else:
        folder = view.folder.name
    name = search.study_name_for(folder)
    storage = storage or open_storage(search.storage_url())
    study = open_study(settings, name, storage=storage) if _exists(storage, name) else None
    if study is not None and _nothing_left(study, settings, storage, report=report):
        if report and on_report is not None:
            on_report(report_page(settings, name), None)
        return summarize(study)
    if view is None:
        prepared = (prepare or _ensure)(settings.features, dataset)  # type: ignore[arg-type]
        settings, view = settings.with_space(prepared.space), prepared.view
    objective = objective or Objective(view, settings.probe, device=settings.device)
    study = study or open_study(settings, name, storage=storage)
    record_study_attrs(study, settings, objective)
    if not plan_state(study, settings.space, search).finished and search.n_trials != 0:
        options = dict(engine_options or {})
        engine = _engine(search.engine, options)
        run = SearchRun(settings, study, objective, view, tuple(callbacks))
        with progress(run) if progress is not None else nullcontext(None) as told:
            engine(replace(run, callbacks=(*run.callbacks, told)) if told is not None else run, **options)
    if search.evaluate_best:
        evaluate_best(study, objective, settings.space)
    if report:
        write_study_report(storage, study, settings, objective, on_report)
    return summarize(study)


def _ensure(request: FeatureRequest, dataset: Dataset) -> PreparedFeatures:
    return ensure_features(request, dataset=dataset)


def _exists(storage: optuna.storages.BaseStorage, name: str) -> bool:
    return name in {s.study_name for s in storage.get_all_studies()}


def _nothing_left(study: optuna.Study, settings: Settings, storage: optuna.storages.BaseStorage, *,
                  report: bool) -> bool:
    """Whether ``study`` is done: its plan finished, its best configuration evaluated (when the
    settings ask for it) and, with ``report``, its report current."""
    if not plan_state(study, settings.space, settings.search).finished:
        return False
    best = best_trained(study.get_trials(deepcopy=False))
    if best is None:
        return False
    if settings.search.evaluate_best and study.user_attrs.get(A.EVAL_TRIAL) != best.number:
        return False
    return not report or report_is_current(storage, study, report_page(settings, study.study_name))


def record_study_attrs(study: optuna.Study, settings: Settings, objective: Objective) -> None:
    """Check that a resumed study was searched the same way, then record the run's settings on it."""
    record = settings.record()
    for key in (A.SAMPLER, A.SPACE):
        previous = study.user_attrs.get(key)
        same = previous == record[key] or (key == A.SPACE and settings.space.is_recorded_as(str(previous)))
        if previous is not None and not same:
            raise ConfigError(f"study {study.study_name!r} was run with {key} {previous}, not {record[key]}",
                              "choose another --study-name")
    view = objective.view
    record.update({
        "features": str(view.folder),
        "image_extraction": view.image.folder.name if view.image else None,
        "text_extraction": view.text.folder.name if view.text else None,
        A.SELECTION_SPLIT: objective.selection_split, A.EVAL_SPLIT: objective.eval_split,
        A.ENGINE: settings.search.engine,
    })
    stored = study.user_attrs
    for key, value in record.items():  # a resumed study's unchanged settings are not written again
        if stored.get(key, _ABSENT) != json.loads(json.dumps(value)):
            study.set_user_attr(key, value)
    headline = "map" if view.task == "multilabel" else "top1"
    with warnings.catch_warnings():  # "experimental" since Optuna 3.2; the dashboard labels the objective with it
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.set_metric_names([f"{objective.selection_split} {A.METRIC_LABELS[headline]}"])


def evaluate_best(study: optuna.Study, objective: Objective, space: SearchSpace) -> None:
    """Re-train the study's best configuration and store its evaluation-split metrics (once per best trial)."""
    best = best_trained(study.get_trials(deepcopy=False))
    if best is None:
        return
    if study.user_attrs.get(A.EVAL_TRIAL) == best.number or objective.eval_split is None:
        return
    config = TrialConfig.from_params(best.params, d_alg=space.d_alg)
    result = objective.evaluate(config)
    study.set_user_attr(A.EVAL_TRIAL, best.number)
    study.set_user_attr(A.EVAL_SPLIT, result.split)
    study.set_user_attr(A.EVAL_METRICS, result.metrics)
    study.set_user_attr(A.EVAL_EPOCHS, result.epochs_run)


def summarize(study: optuna.Study) -> SearchSummary:
    """Summarise a study from storage alone (works for runs of other processes and engines)."""
    trials = study.get_trials(deepcopy=False)
    # Surplus trials ran nothing (the heuristic had no configuration for them): counted apart.
    states = Counter("surplus" if t.user_attrs.get(A.SURPLUS) else t.state.name.lower() for t in trials)
    phases = Counter(str(t.user_attrs.get(A.PHASE, "?")) for t in trials
                     if t.state in (TrialState.COMPLETE, TrialState.PRUNED) and not t.user_attrs.get(A.SURPLUS))
    best = best_trained(trials)  # a proxy trial's value is a proxy score, not a trained probe's
    attrs = study.user_attrs
    return SearchSummary(
        study_name=study.study_name,
        sampler=str(attrs.get(A.SAMPLER, "?")),
        best_config=dict(best.params) if best else None,
        best_label=str(best.user_attrs.get(A.CONFIG)) if best else None,
        best_score=float(best.value) if best and best.value is not None else None,
        selection_split=str(best.user_attrs.get(A.SPLIT)) if best else attrs.get(A.SELECTION_SPLIT),
        best_metrics=A.trial_metrics(best.user_attrs) if best else {},
        eval_split=attrs.get(A.EVAL_SPLIT),
        eval_metrics=dict(attrs.get(A.EVAL_METRICS, {})) if best and attrs.get(A.EVAL_TRIAL) == best.number else {},
        trials=dict(states),
        phases=dict(phases),
        probe_epochs=int(sum(int(t.user_attrs.get(A.EPOCHS, 0)) for t in trials)),
        search_seconds=_busy_seconds(trials),
        best_by_modality=_best_by_modality(trials),
        failures=_failures(trials),
    )


def _busy_seconds(trials: Sequence[optuna.trial.FrozenTrial]) -> float:
    """Seconds during which at least one finished trial was running (overlapping intervals merged)."""
    spans = sorted((t.datetime_start, t.datetime_complete) for t in trials
                   if t.datetime_start is not None and t.datetime_complete is not None)
    total, current_start, current_end = 0.0, None, None
    for start, end in spans:
        if current_end is None or start > current_end:
            if current_end is not None:
                total += (current_end - current_start).total_seconds()
            current_start, current_end = start, end
        else:
            current_end = max(current_end, end)
    if current_end is not None:
        total += (current_end - current_start).total_seconds()
    return total


def _best_by_modality(trials: Sequence[optuna.trial.FrozenTrial]) -> dict[str, dict[str, object]]:
    best: dict[str, optuna.trial.FrozenTrial] = {}
    for t in trials:
        modality = t.user_attrs.get(A.MODALITY)
        if t.state != TrialState.COMPLETE or t.value is None or modality is None or is_proxy(t):
            continue
        current = best.get(modality)
        if current is None or t.value > current.value or (t.value == current.value and t.number < current.number):
            best[modality] = t
    return {m: {"label": str(t.user_attrs.get(A.CONFIG)), "score": float(t.value),  # type: ignore[arg-type]
                "metrics": A.trial_metrics(t.user_attrs), "trial": t.number}
            for m in ("image", "text", "fusion") if (t := best.get(m)) is not None}


def _failures(trials: Sequence[optuna.trial.FrozenTrial]) -> list[dict[str, str]]:
    done = {t.user_attrs.get(A.CONFIG) for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)}
    last: dict[str, str] = {}
    for t in trials:
        label = t.user_attrs.get(A.CONFIG)
        if t.state == TrialState.FAIL and label is not None and label not in done:
            last[str(label)] = str(t.user_attrs.get(A.ERROR, "no error recorded"))
    return [{"config": k, "error": v} for k, v in last.items()]
