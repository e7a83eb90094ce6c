"""A study as the report reads it from storage: its trials by phase, each modality's best, its companion.

Only what the search writes is read: trial params, states, values, intermediate values (the
per-epoch selection score) and the flat metric user attributes; study user attributes for the
sampler, space, splits, feature-store location and evaluation of the best trial.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from difffeat_tune._errors import ConfigError
from difffeat_tune.config import (
    DEFAULT_D_ALG,
    P_MODALITY,
    TRIAL_MODALITIES,
    TrialConfig,
)
from difffeat_tune.probe.metrics import METRIC_NAMES
from difffeat_tune.search._attrs import HISTORY, SURPLUS
from difffeat_tune.search._plan import PROXY_ATTR, PROXY_PHASE
from difffeat_tune.space import SearchSpace, load_space

logger = logging.getLogger(__name__)

#: Keys of the metrics (the flat trial attributes the report reads).
METRIC_KEYS = frozenset(key for key, _ in METRIC_NAMES)


@dataclass(frozen=True)
class TrialRecord:
    """One trial that held a configuration.

    Attributes:
        number: the trial number.
        state: "COMPLETE", "PRUNED" or "FAIL".
        phase: "image", "text" or "fusion" (the search phase; grid trials are all "fusion"), or
            "proxy" for a trial a closed-form proxy scored (no probe trained).
        config: the configuration.
        value: the selection score (COMPLETE trials; a proxy trial's proxy score), else None.
        metrics: the flat metric attributes on the selection split (mAP..OF1 or top-1/top-5).
        curve: ``(epoch, selection score)`` per epoch reported.
        epochs: probe epochs run.
        seconds: training time.
        proxy: the proxy that scored a proxy trial ("logme", "ridge"), else None.
    """

    number: int
    state: str
    phase: str
    config: TrialConfig
    value: float | None
    metrics: Mapping[str, float]
    curve: tuple[tuple[int, float], ...]
    epochs: int
    seconds: float
    proxy: str | None = None

    @property
    def complete(self) -> bool:
        return self.state == TrialState.COMPLETE.name and self.value is not None


@dataclass(frozen=True)
class StudyData:
    """A study read once from its storage.

    Attributes:
        name: the study name.
        attrs: the study's user attributes.
        trials: every finished trial that held a configuration (surplus and running trials left out).
        space: the study's search space when it can be loaded (needed to re-train fusion heads).
        surplus: trials the heuristic ended without a configuration (PRUNED, nothing run).
        study: the Optuna study it was read from (its storage caches the finished trials, so
            summaries of it read nothing again).
    """

    name: str
    attrs: Mapping[str, Any]
    trials: tuple[TrialRecord, ...]
    space: SearchSpace | None
    surplus: int = 0
    study: optuna.Study | None = field(default=None, repr=False, compare=False)

    @classmethod
    def load(cls, storage: str | optuna.storages.BaseStorage, study_name: str,
             space: SearchSpace | None = None) -> StudyData:
        """Read ``study_name`` from ``storage`` (a URL or an Optuna storage).

        Args:
            storage: where the study lives.
            study_name: the study.
            space: its search space; default: loaded from the study's ``space`` attribute (a
                shipped name or a TOML path), ``None`` if that fails.

        Raises:
            ConfigError: the study does not exist in ``storage``.
        """
        try:
            study = optuna.load_study(study_name=study_name, storage=storage)
        except KeyError:
            names = ", ".join(study_names(storage)) or "none"
            raise ConfigError(f"no study {study_name!r} in storage {_describe(storage)} (studies: {names})",
                              "pass the --study-name of a finished run") from None
        attrs = dict(study.user_attrs)
        if space is None and attrs.get("space"):
            try:
                space = load_space(str(attrs["space"]))
            except ConfigError as exc:
                logger.warning("cannot load the search space of study %s: %s", study_name, exc.message)
        d_alg = space.d_alg if space is not None else DEFAULT_D_ALG
        trials = study.get_trials(deepcopy=False)
        records = [r for r in (_record(t, d_alg) for t in trials) if r is not None]
        surplus = sum(1 for t in trials if t.user_attrs.get(SURPLUS))
        return cls(name=study_name, attrs=attrs, trials=tuple(records), space=space, surplus=surplus, study=study)

    @property
    def sampler(self) -> str:
        return str(self.attrs.get("sampler", "heuristic"))

    def of(self, phase: str) -> list[TrialRecord]:
        """The trials of one phase ("image", "text" or "fusion")."""
        return [r for r in self.trials if r.phase == phase]

    def best(self, phase: str | None = None) -> TrialRecord | None:
        """The best COMPLETE trial of a phase (of the study for ``None``); ties go to the lowest number."""
        pool = [r for r in self.trials if r.complete and r.phase != PROXY_PHASE and (phase is None or r.phase == phase)]
        return max(pool, key=lambda r: (r.value, -r.number)) if pool else None

    def proxied(self, modality: str) -> list[TrialRecord]:
        """The proxy trials of one modality ("image" or "text"): each a proxy score, no probe trained."""
        return [r for r in self.of(PROXY_PHASE) if r.config.modality == modality]

    @property
    def proxy(self) -> str | None:
        """The proxy that scored this study's unimodal configurations (a proxy-guided heuristic), else None."""
        return next((r.proxy for r in self.of(PROXY_PHASE) if r.proxy), None)

    @property
    def phases(self) -> tuple[str, ...]:
        """The phases that have at least one COMPLETE trial, in the order image, text, fusion."""
        return tuple(p for p in TRIAL_MODALITIES if any(r.complete for r in self.of(p)))

    @property
    def headline(self) -> str:
        """The selection metric's key: "map" (multi-label) or "top1" (single-label)."""
        for record in self.trials:
            if "map" in record.metrics:
                return "map"
            if "top1" in record.metrics:
                return "top1"
        return "map"

    @property
    def eval_metrics(self) -> dict[str, float]:
        """Evaluation-split metrics of the best trial, when the search re-trained it."""
        best = self.best()
        if best is None or self.attrs.get("eval_trial") != best.number:
            return {}
        return {k: float(v) for k, v in dict(self.attrs.get("eval_metrics") or {}).items() if k in METRIC_KEYS}

    @property
    def selection_split(self) -> str:
        return str(self.attrs.get("selection_split") or "val")

    @property
    def eval_split(self) -> str | None:
        split = self.attrs.get("eval_split")
        return None if split is None else str(split)

    def fusion_methods(self) -> list[str]:
        """Fusion methods with at least one COMPLETE trial, in the order they first appear."""
        seen: list[str] = []
        for record in self.of("fusion"):
            if record.complete and record.config.fusion not in seen:
                seen.append(str(record.config.fusion))
        return seen


def study_names(storage: str | optuna.storages.BaseStorage) -> list[str]:
    """Names of the studies in ``storage`` (without reading their trials, as study summaries would)."""
    return [s.study_name for s in optuna.storages.get_storage(storage).get_all_studies()]


def _record(trial: FrozenTrial, d_alg: int) -> TrialRecord | None:
    if trial.state not in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL) or P_MODALITY not in trial.params:
        return None
    try:
        config = TrialConfig.from_params(trial.params, d_alg=d_alg)
    except ConfigError:
        return None
    attrs = trial.user_attrs
    return TrialRecord(
        number=trial.number,
        state=trial.state.name,
        phase=str(attrs.get("phase", config.modality)),
        config=config,
        value=float(trial.value) if trial.state == TrialState.COMPLETE and trial.value is not None else None,
        metrics={k: float(v) for k, v in attrs.items() if k in METRIC_KEYS and isinstance(v, (int, float))},
        curve=_curve(trial),
        epochs=int(attrs.get("epochs_run", 0) or 0),
        seconds=float(attrs.get("seconds", 0.0) or 0.0),
        proxy=str(attrs[PROXY_ATTR]) if attrs.get(PROXY_ATTR) else None,
    )


def _describe(storage: str | optuna.storages.BaseStorage) -> str:
    return storage if isinstance(storage, str) else type(storage).__name__


def _curve(trial: optuna.trial.FrozenTrial) -> tuple[tuple[int, float], ...]:
    """Per-epoch selection scores: the intermediate values (reported for a pruner), else the
    ``history`` attribute a trial records when no pruner reads them."""
    if trial.intermediate_values:
        return tuple(sorted((int(step), float(v)) for step, v in trial.intermediate_values.items()))
    history = trial.user_attrs.get(HISTORY)
    return tuple((epoch, float(v)) for epoch, v in enumerate(history or (), start=1))
