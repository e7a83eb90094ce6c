"""Train the tiny backbones the package ships, from seeds, on a CPU (at most an hour on 2 cores).

    python experiments/train_tiny.py [--out difffeat_tune/weights] [--threads 2] [--quick]

Prints each stage's losses and time, writes ``tiny-dit/``, ``tiny-plaid/`` and ``digests.json``
under ``--out`` (by default the package's own ``weights`` folder, replacing the shipped weights),
and a ``train_tiny.json`` record of the recipe, timings and final losses next to them. The same
seeds give the same weights on the same machine and library versions (floating-point summation
order may differ elsewhere). ``--quick`` trains a few steps of each stage (a smoke test, not
weights to ship).
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from dataclasses import replace
from pathlib import Path

import torch

from difffeat_tune._io import atomic_write_json
from difffeat_tune.pretrain import TinyRecipe, train_tiny_backbones

DEFAULT_OUT = Path(__file__).resolve().parent.parent / "difffeat_tune" / "weights"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output folder")
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    parser.add_argument("--quick", action="store_true", help="a few steps of each stage (smoke test)")
    parser.add_argument("--stage", choices=("image", "text"), action="append",
                        help="train only this backbone (repeatable; default both); the other folder in --out is kept")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(args.threads)
    recipe = TinyRecipe()
    if args.quick:
        recipe = replace(recipe, corpus_images=512, corpus_chunks=2, vae=replace(recipe.vae, steps=20, log_every=10),
                         dit=replace(recipe.dit, steps=20, log_every=10),
                         plaid=replace(recipe.plaid, steps=20, log_every=10))
    start = time.perf_counter()

    def log(stage: str, step: int, values: dict[str, float]) -> None:
        shown = " ".join(f"{k} {v:.4g}" for k, v in values.items())
        print(f"[{time.perf_counter() - start:7.1f} s] {stage:6s} {step:6d}  {shown}", flush=True)

    record = train_tiny_backbones(args.out, recipe, log=log, workers=args.threads,
                                  stages=tuple(args.stage or ("image", "text")))
    record["total_seconds"] = time.perf_counter() - start
    record["threads"] = args.threads
    atomic_write_json(args.out / f"train_tiny{'-' + '-'.join(args.stage) if args.stage else ''}.json", record)
    print(json.dumps({k: v for k, v in record.items() if k in ("seconds", "total_seconds")}, indent=1))


if __name__ == "__main__":
    main()
