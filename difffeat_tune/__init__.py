"""difffeat-tune: find the best diffusion-feature configuration (Diff-Feat) with Optuna and Ray Tune.

The public API, in the order of the data flow: data sets, backbones, extraction into the feature
store, the trial objective, the search (HeuristicSampler, runner, comparison). The Ray engine,
``run_search_ray``, is imported on first use (Ray is heavy to import).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from difffeat_tune._errors import BackboneError, ConfigError, DataError, DiffFeatError, StoreError
from difffeat_tune._version import __version__
from difffeat_tune.backbones._registry import load_image_backbone, load_text_backbone
from difffeat_tune.config import FUSION_METHODS, TrialConfig
from difffeat_tune.data import Dataset, Split, load_dataset
from difffeat_tune.extract import extract
from difffeat_tune.features import FeatureRequest, ensure_features
from difffeat_tune.probe.objective import Objective, ObjectiveSettings, TrialResult
from difffeat_tune.probe.train import TrainRecipe
from difffeat_tune.search._heuristic import HeuristicSampler, PlanStatus, next_config, plan_status
from difffeat_tune.search._suggest import suggest_config
from difffeat_tune.search.compare import Comparison
from difffeat_tune.search.runner import SearchOptions, SearchSummary, run_search, summarize
from difffeat_tune.search.space import SearchSpace, load_space
from difffeat_tune.store import FeatureStore, FeatureView

if TYPE_CHECKING:
    from difffeat_tune.search.ray_engine import run_search_ray

__all__ = [
    "BackboneError",
    "Comparison",
    "ConfigError",
    "DataError",
    "Dataset",
    "DiffFeatError",
    "FUSION_METHODS",
    "FeatureRequest",
    "FeatureStore",
    "FeatureView",
    "HeuristicSampler",
    "Objective",
    "ObjectiveSettings",
    "PlanStatus",
    "SearchOptions",
    "SearchSpace",
    "SearchSummary",
    "Split",
    "StoreError",
    "TrainRecipe",
    "TrialConfig",
    "TrialResult",
    "__version__",
    "ensure_features",
    "extract",
    "load_dataset",
    "load_image_backbone",
    "load_space",
    "load_text_backbone",
    "next_config",
    "plan_status",
    "run_search",
    "run_search_ray",
    "suggest_config",
    "summarize",
]


def __getattr__(name: str) -> Any:
    if name == "run_search_ray":
        from difffeat_tune.search.ray_engine import run_search_ray

        return run_search_ray
    raise AttributeError(f"module 'difffeat_tune' has no attribute {name!r}")
