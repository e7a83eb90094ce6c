"""The grid on the Ray engine: batched Tune trials vs one configuration per Tune trial, side by side.

On the embedded default's features (``--features``, default ``runs/features``; extracted first if
missing, not timed), runs the full fusion grid of the embedded space with ``--engine ray`` on a
private local Ray (all this machine's CPUs) twice, each in its own process and SQLite file:

* ``batched``: the default, a Tune trial trains a batch of configurations
  (``SearchOptions.batch_trials`` automatic: up to 32, spread over the trials that run at once);
* ``one per trial``: ``batch_trials=1``, every configuration its own Tune trial (what the Ray engine
  did before batching).

It prints the Tune trials, the Optuna trials, the wall time of each search (Ray's start
included, the same for both; the time Ray took to start is printed apart) and the ratio, and
whether both found the same best configuration. One closing line::

    ray: grid 600 configurations, batched 19 Tune trials 41.0 s vs 600 Tune trials 420.0 s: 10.2x; same best: yes

    OMP_NUM_THREADS=1 python experiments/bench_ray.py [--features runs/features] [--n-trials N] [--out DIR]

``--n-trials N`` runs only the first N grid points (the same ones in both searches) for a quick look.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

#: One Ray search in a fresh process: prints its wall times and best configuration as JSON.
SEARCH = """
import json, sys, time
start = time.perf_counter()
import ray
from difffeat_tune._ray import start_ray
from difffeat_tune.features import StoreSettings, ensure_features
from difffeat_tune.search._options import SearchOptions
from difffeat_tune.search.runner import run_search
from difffeat_tune.settings import Settings
features, runs, batch, n_trials = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
search = SearchOptions(runs=runs, sampler="grid", engine="ray", evaluate_best=False,
                       batch_trials=batch or None, n_trials=n_trials or None)
settings = Settings.create(store=StoreSettings(features=features), device="cpu", search=search)
prepared = ensure_features(settings.features)  # extracted by the parent: only opens the view
ray_start = time.perf_counter()
start_ray(None)  # the search uses this Ray and leaves it running; timed apart
ray_seconds = time.perf_counter() - ray_start
summary = run_search(settings.with_space(prepared.space), prepared.view)
seconds = time.perf_counter() - start
ray.shutdown()
tune_trials = len(list((__import__("pathlib").Path(runs) / "ray").glob("*/*/params.json")))
print(json.dumps({"seconds": seconds, "ray_seconds": ray_seconds, "best": summary.best_config,
                  "best_score": summary.best_score, "trials": sum(summary.trials.values()),
                  "tune_trials": tune_trials}, default=str))
"""


def _search(features: Path, runs: Path, batch: int, n_trials: int) -> dict:
    shutil.rmtree(runs, ignore_errors=True)
    done = subprocess.run([sys.executable, "-c", SEARCH, str(features), str(runs), str(batch), str(n_trials)],
                          capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"the Ray search (batch_trials={batch or 'automatic'}) failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _prepare(features: Path) -> None:
    """Extract the embedded default's features if the store lacks them (not timed)."""
    from difffeat_tune.features import StoreSettings, ensure_features
    from difffeat_tune.settings import Settings

    ensure_features(Settings.create(store=StoreSettings(features=features), device="cpu").features)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--features", type=Path, default=Path("runs/features"), help="the feature store")
    parser.add_argument("--n-trials", type=int, default=0, help="only the first N grid points (0: the whole grid)")
    parser.add_argument("--out", type=Path, default=Path("/tmp/bench-ray"), help="the runs folders")
    args = parser.parse_args()
    _prepare(args.features)
    results = {"batched": _search(args.features, args.out / "batched", 0, args.n_trials),
               "one per trial": _search(args.features, args.out / "single", 1, args.n_trials)}
    print(f"{'grid on Ray':<16}{'Optuna trials':>14}{'Tune trials':>12}{'Ray start s':>12}{'wall s':>9}")
    for name, result in results.items():
        print(f"{name:<16}{result['trials']:>14}{result['tune_trials']:>12}{result['ray_seconds']:>12.1f}"
              f"{result['seconds']:>9.1f}")
    batched, single = results["batched"], results["one per trial"]
    same = batched["best"] == single["best"]
    print(f"best: {batched['best']} ({batched['best_score']:.4f}) vs {single['best']} ({single['best_score']:.4f})")
    print(f"ray: grid {batched['trials']} configurations, batched {batched['tune_trials']} Tune trials "
          f"{batched['seconds']:.1f} s vs {single['tune_trials']} Tune trials {single['seconds']:.1f} s: "
          f"{single['seconds'] / batched['seconds']:.1f}x; same best: {'yes' if same else 'no'}")


if __name__ == "__main__":
    main()
