"""Benchmark: rank the unimodal (t, b) configurations by closed-form proxies instead of training probes.

On the embedded default's stored features (``runs/features``; extracted once if absent), every
unimodal configuration of the space (default: ``searchspaces/embedded.toml``) is

* scored by LogME (:func:`difffeat_tune.probe.logme`) on the training rows;
* scored by the ridge proxy (:func:`difffeat_tune.probe.ridge_score`): fitted on the training
  rows, ridge chosen by GCV, validation mAP;
* trained as the search trains it: the project's linear probe through
  ``Objective(view).run_many(configs)`` (the settings' recipe: 40 epochs by default), scored on
  the same selection split.

The proxies see the same inputs as the probe: the stored feature, standardised with the
training rows' mean and standard deviation. Each proxy's time includes reading and
standardising the features (timed once, charged to both), so it compares with ``run_many``'s
wall time, which reads its features too. Per modality the script prints the times and the
Kendall tau and Spearman rank correlations of each proxy's scores with the trained probes'
validation scores, then one summary line. With ``--search`` it also runs, on the same features
and in one temporary SQLite file, the full grid, the plain heuristic and the proxy-guided
heuristic with each proxy (``SearchOptions(unimodal_proxy=..., proxy_top=...)``) and prints their
trials, probe epochs, the wall time of their unimodal phase (first unimodal trial's start to the
last one's end, proxy trials included) and their regret (the grid's best fusion minus theirs,
validation mAP points).

Usage::

    OMP_NUM_THREADS=1 python experiments/bench_proxy.py              # about a minute on 2 cores
    python experiments/bench_proxy.py --epochs 10 --verbose          # per-configuration table
    python experiments/bench_proxy.py --long-epochs 200              # also against longer-trained probes
    python experiments/bench_proxy.py --search                       # plus the searches (grid: minutes)
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import optuna
import torch
from scipy.stats import kendalltau, spearmanr

from difffeat_tune.config import TrialConfig
from difffeat_tune.features import PreparedFeatures, StoreSettings, ensure_features
from difffeat_tune.probe import logme, ridge_score
from difffeat_tune.probe.objective import Objective, TrialResult
from difffeat_tune.search._options import SearchOptions
from difffeat_tune.search._plan import PROXIES
from difffeat_tune.search._settings import Settings
from difffeat_tune.search.runner import SearchSummary, run_search
from difffeat_tune.store import FeatureView

#: Smallest standard deviation a feature is divided by (as the objective does).
MIN_STD = 1e-6


@dataclass(frozen=True)
class ModalityResult:
    """Scores and times of one modality's configurations."""

    configs: list[tuple[int, int]]
    logme: list[float]
    ridge: list[float]
    trained: list[float]
    load_seconds: float
    logme_seconds: float
    ridge_seconds: float
    train_seconds: float

    def correlation(self, proxy: list[float]) -> tuple[float, float]:
        """(Kendall tau, Spearman rho) of ``proxy`` with the trained scores."""
        return float(kendalltau(proxy, self.trained)[0]), float(spearmanr(proxy, self.trained)[0])


def standardised(view: FeatureView, modality: str, tb: tuple[int, int], splits: tuple[str, str],
                 device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Training and selection rows of one feature, z-scored with the training statistics."""
    train = view.load(modality, tb[0], tb[1], splits[0], device=device).values
    select = view.load(modality, tb[0], tb[1], splits[1], device=device).values
    mean, std = train.mean(dim=0), train.std(dim=0).clamp_min(MIN_STD)
    return (train - mean) / std, (select - mean) / std


def run_modality(view: FeatureView, objective: Objective, modality: str, points: list[tuple[int, int]],
                 device: torch.device) -> ModalityResult:
    """Score every (t, b) of ``modality`` by both proxies and by training, timing each."""
    splits = ("train", objective.selection_split)
    train_y = torch.from_numpy(view.labels(splits[0]).values).to(device)
    select_y = torch.from_numpy(view.labels(splits[1]).values).to(device)

    start = time.perf_counter()
    inputs = [standardised(view, modality, tb, splits, device) for tb in points]
    load_seconds = time.perf_counter() - start

    start = time.perf_counter()
    logme_scores = [logme(train, train_y) for train, _ in inputs]
    logme_seconds = time.perf_counter() - start

    start = time.perf_counter()
    ridge_scores = [ridge_score(train, train_y, select, select_y, task=view.task).score for train, select in inputs]
    ridge_seconds = time.perf_counter() - start
    del inputs

    configs = [TrialConfig(modality, **{modality: tb}) for tb in points]  # type: ignore[arg-type]
    start = time.perf_counter()
    results = objective.run_many(configs)
    train_seconds = time.perf_counter() - start
    trained = []
    for config, result in zip(configs, results):
        if not isinstance(result, TrialResult):
            raise SystemExit(f"{config.label()}: {result}")
        trained.append(result.score)
    return ModalityResult(points, logme_scores, ridge_scores, trained, load_seconds, logme_seconds, ridge_seconds,
                          train_seconds)


def run_searches(settings: Settings, prepared: PreparedFeatures,
                 proxy_top: int) -> dict[str, tuple[SearchSummary, float]]:
    """The grid, the heuristic and the proxy-guided heuristic with each proxy, on the same features and
    objective settings: each one's summary and the seconds of its unimodal phase (0 for the grid)."""
    settings = settings.with_space(prepared.space)
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{tmp}/bench.db"
        for name, sampler, proxy in (("grid", "grid", None), ("heuristic", "heuristic", None),
                                     *((p, "heuristic", p) for p in PROXIES)):
            search = SearchOptions(sampler=sampler, unimodal_proxy=proxy, proxy_top=proxy_top, evaluate_best=False,
                                   storage=url, study_name=f"bench-{name}")
            summary = run_search(replace(settings, search=search), prepared.view)
            spans = [(t.datetime_start, t.datetime_complete) for t in optuna.load_study(study_name=f"bench-{name}",
                                                                                        storage=url).trials
                     if t.user_attrs.get("phase") in ("proxy", "image", "text") and t.datetime_complete is not None]
            seconds = (max(e for _, e in spans) - min(s for s, _ in spans)).total_seconds() if spans else 0.0
            out[name] = (summary, seconds)
    return out


def _fusion_score(summary: SearchSummary) -> float:
    return float(summary.best_by_modality["fusion"]["score"])  # type: ignore[arg-type]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=Path, default=Path("runs"))
    parser.add_argument("--space", default="embedded")
    parser.add_argument("--epochs", type=int, default=None, help="probe epochs (default: the settings' recipe)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--verbose", action="store_true", help="print every configuration's three scores")
    parser.add_argument("--long-epochs", type=int, default=None,
                        help="also train every configuration this many epochs and correlate the proxies (and the "
                             "default probes) with those scores: tells a proxy's error from the probe's under-fitting")
    parser.add_argument("--search", action="store_true",
                        help="also run the grid and the proxy-guided heuristic (each proxy) and print the regret")
    parser.add_argument("--proxy-top", type=int, default=SearchOptions.proxy_top,
                        help="configurations per modality the proxy-guided heuristic trains")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)

    settings = Settings.create(space=args.space, store=StoreSettings(features=args.runs / "features"),
                               device=args.device, epochs=args.epochs, cpu_threads=args.threads)
    prepared = ensure_features(settings.features)  # reuses the store; extracts only what it lacks
    probe_settings = settings.probe
    if args.epochs is not None:
        probe_settings = replace(probe_settings, recipe=replace(probe_settings.recipe, epochs=args.epochs))
    objective = Objective(prepared.view, probe_settings, device=device)
    space = prepared.space
    print(f"{space.label}: {prepared.view.task}, selection split {objective.selection_split!r}, "
          f"{probe_settings.recipe.epochs} probe epochs, {args.threads} thread(s) on {device}")

    results: dict[str, ModalityResult] = {}
    for modality in space.modalities:
        res = run_modality(prepared.view, objective, modality, space.axes(modality).points(), device)
        results[modality] = res
        if args.verbose:
            print(f"\n{modality}: t    b   LogME   ridge mAP  probe mAP")
            for tb, lm, rg, tr in zip(res.configs, res.logme, res.ridge, res.trained):
                print(f"       {tb[0]:4d} {tb[1]:3d} {lm:8.4f} {100 * rg:9.2f} {100 * tr:9.2f}")
        lm_tau, lm_rho = res.correlation(res.logme)
        rg_tau, rg_rho = res.correlation(res.ridge)
        print(f"\n{modality}: {len(res.configs)} configurations")
        print(f"  training (run_many)   {res.train_seconds:7.2f} s")
        print(f"  LogME                 {res.load_seconds + res.logme_seconds:7.2f} s "
              f"({res.logme_seconds:.2f} s scoring + {res.load_seconds:.2f} s reading)   "
              f"tau {lm_tau:.2f}  spearman {lm_rho:.2f}")
        print(f"  ridge (GCV)           {res.load_seconds + res.ridge_seconds:7.2f} s "
              f"({res.ridge_seconds:.2f} s scoring + {res.load_seconds:.2f} s reading)   "
              f"tau {rg_tau:.2f}  spearman {rg_rho:.2f}")
        best = int(np.argmax(res.trained))
        for name, scores in (("LogME", res.logme), ("ridge", res.ridge)):
            order = np.argsort(scores)[::-1]
            print(f"  {name}: its top configuration {res.configs[int(order[0])]} is the trained #"
                  f"{int(np.argsort(np.argsort(res.trained)[::-1])[order[0]]) + 1}; the trained best "
                  f"{res.configs[best]} is its #{int(np.nonzero(order == best)[0][0]) + 1}")

    if args.long_epochs:
        long_settings = replace(probe_settings, recipe=replace(probe_settings.recipe, epochs=args.long_epochs))
        long_objective = Objective(prepared.view, long_settings, device=device)
        print(f"\nrank correlation (Kendall tau) with probes trained {args.long_epochs} epochs")
        for modality, res in results.items():
            configs = [TrialConfig(modality, **{modality: tb}) for tb in res.configs]  # type: ignore[arg-type]
            long_scores = [r.score if isinstance(r, TrialResult) else float("nan")
                           for r in long_objective.run_many(configs)]
            taus = {name: float(kendalltau(scores, long_scores)[0])
                    for name, scores in (("logme", res.logme), ("ridge", res.ridge),
                                         (f"{probe_settings.recipe.epochs}-epoch probe", res.trained))}
            print(f"  {modality}: " + ", ".join(f"{name} {tau:.2f}" for name, tau in taus.items())
                  + f"; best long probe {res.configs[int(np.nanargmax(long_scores))]} "
                    f"{100 * float(np.nanmax(long_scores)):.2f} mAP")

    train_total = sum(r.train_seconds for r in results.values())
    logme_total = sum(r.load_seconds + r.logme_seconds for r in results.values())
    ridge_total = sum(r.load_seconds + r.ridge_seconds for r in results.values())
    scoring_only = (train_total / sum(r.logme_seconds for r in results.values()),
                    train_total / sum(r.ridge_seconds for r in results.values()))
    print(f"\nwithout reading the features: logme {scoring_only[0]:.1f}x, ridge {scoring_only[1]:.1f}x cheaper "
          f"than training ({train_total:.2f} s for {sum(len(r.configs) for r in results.values())} probes)")
    lm = " ".join(f"{m} {r.correlation(r.logme)[0]:.2f}" for m, r in results.items())
    rg = " ".join(f"{m} {r.correlation(r.ridge)[0]:.2f}" for m, r in results.items())
    regret = ""
    if args.search:
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        searches = run_searches(settings, prepared, args.proxy_top)
        grid, (_, plain_seconds) = searches["grid"][0], searches["heuristic"]
        print(f"\nsearches ({probe_settings.recipe.epochs} epochs; regret: the grid's best fusion minus theirs, "
              "validation mAP points)")
        for name, (summary, seconds) in searches.items():
            print(f"  {name:<9} {sum(summary.trials.values()):4d} trials {summary.probe_epochs:6d} probe epochs  "
                  f"unimodal phase {seconds:6.2f} s  regret {100 * (_fusion_score(grid) - _fusion_score(summary)):.2f}"
                  f"  best fusion {summary.best_by_modality['fusion']['label']}  phases {summary.phases}")
        regret = "; " + ", ".join(
            f"{p}-guided heuristic regret {100 * (_fusion_score(grid) - _fusion_score(searches[p][0])):.2f}, "
            f"unimodal phase {plain_seconds / max(searches[p][1], 1e-9):.1f}x cheaper than the heuristic's, "
            f"{100 * searches[p][0].probe_epochs / max(1, grid.probe_epochs):.1f}% of the grid's probe epochs"
            for p in PROXIES)
    print(f"\nproxy: logme tau {lm}; ridge tau {rg}; scoring {train_total / logme_total:.1f}x (logme) and "
          f"{train_total / ridge_total:.1f}x (ridge) cheaper than training{regret}")


if __name__ == "__main__":
    main()
