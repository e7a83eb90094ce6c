"""The search: the HeuristicSampler (Algorithm 1), the grid baseline, the runner and the comparison.

Public names are imported on first use, so importing this package stays light.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from difffeat_tune.search._heuristic import HeuristicSampler, next_config, plan_status
    from difffeat_tune.search._plan import PlanStatus, grid_neighbourhood
    from difffeat_tune.search._options import SearchOptions
    from difffeat_tune.search._samplers import PRUNERS, SAMPLERS, GridSearchSampler, PlanState, make_sampler, plan_state
    from difffeat_tune.search._suggest import suggest_config
    from difffeat_tune.search.compare import Comparison
    from difffeat_tune.search._run import SearchRun
    from difffeat_tune.search._storage import HeartbeatPolicy, open_storage
    from difffeat_tune.search.runner import SearchSummary, run_search, summarize

_LAZY: dict[str, str] = {
    "HeuristicSampler": "difffeat_tune.search._heuristic",
    "PlanStatus": "difffeat_tune.search._plan",
    "grid_neighbourhood": "difffeat_tune.search._plan",
    "next_config": "difffeat_tune.search._heuristic",
    "plan_status": "difffeat_tune.search._heuristic",
    "SearchOptions": "difffeat_tune.search._options",
    "PRUNERS": "difffeat_tune.search._samplers",
    "SAMPLERS": "difffeat_tune.search._samplers",
    "GridSearchSampler": "difffeat_tune.search._samplers",
    "PlanState": "difffeat_tune.search._samplers",
    "make_sampler": "difffeat_tune.search._samplers",
    "plan_state": "difffeat_tune.search._samplers",
    "suggest_config": "difffeat_tune.search._suggest",
    "Comparison": "difffeat_tune.search.compare",
    "SearchRun": "difffeat_tune.search._run",
    "HeartbeatPolicy": "difffeat_tune.search._storage",
    "open_storage": "difffeat_tune.search._storage",
    "SearchSummary": "difffeat_tune.search.runner",
    "run_search": "difffeat_tune.search.runner",
    "summarize": "difffeat_tune.search.runner",
}
__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'difffeat_tune.search' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
