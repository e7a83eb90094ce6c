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

With ``--store scale`` the same comparison runs on ``bench_scale``'s synthetic store instead (a real
data set's rows and widths, long-tailed labels, a planted signal whose strength depends on (t, b):
the true ranking is known), written by ``bench_scale.write_store`` into ``--out`` (reused when it is
there) or a temporary folder. Every proxy scores on a fresh :class:`Objective` through
``Objective.proxy_score``, as the proxy-guided heuristic does, its feature reads included (one
timed pass of the store's reads tells the reading from the scoring); then that objective trains
the proxy's top ``--proxy-top`` per modality (``run_many``, on its cached inputs, as a worker of
the proxy-guided heuristic would), and a fresh objective trains every configuration. Per
modality it adds the rank correlations with the planted strength and whether the proxy's top K
hold the planted optimum; its closing line gives the measured unimodal phase (scoring all and
training the top K per modality) against training all.

Both stores end with one line in the form the issue asked for, the second proxy in brackets::

    proxy: logme tau image 0.77 text 0.80; unimodal phase 1.6x cheaper (...); regret 0.00; ... (ridge: ...)

Usage::

    OMP_NUM_THREADS=1 python experiments/bench_proxy.py              # about a minute on 2 cores
    python experiments/bench_proxy.py --epochs 10 --verbose          # per-configuration table
    python experiments/bench_proxy.py --long-epochs 200              # also against longer-trained probes
    python experiments/bench_proxy.py --search                       # plus the searches (grid: minutes)
    python experiments/bench_proxy.py --store scale --rows-scale 0.05 --threads 2   # COCO widths, paper grid
"""

from __future__ import annotations

import argparse
import logging
import resource
import shutil
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import optuna
import torch
from bench_scale import GRIDS, PRESETS, planted, signal_strength, space_file, write_store
from scipy.stats import kendalltau, spearmanr

from difffeat_tune.cli import _bytes
from difffeat_tune.config import TrialConfig
from difffeat_tune.features import PreparedFeatures, StoreSettings, ensure_features
from difffeat_tune.probe import logme, ridge_score
from difffeat_tune.probe.objective import Objective, ObjectiveSettings, TrialResult
from difffeat_tune.search._options import SearchOptions
from difffeat_tune.search._plan import PROXIES
from difffeat_tune.search._settings import Settings
from difffeat_tune.search.runner import SearchSummary, run_search
from difffeat_tune.store import FeatureStore, FeatureView

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

    def scores(self, proxy: str) -> list[float]:
        """One proxy's scores, by its name in ``PROXIES``."""
        return self.logme if proxy == "logme" else self.ridge

    def proxy_seconds(self, proxy: str) -> float:
        """One proxy's time for all configurations, its feature reads included."""
        return self.load_seconds + (self.logme_seconds if proxy == "logme" else self.ridge_seconds)

    def correlation(self, proxy: list[float]) -> tuple[float, float]:
        """(Kendall tau, Spearman rho) of ``proxy`` with the trained scores."""
        return float(kendalltau(proxy, self.trained)[0]), float(spearmanr(proxy, self.trained)[0])


@dataclass(frozen=True)
class ScaleModality:
    """One modality of the synthetic store: the side-by-side result and what the planted signal adds."""

    result: ModalityResult
    #: The planted signal's strength of each configuration (the true ranking).
    strength: list[float]
    planted: tuple[int, int]
    #: Per proxy, the indices of its ``proxy_top`` best configurations, best first.
    top: dict[str, list[int]]
    #: Per proxy, seconds of training its top configurations on the objective that scored them.
    top_train_seconds: dict[str, float]

    def planted_correlation(self, scores: list[float]) -> tuple[float, float]:
        """(Kendall tau, Spearman rho) of ``scores`` with the planted strength (tau-b: the strength has ties)."""
        return float(kendalltau(scores, self.strength)[0]), float(spearmanr(scores, self.strength)[0])

    def top_has_planted(self, proxy: str) -> bool:
        return any(self.result.configs[i] == self.planted for i in self.top[proxy])

    def phase_seconds(self, proxy: str) -> float:
        """The proxy-guided unimodal phase: scoring every configuration, then training the top ones."""
        return self.result.proxy_seconds(proxy) + self.top_train_seconds[proxy]


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

    configs = _configs(modality, points)
    start = time.perf_counter()
    trained = _trained_scores(objective, configs)
    train_seconds = time.perf_counter() - start
    return ModalityResult(points, logme_scores, ridge_scores, trained, load_seconds, logme_seconds, ridge_seconds,
                          train_seconds)


def _configs(modality: str, points: list[tuple[int, int]]) -> list[TrialConfig]:
    return [TrialConfig(modality, **{modality: tb}) for tb in points]  # type: ignore[arg-type]


def _trained_scores(objective: Objective, configs: list[TrialConfig]) -> list[float]:
    """Train ``configs`` as the search does (``run_many``); their selection scores."""
    scores = []
    for config, result in zip(configs, objective.run_many(configs)):
        if not isinstance(result, TrialResult):
            raise SystemExit(f"{config.label()}: {result}")
        scores.append(result.score)
    return scores


def _proxy_scores(objective: Objective, configs: list[TrialConfig], proxy: str) -> tuple[list[float], float]:
    """Every configuration's ``proxy`` score through the objective (as the search scores it) and the seconds."""
    start = time.perf_counter()
    scores = []
    for config in configs:
        result = objective.proxy_score(config, proxy)
        scores.append(result.score)
    return scores, time.perf_counter() - start


def _read_seconds(view: FeatureView, modality: str, points: list[tuple[int, int]], splits: list[str],
                  device: torch.device) -> float:
    """Seconds of one pass of the store's reads of ``modality``'s features (``splits`` of each (t, b))."""
    start = time.perf_counter()
    for t, b in points:
        for split in splits:
            view.load(modality, t, b, split, device=device)
    return time.perf_counter() - start


def run_scale_modality(view: FeatureView, settings: ObjectiveSettings, device: torch.device, modality: str,
                       points: list[tuple[int, int]], grid: str, top_k: int) -> ScaleModality:
    """Score every (t, b) of ``modality`` by both proxies, train the top ``top_k`` of each, train them all.

    Each proxy runs on a fresh objective, so its time includes the objective's feature reads;
    its scoring alone is that time less one timed pass of the store's reads of the same splits.
    """
    configs = _configs(modality, points)
    scores: dict[str, list[float]] = {}
    seconds: dict[str, float] = {}
    top: dict[str, list[int]] = {}
    top_seconds: dict[str, float] = {}
    for proxy in PROXIES:
        objective = Objective(view, settings, device=device)
        scores[proxy], seconds[proxy] = _proxy_scores(objective, configs, proxy)
        top[proxy] = [int(i) for i in np.argsort(scores[proxy])[::-1][:top_k]]
        start = time.perf_counter()
        _trained_scores(objective, [configs[i] for i in top[proxy]])
        top_seconds[proxy] = time.perf_counter() - start
        del objective
    objective = Objective(view, settings, device=device)  # fresh: training pays its own reads
    start = time.perf_counter()
    trained = _trained_scores(objective, configs)
    train_seconds = time.perf_counter() - start
    stored = [split for split in ("train", objective.selection_split) if split in view.splits]
    read = _read_seconds(view, modality, points, stored, device)
    result = ModalityResult(points, scores["logme"], scores["ridge"], trained, load_seconds=read,
                            logme_seconds=seconds["logme"] - read, ridge_seconds=seconds["ridge"] - read,
                            train_seconds=train_seconds)
    return ScaleModality(result, [signal_strength(grid, modality, t, b) for t, b in points],
                         planted(grid)[modality], top, top_seconds)


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


def _ranks(scores: list[float]) -> list[int]:
    """Each score's rank, 1 for the highest."""
    return [int(r) + 1 for r in np.argsort(np.argsort(scores)[::-1])]


def print_modality(modality: str, res: ModalityResult, verbose: bool) -> None:
    """One modality's times, rank correlations with the trained probes and the top configurations."""
    if verbose:
        print(f"\n{modality}: t    b   LogME   ridge mAP  probe mAP")
        for tb, lm, rg, tr in zip(res.configs, res.logme, res.ridge, res.trained):
            print(f"       {tb[0]:4d} {tb[1]:3d} {lm:8.4f} {100 * rg:9.2f} {100 * tr:9.2f}")
    lm_tau, lm_rho = res.correlation(res.logme)
    rg_tau, rg_rho = res.correlation(res.ridge)
    print(f"\n{modality}: {len(res.configs)} configurations")
    print(f"  training (run_many)   {res.train_seconds:7.2f} s")
    print(f"  LogME                 {res.proxy_seconds('logme'):7.2f} s "
          f"({res.logme_seconds:.2f} s scoring + {res.load_seconds:.2f} s reading)   "
          f"tau {lm_tau:.2f}  spearman {lm_rho:.2f}")
    print(f"  ridge (GCV)           {res.proxy_seconds('ridge'):7.2f} s "
          f"({res.ridge_seconds:.2f} s scoring + {res.load_seconds:.2f} s reading)   "
          f"tau {rg_tau:.2f}  spearman {rg_rho:.2f}")
    best = int(np.argmax(res.trained))
    for name, scores in (("LogME", res.logme), ("ridge", res.ridge)):
        order = np.argsort(scores)[::-1]
        print(f"  {name}: its top configuration {res.configs[int(order[0])]} is the trained #"
              f"{_ranks(res.trained)[int(order[0])]}; the trained best "
              f"{res.configs[best]} is its #{int(np.nonzero(order == best)[0][0]) + 1}")


def print_planted(res: ScaleModality, top_k: int) -> None:
    """What the planted signal says of one modality's proxies and probes."""
    rank = _ranks(res.result.trained)
    at = res.result.configs.index(res.planted)
    tr_tau, tr_rho = res.planted_correlation(res.result.trained)
    print(f"  planted optimum {res.planted}: the trained #{rank[at]}; trained probes vs the planted strength "
          f"tau {tr_tau:.2f}  spearman {tr_rho:.2f}")
    for proxy in PROXIES:
        tau, rho = res.planted_correlation(res.result.scores(proxy))
        print(f"  {proxy}: vs the planted strength tau {tau:.2f}  spearman {rho:.2f}; its top {top_k} "
              f"{[res.result.configs[i] for i in res.top[proxy]]} "
              f"{'hold' if res.top_has_planted(proxy) else 'miss'} the planted optimum; unimodal phase "
              f"{res.result.proxy_seconds(proxy):.2f} s scoring all + {res.top_train_seconds[proxy]:.2f} s training "
              f"{top_k} = {res.phase_seconds(proxy):.2f} s vs {res.result.train_seconds:.2f} s training all")


def print_long_epochs(view: FeatureView, probe_settings: ObjectiveSettings, device: torch.device,
                      results: dict[str, ModalityResult], epochs: int) -> None:
    """Rank correlations of the proxies (and the default probes) with probes trained ``epochs`` epochs."""
    long_settings = replace(probe_settings, recipe=replace(probe_settings.recipe, epochs=epochs))
    long_objective = Objective(view, long_settings, device=device)
    print(f"\nrank correlation (Kendall tau) with probes trained {epochs} epochs")
    for modality, res in results.items():
        configs = _configs(modality, res.configs)
        long_scores = [r.score if isinstance(r, TrialResult) else float("nan")
                       for r in long_objective.run_many(configs)]
        taus = {name: float(kendalltau(scores, long_scores)[0])
                for name, scores in (("logme", res.logme), ("ridge", res.ridge),
                                     (f"{probe_settings.recipe.epochs}-epoch probe", res.trained))}
        print(f"  {modality}: " + ", ".join(f"{name} {tau:.2f}" for name, tau in taus.items())
              + f"; best long probe {res.configs[int(np.nanargmax(long_scores))]} "
                f"{100 * float(np.nanmax(long_scores)):.2f} mAP")


def print_scoring_only(results: dict[str, ModalityResult]) -> float:
    """The proxies' speed-up without their reads; returns the training seconds of every probe."""
    train_total = sum(r.train_seconds for r in results.values())
    scoring_only = (train_total / sum(r.logme_seconds for r in results.values()),
                    train_total / sum(r.ridge_seconds for r in results.values()))
    print(f"\nwithout reading the features: logme {scoring_only[0]:.1f}x, ridge {scoring_only[1]:.1f}x cheaper "
          f"than training ({train_total:.2f} s for {sum(len(r.configs) for r in results.values())} probes)")
    return train_total


def closing_line(parts: dict[str, list[str]]) -> str:
    """The one summary line, in the issue's form: the first proxy's parts, the others' in brackets."""
    first, *others = PROXIES
    line = f"proxy: {first} " + "; ".join(parts[first])
    return line + "".join(f" ({proxy}: " + "; ".join(parts[proxy]) + ")" for proxy in others)


def embedded_main(args: argparse.Namespace, device: torch.device) -> None:
    """The embedded default's features: the proxies beside the trained probes (and the searches)."""
    settings = Settings.create(space=args.space, store=StoreSettings(features=args.runs / "features"),
                               device=args.device, epochs=args.epochs, cpu_threads=args.threads)
    prepared = ensure_features(settings.features)  # reuses the store; extracts only what it lacks
    probe_settings = settings.probe  # --epochs applied by Settings.create
    objective = Objective(prepared.view, probe_settings, device=device)
    space = prepared.space
    print(f"{space.label}: {prepared.view.task}, selection split {objective.selection_split!r}, "
          f"{probe_settings.recipe.epochs} probe epochs, {args.threads} thread(s) on {device}")

    results: dict[str, ModalityResult] = {}
    for modality in space.modalities:
        res = run_modality(prepared.view, objective, modality, space.axes(modality).points(), device)
        results[modality] = res
        print_modality(modality, res, args.verbose)

    if args.long_epochs:
        print_long_epochs(prepared.view, probe_settings, device, results, args.long_epochs)

    train_total = print_scoring_only(results)
    parts = {p: [" ".join(["tau"] + [f"{m} {r.correlation(r.scores(p))[0]:.2f}" for m, r in results.items()])]
             for p in PROXIES}
    scoring = {p: train_total / sum(r.proxy_seconds(p) for r in results.values()) for p in PROXIES}
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
        for p in PROXIES:
            summary, seconds = searches[p]
            parts[p] += [f"unimodal phase {plain_seconds / max(seconds, 1e-9):.1f}x cheaper (as a search, against the "
                         f"heuristic's)", f"regret {100 * (_fusion_score(grid) - _fusion_score(summary)):.2f}",
                         f"scoring {scoring[p]:.1f}x cheaper than training",
                         f"{100 * summary.probe_epochs / max(1, grid.probe_epochs):.1f}% of the grid's probe epochs"]
    else:
        for p in PROXIES:
            parts[p] += [f"scoring {scoring[p]:.1f}x cheaper than training", "regret not measured (--search)"]
    print("\n" + closing_line(parts))


def scale_main(args: argparse.Namespace, device: torch.device) -> None:
    """``bench_scale``'s synthetic store: the proxies beside the trained probes and the planted ranking."""
    preset = PRESETS[args.preset]
    out = args.out or Path(tempfile.mkdtemp(prefix="bench-proxy-"))
    out.mkdir(parents=True, exist_ok=True)
    try:
        start = time.perf_counter()
        folder = write_store(out / "features", preset, args.rows_scale, args.grid)  # reused when there
        write_seconds = time.perf_counter() - start
        store_bytes = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
        view = FeatureStore(out / "features").view(folder.name)
        settings = Settings.create(space=space_file(out, preset, args.grid), device=args.device, epochs=args.epochs,
                                   cpu_threads=args.threads, memory_budget=_bytes(args.memory_budget, "--memory-budget"))
        probe_settings = settings.probe  # --epochs applied by Settings.create
        space = settings.space
        objective = Objective(view, probe_settings, device=device)
        n_train = int(view.info["splits"]["train"])
        print(f"{preset.name} x{args.rows_scale:.2f}: {n_train:,} train rows (selection split "
              f"{objective.selection_split!r}), {preset.labels} labels, widths image {preset.image_width} / text "
              f"{preset.text_width}, {args.grid} grid, {probe_settings.recipe.epochs} probe epochs, {args.threads} "
              f"thread(s) on {device}, memory budget {objective.budget / 2**30:.1f} GiB; store "
              f"{store_bytes / 1e9:.2f} GB, written or checked in {write_seconds:.0f} s")
        del objective

        scale: dict[str, ScaleModality] = {}
        for modality in space.modalities:
            res = run_scale_modality(view, probe_settings, device, modality, space.axes(modality).points(), args.grid,
                                     args.proxy_top)
            scale[modality] = res
            print_modality(modality, res.result, args.verbose)
            print_planted(res, args.proxy_top)
        results = {m: r.result for m, r in scale.items()}
        if args.long_epochs:
            print_long_epochs(view, probe_settings, device, results, args.long_epochs)
        train_total = print_scoring_only(results)
        print(f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB")

        parts = {p: [" ".join(["tau"] + [f"{m} {r.result.correlation(r.result.scores(p))[0]:.2f}"
                                         for m, r in scale.items()]),
                     f"unimodal phase {train_total / sum(r.phase_seconds(p) for r in scale.values()):.1f}x cheaper "
                     f"(measured: score all, train the top {args.proxy_top})",
                     "regret not measured (no search on this store); its top "
                     f"{args.proxy_top} holds the planted optimum: "
                     + " ".join(f"{m} {'yes' if r.top_has_planted(p) else 'no'}" for m, r in scale.items()),
                     " ".join(["tau against the planted strength"]
                              + [f"{m} {r.planted_correlation(r.result.scores(p))[0]:.2f}" for m, r in scale.items()])]
                 for p in PROXIES}
        print(f"\n{preset.name} x{args.rows_scale:.2f}, {n_train:,} train rows, {args.grid} grid, "
              f"{probe_settings.recipe.epochs} epochs")
        print(closing_line(parts))
    finally:
        if args.out is None:
            shutil.rmtree(out, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--store", choices=("embedded", "scale"), default="embedded",
                        help="the embedded default's features, or bench_scale's synthetic store")
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
    scale = parser.add_argument_group("--store scale", "bench_scale's synthetic store (--runs and --space unused)")
    scale.add_argument("--preset", choices=sorted(PRESETS), default="coco")
    scale.add_argument("--rows-scale", type=float, default=0.05, help="share of the preset's rows")
    scale.add_argument("--grid", choices=sorted(GRIDS), default="paper")
    scale.add_argument("--out", type=Path, default=None,
                       help="store folder, kept and reused by the next run (default: a temporary one)")
    scale.add_argument("--memory-budget", default=None, help="each objective's budget, e.g. 4GiB (default: automatic)")
    args = parser.parse_args()
    if args.store == "scale" and args.search:
        parser.error("--search runs on the embedded store only (the scale store's paper grid has 600 fusion pairs)")
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if args.store == "scale":
        scale_main(args, device)
    else:
        embedded_main(args, device)


if __name__ == "__main__":
    main()
