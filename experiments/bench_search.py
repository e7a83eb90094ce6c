"""Heuristic search (Algorithm 1) against the full grid on the embedded data set, in one run.

Both studies use the same features (extracted or reused in the feature store) and the same
objective, in a fresh SQLite file; printed side by side: trials, fusion trials, probe epochs,
wall time, best configuration, validation and test mAP, and the heuristic's regret. With
``--pruner median`` both studies run again with the median pruner and what it saves is printed.

    python experiments/bench_search.py [--epochs 40] [--fusion linear_add] [--pruner median]
"""

from __future__ import annotations

import argparse
import logging
import tempfile
from dataclasses import replace
from pathlib import Path

import optuna

from difffeat_tune.features import StoreSettings, ensure_features
from difffeat_tune.search._options import SearchOptions
from difffeat_tune.search.compare import Comparison
from difffeat_tune.search.runner import run_search
from difffeat_tune.settings import Settings


def _compare(settings: Settings, view, storage: str, tag: str) -> Comparison:  # type: ignore[no-untyped-def]
    summaries = {}
    for sampler in ("heuristic", "grid"):
        search = SearchOptions(sampler=sampler, fusion_methods=settings.search.fusion_methods,
                               pruner=settings.search.pruner, storage=storage, study_name=f"{tag}-{sampler}")
        summaries[sampler] = run_search(replace(settings, search=search), view)
    return Comparison(heuristic=summaries["heuristic"], grid=summaries["grid"])


def _print(comparison: Comparison, title: str) -> None:
    print(f"\n{title}")
    print(f"{'':<26}  {'heuristic':<50}{'grid':<50}")
    for what, h, g in comparison.rows():
        print(f"{what:<26}  {h:<50}{g:<50}")
    ratio = comparison.as_dict()
    print(f"trials heuristic/grid: {ratio['trial_ratio']:.3f}   probe epochs heuristic/grid: "
          f"{ratio['epoch_ratio']:.3f}   regret (val): {100 * (comparison.regret or 0):.2f} points   "
          f"regret (test): {100 * (comparison.eval_regret or 0):.2f} points")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--features", type=Path, default=Path("runs") / "features")
    parser.add_argument("--space", default="embedded")
    parser.add_argument("--epochs", type=int, default=None, help="probe epochs (default: the space's)")
    parser.add_argument("--fusion", default="linear_add", help="comma-separated fusion methods")
    parser.add_argument("--pruner", default="none", choices=("none", "median", "halving"))
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    optuna.logging.set_verbosity(optuna.logging.WARNING)

    settings = Settings.create(space=args.space, store=StoreSettings(features=args.features), device="cpu",
                               fusion=args.fusion, epochs=args.epochs)
    prepared = ensure_features(settings.features)
    settings = settings.with_space(prepared.space)
    with tempfile.TemporaryDirectory() as tmp:
        storage = f"sqlite:///{tmp}/bench.db"
        plain = _compare(settings, prepared.view, storage, "plain")
        _print(plain, f"heuristic vs grid on {prepared.view.folder.name}, fusion {', '.join(settings.search.fusion_methods)}, "
                      f"{settings.probe.recipe.epochs} epochs")
        if args.pruner != "none":
            pruned_settings = replace(settings, search=replace(settings.search, pruner=args.pruner))
            pruned = _compare(pruned_settings, prepared.view, storage, "pruned")
            _print(pruned, f"the same with the {args.pruner} pruner")
            for kind in ("heuristic", "grid"):
                a, b = getattr(plain, kind), getattr(pruned, kind)
                print(f"{args.pruner} pruner, {kind}: probe epochs {b.probe_epochs}/{a.probe_epochs} "
                      f"({b.probe_epochs / max(1, a.probe_epochs):.2f}), search time {b.search_seconds:.1f}/{a.search_seconds:.1f} s, "
                      f"best val {100 * (b.best_score or 0):.2f} vs {100 * (a.best_score or 0):.2f}")

if __name__ == "__main__":
    main()
