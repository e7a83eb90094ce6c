"""Benchmark: ``train_head`` (index batches on the device) vs the common DataLoader recipe.

Both train the same linear probe (same initial weights) on the same synthetic multi-label data
shaped like the project's features, with the same recipe (Adam lr 1e-3, cosine annealing over the
epochs stepped per epoch, batch 128, shuffled every epoch, validation mAP after every epoch), and
the script prints one table: throughput in sample-epochs/s (training rows x epochs / wall time,
the per-epoch validation included, as a search pays for it), the speed ratio and both final
validation mAPs.

The common recipe is implemented here: ``TensorDataset`` + ``DataLoader(batch_size=128,
shuffle=True)`` for training, a ``DataLoader`` over validation, sigmoid outputs collected on the
CPU and ``sklearn.metrics.average_precision_score(average="macro")`` per epoch.

Synthetic data: a latent factor z ~ N(0, I_r); features x = z A + noise (width ``--dim``); labels
from a random linear teacher on z plus logistic noise, thresholded per class to a prevalence
between ``--min-prevalence`` and ``--max-prevalence``: real, learnable, imperfect signal.

Usage::

    python experiments/bench_probe.py                      # 2400 train / 800 val, 1152-d, 16 labels
    python experiments/bench_probe.py --epochs 10 --n-train 10000
"""

from __future__ import annotations

import argparse
import copy
import logging
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.metrics import average_precision_score
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from difffeat_tune._device import resolve_device
from difffeat_tune.probe.heads import build_head
from difffeat_tune.probe.train import TrainRecipe, train_head

LATENT_DIM = 32
FEATURE_NOISE = 1.0
LABEL_NOISE = 0.5


@dataclass(frozen=True)
class Run:
    """One timed training run."""

    seconds: float
    train_seconds: float
    final_map: float


def make_data(args: argparse.Namespace) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Synthetic features and int8 labels (train x, train y, val x, val y), seeded."""
    g = torch.Generator().manual_seed(args.seed)
    n = args.n_train + args.n_val
    z = torch.randn(n, LATENT_DIM, generator=g)
    mixing = torch.randn(LATENT_DIM, args.dim, generator=g)
    x = z @ mixing + FEATURE_NOISE * torch.randn(n, args.dim, generator=g)
    teacher = torch.randn(LATENT_DIM, args.labels, generator=g) / LATENT_DIM**0.5
    u = torch.rand(n, args.labels, generator=g).clamp(1e-6, 1 - 1e-6)
    logits = z @ teacher + LABEL_NOISE * torch.log(u / (1 - u))
    spread = args.max_prevalence - args.min_prevalence
    prevalence = args.min_prevalence + spread * torch.rand(args.labels, generator=g)
    cut = torch.quantile(logits, 1 - prevalence, dim=0).diagonal()
    y = (logits > cut).to(torch.int8)
    return x[: args.n_train], y[: args.n_train], x[args.n_train :], y[args.n_train :]


def run_fast(head: nn.Module, data: tuple[Tensor, ...], recipe: TrainRecipe, device: torch.device) -> Run:
    """The package's loop (features already on the device, as the search keeps them)."""
    x_tr, y_tr, x_va, y_va = (t.to(device) for t in data)
    start = time.perf_counter()
    result = train_head(head, x_tr, y_tr, x_va, y_va, task="multilabel", recipe=recipe, device=device)
    return Run(time.perf_counter() - start, result.train_seconds, result.score)


def run_common(head: nn.Module, data: tuple[Tensor, ...], recipe: TrainRecipe, device: torch.device) -> Run:
    """The common recipe: TensorDataset + DataLoader on CPU tensors, batches moved to the device."""
    x_tr, y_tr, x_va, y_va = data
    head.to(device)
    start = time.perf_counter()
    train_loader = DataLoader(
        TensorDataset(x_tr, y_tr.float()),
        batch_size=recipe.batch_size,
        shuffle=True,
        generator=torch.Generator().manual_seed(recipe.seed),
    )
    val_loader = DataLoader(TensorDataset(x_va, y_va), batch_size=recipe.batch_size, shuffle=False)
    optimizer = torch.optim.Adam(head.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=recipe.epochs)
    final_map = float("nan")
    train_seconds = 0.0
    for _ in range(recipe.epochs):
        t0 = time.perf_counter()
        head.train()
        for xb, yb in train_loader:
            xb, yb = xb.to(device), yb.to(device)
            loss = F.binary_cross_entropy_with_logits(head(xb), yb)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        scheduler.step()
        train_seconds += time.perf_counter() - t0
        head.eval()
        probs, targets = [], []
        with torch.no_grad():
            for xb, yb in val_loader:
                probs.append(torch.sigmoid(head(xb.to(device))).cpu().numpy())
                targets.append(yb.numpy())
        final_map = float(average_precision_score(np.concatenate(targets), np.concatenate(probs), average="macro"))
    return Run(time.perf_counter() - start, train_seconds, final_map)


def parse_args() -> argparse.Namespace:
    """Command-line flags."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n-train", type=int, default=2400)
    p.add_argument("--n-val", type=int, default=800)
    p.add_argument("--dim", type=int, default=1152, help="feature width (DiT-XL/2: 1152)")
    p.add_argument("--labels", type=int, default=16)
    p.add_argument("--epochs", type=int, default=40)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--repeats", type=int, default=1, help="timed runs per method (best time is kept)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch intra-op threads for both recipes (0 = torch's default); on a shared CPU more "
                        "threads make these tiny matmuls slower, not faster")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    p.add_argument("--min-prevalence", type=float, default=0.05)
    p.add_argument("--max-prevalence", type=float, default=0.3)
    return p.parse_args()


def main() -> None:
    """Run both recipes and print the table."""
    logging.basicConfig(level=logging.WARNING)
    args = parse_args()
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    data = make_data(args)
    recipe = TrainRecipe(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, seed=args.seed)
    warmup = TrainRecipe(epochs=1, batch_size=args.batch_size, lr=args.lr, seed=args.seed)
    initial = build_head("linear", in_dim=args.dim, n_classes=args.labels, seed=args.seed)

    # one warm-up epoch each (first-call overheads), then timed runs from the same initial weights
    run_fast(copy.deepcopy(initial), data, warmup, device)
    run_common(copy.deepcopy(initial), data, warmup, device)
    fast = min((run_fast(copy.deepcopy(initial), data, recipe, device) for _ in range(args.repeats)),
               key=lambda r: r.seconds)
    common = min((run_common(copy.deepcopy(initial), data, recipe, device) for _ in range(args.repeats)),
                 key=lambda r: r.seconds)

    work = args.n_train * args.epochs
    print(f"data: {args.n_train} train / {args.n_val} val rows, {args.dim}-d features, {args.labels} labels, "
          f"{args.epochs} epochs, batch {args.batch_size}, device {device}, torch threads {torch.get_num_threads()}")
    header = f"{'recipe':<28}{'wall s':>9}{'sample-ep/s':>13}{'train-only/s':>14}{'final val mAP':>15}"
    print(header)
    print("-" * len(header))
    for name, run in (("train_head (index batches)", fast), ("DataLoader + sklearn mAP", common)):
        print(f"{name:<28}{run.seconds:>9.2f}{work / run.seconds:>13.0f}{work / run.train_seconds:>14.0f}"
              f"{100 * run.final_map:>15.2f}")
    print("-" * len(header))
    print(f"speed-up (wall, incl. per-epoch val): {common.seconds / fast.seconds:.1f}x   "
          f"(training steps only: {common.train_seconds / fast.train_seconds:.1f}x)   "
          f"mAP difference: {100 * (fast.final_map - common.final_map):+.2f} points")


if __name__ == "__main__":
    main()
