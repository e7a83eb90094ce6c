"""difffeat-tune: find the best diffusion-feature configuration (Diff-Feat) with Optuna and Ray Tune.

The public API, in the order of the data flow: data sets, backbones, extraction into the feature
store, the trial objective, the settings of a run and the search (HeuristicSampler, runner,
comparison). Names are imported on first use (PEP 562), so ``import difffeat_tune`` and the
command line start without loading torch, Optuna or Ray.

Example:
    >>> from difffeat_tune import Settings, ensure_features, run_search   # doctest: +SKIP
    >>> settings = Settings.create(space="embedded", epochs=10)           # doctest: +SKIP
    >>> prepared = ensure_features(settings.features)                     # doctest: +SKIP
    >>> summary = run_search(settings.with_space(prepared.space), prepared.view)  # doctest: +SKIP
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from difffeat_tune._errors import BackboneError, ConfigError, DataError, DiffFeatError, StoreError
from difffeat_tune._version import __version__

if TYPE_CHECKING:
    from difffeat_tune.backbones._family import BackboneFamily, LoadOptions
    from difffeat_tune.backbones._registry import FAMILY_TABLE, families, load_backbone, load_image_backbone, load_text_backbone
    from difffeat_tune.config import FUSION_METHODS, TrialConfig
    from difffeat_tune.data import Dataset, Split, load_dataset
    from difffeat_tune.extract import ExtractSettings, extract
    from difffeat_tune.extract_ray import extract_ray
    from difffeat_tune.features import (
        BackboneSettings, DataSettings, FeatureRequest, PreparedFeatures, StoreSettings, ensure_features,
    )
    from difffeat_tune.probe._proxies import RidgeProxy, logme, ridge_score
    from difffeat_tune.probe.objective import Objective, ObjectiveSettings, TrialResult
    from difffeat_tune.probe.train import TrainRecipe
    from difffeat_tune.search._heuristic import HeuristicSampler, next_config, plan_status
    from difffeat_tune.search._plan import PlanStatus
    from difffeat_tune.search._options import SearchOptions
    from difffeat_tune.search._suggest import suggest_config
    from difffeat_tune.search.compare import Comparison
    from difffeat_tune.search.runner import SearchSummary, run_search, summarize
    from difffeat_tune.search._settings import Settings
    from difffeat_tune.space import SearchSpace, load_space
    from difffeat_tune.store import FeatureStore, FeatureView

#: Public name -> the module that defines it.
_LAZY: dict[str, str] = {
    "BackboneFamily": "difffeat_tune.backbones._family",
    "LoadOptions": "difffeat_tune.backbones._family",
    "FAMILY_TABLE": "difffeat_tune.backbones._registry",
    "families": "difffeat_tune.backbones._registry",
    "load_backbone": "difffeat_tune.backbones._registry",
    "load_image_backbone": "difffeat_tune.backbones._registry",
    "load_text_backbone": "difffeat_tune.backbones._registry",
    "FUSION_METHODS": "difffeat_tune.config",
    "TrialConfig": "difffeat_tune.config",
    "Dataset": "difffeat_tune.data",
    "Split": "difffeat_tune.data",
    "load_dataset": "difffeat_tune.data",
    "extract": "difffeat_tune.extract",
    "ExtractSettings": "difffeat_tune.extract",
    "extract_ray": "difffeat_tune.extract_ray",
    "BackboneSettings": "difffeat_tune.features",
    "DataSettings": "difffeat_tune.features",
    "FeatureRequest": "difffeat_tune.features",
    "PreparedFeatures": "difffeat_tune.features",
    "StoreSettings": "difffeat_tune.features",
    "ensure_features": "difffeat_tune.features",
    "Objective": "difffeat_tune.probe.objective",
    "ObjectiveSettings": "difffeat_tune.probe.objective",
    "TrialResult": "difffeat_tune.probe.objective",
    "TrainRecipe": "difffeat_tune.probe.train",
    "RidgeProxy": "difffeat_tune.probe._proxies",
    "logme": "difffeat_tune.probe._proxies",
    "ridge_score": "difffeat_tune.probe._proxies",
    "HeuristicSampler": "difffeat_tune.search._heuristic",
    "PlanStatus": "difffeat_tune.search._plan",
    "next_config": "difffeat_tune.search._heuristic",
    "plan_status": "difffeat_tune.search._heuristic",
    "SearchOptions": "difffeat_tune.search._options",
    "suggest_config": "difffeat_tune.search._suggest",
    "Comparison": "difffeat_tune.search.compare",
    "SearchSummary": "difffeat_tune.search.runner",
    "run_search": "difffeat_tune.search.runner",
    "summarize": "difffeat_tune.search.runner",
    "Settings": "difffeat_tune.search._settings",
    "SearchSpace": "difffeat_tune.space",
    "load_space": "difffeat_tune.space",
    "FeatureStore": "difffeat_tune.store",
    "FeatureView": "difffeat_tune.store",
}

__all__ = sorted([*_LAZY, "BackboneError", "ConfigError", "DataError", "DiffFeatError", "StoreError",
                  "__version__"])


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'difffeat_tune' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return __all__
