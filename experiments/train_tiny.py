"""Train the tiny backbones the package ships, from seeds, on a CPU (at most 3 hours on 2 cores).

    python experiments/train_tiny.py [--out difffeat_tune/weights] [--threads 2] [--quick]
        [--stage image|text] [--checkpoints runs/pretrain-ckpt] [--resume]

Prints each stage's losses and time, writes ``tiny-dit/``, ``tiny-plaid/`` and ``digests.json``
under ``--out`` (by default the package's own ``weights`` folder, replacing the shipped weights),
and a ``train_tiny.json`` record of the recipe, timings and final losses next to them. The same
seeds give the same weights on the same machine and library versions (floating-point summation
order may differ elsewhere). ``--quick`` trains a few steps of each stage (a smoke test, not
weights to ship).

Every stage saves its whole state (model, optimiser, schedule, moving average, random generators,
step) into ``--checkpoints`` every few minutes and when it finishes; ``--resume`` continues from
there (a stage already finished is not trained again), computing the same steps an uninterrupted
run would. The image and text stages can run as two processes (``--stage image``, ``--stage
text``, one thread each) sharing one checkpoint folder.
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
from difffeat_tune.pretrain._checkpoint import EVERY_SECONDS, Checkpoints

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / "difffeat_tune" / "weights"
DEFAULT_CHECKPOINTS = ROOT / "runs" / "pretrain-ckpt"  # runs/ is ignored by git


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output folder")
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    parser.add_argument("--quick", action="store_true", help="a few steps of each stage (smoke test)")
    parser.add_argument("--stage", choices=("image", "text"), action="append",
                        help="train only this backbone (repeatable; default both); the other folder in --out is kept")
    parser.add_argument("--checkpoints", type=Path, default=DEFAULT_CHECKPOINTS,
                        help="checkpoint folder (default runs/pretrain-ckpt; --quick: a 'quick' folder inside it)")
    parser.add_argument("--checkpoint-seconds", type=float, default=EVERY_SECONDS,
                        help="seconds between two checkpoints of a stage")
    parser.add_argument("--resume", action="store_true", help="continue from the checkpoints")
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

    folder = args.checkpoints / "quick" if args.quick else args.checkpoints
    checkpoints = Checkpoints(folder, resume=args.resume, every_seconds=args.checkpoint_seconds)
    print(f"checkpoints: {folder} ({'resuming' if args.resume else 'starting over'})", flush=True)
    record = train_tiny_backbones(args.out, recipe, log=log, workers=args.threads,
                                  stages=tuple(args.stage or ("image", "text")), checkpoints=checkpoints)
    record["total_seconds"] = time.perf_counter() - start
    record["threads"] = args.threads
    atomic_write_json(args.out / f"train_tiny{'-' + '-'.join(args.stage) if args.stage else ''}.json", record)
    print(json.dumps({k: v for k, v in record.items() if k in ("seconds", "total_seconds")}, indent=1))


if __name__ == "__main__":
    main()
