"""What an engine receives from the search skeleton: one run of a search, and the attributes of a trial."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import optuna

from difffeat_tune.config import TrialConfig
from difffeat_tune.probe.objective import Objective
from difffeat_tune.search import _attrs as A
from difffeat_tune.store import FeatureView

if TYPE_CHECKING:
    from difffeat_tune.search._settings import Settings

#: ``callback(study, frozen_trial)`` after each told trial (e.g. a progress display).
Callback = Callable[[optuna.Study, optuna.trial.FrozenTrial], None]


@dataclass
class SearchRun:
    """One run of a search, handed to an engine: everything it needs to run trials.

    Attributes:
        settings: the whole settings tree (``settings.space`` is the searched space).
        study: the open study (sampler and pruner set).
        objective: the driver's objective (the local engine trains with it; every engine's
            best configuration is evaluated with it).
        view: the features.
        callbacks: called after each told trial.
    """

    settings: Settings
    study: optuna.Study
    objective: Objective
    view: FeatureView
    callbacks: Sequence[Callback] = ()


def record_config(trial: optuna.Trial, config: TrialConfig) -> None:
    """User attributes every trial gets once its configuration is known (any engine)."""
    trial.set_user_attr(A.MODALITY, config.modality)
    trial.set_user_attr(A.CONFIG, config.label())
    if trial.user_attrs.get(A.PHASE) is None:  # the HeuristicSampler sets the phase itself
        trial.set_user_attr(A.PHASE, config.modality)
