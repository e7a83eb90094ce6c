"""Benchmark: K probes trained as one computation vs one after another vs the DataLoader recipe.

For each feature width (default: 64, the embedded default's, and 1152, DiT-XL/2's) the script
trains ``--probes`` linear probes, each on its own features, on the same rows and labels with the
same recipe (Adam lr 1e-3, cosine annealing over the epochs stepped per epoch, batch 128, shuffled
every epoch, validation mAP after every epoch), three ways, and prints one table:

* **batched**: :func:`difffeat_tune.probe.train_heads`, all probes as one stacked computation;
* **sequential**: :func:`difffeat_tune.probe.train_head` once per probe (the package's fast loop);
* **DataLoader**: the common recipe once per probe: ``TensorDataset`` + ``DataLoader(batch_size=128,
  shuffle=True)``, a ``DataLoader`` over validation, sigmoid outputs collected on the CPU and
  ``sklearn.metrics.average_precision_score(average="macro")`` per epoch;
* **compute floor**: the training's matmul FLOPs (per step a forward and a weight-gradient matmul,
  per epoch a validation forward, for every probe) divided by the fp32 FLOP/s this machine reaches
  on matmuls of exactly those shapes, timed here (``torch.bmm`` over the K probes, inputs already
  in cache: an optimistic floor).

Times are wall times including the per-epoch validation, as a search pays for it. The final mAPs
of the three trainings are printed side by side (batched and sequential start from the same
weights and must agree to float rounding; the DataLoader recipe draws other batches).

Synthetic data: a latent factor z ~ N(0, I_r) shared by all probes; probe k's features are
x_k = z A_k + noise (its own mixing and noise level, so the probes differ); labels from a random
linear teacher on z plus logistic noise, thresholded per class to a prevalence between
``--min-prevalence`` and ``--max-prevalence``: real, learnable, imperfect signal.

Usage::

    python experiments/bench_probe.py --threads 2            # 30 probes, 64-d and 1152-d, 2400 rows
    python experiments/bench_probe.py --widths 64 --skip-dataloader --epochs 10
"""

from __future__ import annotations

import argparse
import copy
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.metrics import average_precision_score
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from difffeat_tune._device import resolve_device
from difffeat_tune.probe import TrainRecipe, train_head, train_heads
from difffeat_tune.probe.heads import build_head

LATENT_DIM = 32
LABEL_NOISE = 0.5
#: Range of the per-probe feature noise (probe k's level is spread evenly over it).
FEATURE_NOISE = (0.5, 3.0)
#: Repetitions of each matmul when timing the floor (after as many warm-up calls).
FLOOR_REPEATS = 50


@dataclass(frozen=True)
class Run:
    """One timed training of all probes."""

    seconds: float
    final_maps: list[float]


@dataclass(frozen=True)
class Data:
    """Per-probe features and the shared labels of one width."""

    train_x: list[Tensor]
    val_x: list[Tensor]
    train_y: Tensor
    val_y: Tensor

    def to(self, device: torch.device) -> Data:
        """A copy on ``device`` (the search keeps features on its device)."""
        return Data([x.to(device) for x in self.train_x], [x.to(device) for x in self.val_x],
                    self.train_y.to(device), self.val_y.to(device))


def make_data(args: argparse.Namespace, dim: int) -> Data:
    """Synthetic features (one set per probe) and shared int8 labels, seeded."""
    g = torch.Generator().manual_seed(args.seed)
    n = args.n_train + args.n_val
    z = torch.randn(n, LATENT_DIM, generator=g)
    teacher = torch.randn(LATENT_DIM, args.labels, generator=g) / LATENT_DIM**0.5
    u = torch.rand(n, args.labels, generator=g).clamp(1e-6, 1 - 1e-6)
    logits = z @ teacher + LABEL_NOISE * torch.log(u / (1 - u))
    spread = args.max_prevalence - args.min_prevalence
    prevalence = args.min_prevalence + spread * torch.rand(args.labels, generator=g)
    cut = torch.quantile(logits, 1 - prevalence, dim=0).diagonal()
    y = (logits > cut).to(torch.int8)
    noise = torch.linspace(*FEATURE_NOISE, args.probes).tolist()
    xs = [z @ torch.randn(LATENT_DIM, dim, generator=g) + level * torch.randn(n, dim, generator=g) for level in noise]
    return Data([x[: args.n_train] for x in xs], [x[args.n_train :] for x in xs], y[: args.n_train], y[args.n_train :])


def initial_heads(args: argparse.Namespace, dim: int) -> list[nn.Module]:
    """Probe k's initial weights: ``build_head(seed=k)``, the same for every method."""
    return [build_head("linear", in_dim=dim, n_classes=args.labels, seed=k) for k in range(args.probes)]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(train: Callable[[], list[float]], device: torch.device) -> Run:
    _sync(device)
    start = time.perf_counter()
    final_maps = train()
    _sync(device)
    return Run(time.perf_counter() - start, final_maps)


def run_batched(heads: list[nn.Module], data: Data, recipe: TrainRecipe, device: torch.device) -> Run:
    """All probes as one computation."""
    d = data.to(device)
    return _timed(lambda: [r.score for r in train_heads(heads, d.train_x, d.train_y, d.val_x, d.val_y,  # type: ignore[union-attr]
                                                        recipe=recipe, device=device)], device)


def run_sequential(heads: list[nn.Module], data: Data, recipe: TrainRecipe, device: torch.device) -> Run:
    """One ``train_head`` per probe."""
    d = data.to(device)
    return _timed(lambda: [train_head(h, x, d.train_y, v, d.val_y, recipe=recipe, device=device).score
                           for h, x, v in zip(heads, d.train_x, d.val_x)], device)


def run_dataloader(heads: list[nn.Module], data: Data, recipe: TrainRecipe, device: torch.device) -> Run:
    """The common recipe once per probe: TensorDataset + DataLoader on CPU tensors, batches moved to the device."""
    return _timed(lambda: [_dataloader_recipe(h, x, data.train_y, v, data.val_y, recipe, device)
                           for h, x, v in zip(heads, data.train_x, data.val_x)], device)


def _dataloader_recipe(head: nn.Module, x_tr: Tensor, y_tr: Tensor, x_va: Tensor, y_va: Tensor, recipe: TrainRecipe,
                       device: torch.device) -> float:
    head.to(device)
    train_loader = DataLoader(TensorDataset(x_tr, y_tr.float()), batch_size=recipe.batch_size, shuffle=True,
                              generator=torch.Generator().manual_seed(recipe.seed))
    val_loader = DataLoader(TensorDataset(x_va, y_va), batch_size=recipe.batch_size, shuffle=False)
    optimizer = torch.optim.Adam(head.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=recipe.epochs)
    final_map = float("nan")
    for _ in range(recipe.epochs):
        head.train()
        for xb, yb in train_loader:
            loss = F.binary_cross_entropy_with_logits(head(xb.to(device)), yb.to(device))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        scheduler.step()
        head.eval()
        probs, targets = [], []
        with torch.no_grad():
            for xb, yb in val_loader:
                probs.append(torch.sigmoid(head(xb.to(device))).cpu().numpy())
                targets.append(yb.numpy())
        final_map = float(average_precision_score(np.concatenate(targets), np.concatenate(probs), average="macro"))
    return final_map


def compute_floor(args: argparse.Namespace, dim: int, device: torch.device) -> tuple[float, dict[str, float]]:
    """Seconds the training's matmuls need at the FLOP/s measured on their shapes, and those rates (GFLOP/s)."""
    k, c, b = args.probes, args.labels, args.batch_size
    full, last = divmod(args.n_train, b)
    # (name, batched operands, how many times the training runs this matmul)
    shapes: list[tuple[str, tuple[int, ...], tuple[int, ...], int]] = [
        ("forward", (k, b, dim), (k, dim, c), full * args.epochs),
        ("weight grad", (k, c, b), (k, b, dim), full * args.epochs),
        ("validation", (k, args.n_val, dim), (k, dim, c), args.epochs),
    ]
    if last:
        shapes += [("forward (last batch)", (k, last, dim), (k, dim, c), args.epochs),
                   ("weight grad (last batch)", (k, c, last), (k, last, dim), args.epochs)]
    floor, rates = 0.0, {}
    g = torch.Generator(device=device).manual_seed(args.seed)
    for name, shape_a, shape_b, count in shapes:
        a = torch.randn(shape_a, generator=g, device=device)
        w = torch.randn(shape_b, generator=g, device=device)
        seconds = _best_time(lambda a=a, w=w: torch.bmm(a, w), device)
        flops = 2.0 * shape_a[0] * shape_a[1] * shape_a[2] * shape_b[2]
        rates[name] = flops / seconds / 1e9
        floor += count * seconds
    return floor, rates


def _best_time(fn: Callable[[], object], device: torch.device) -> float:
    """Median seconds of one call (after warm-up calls)."""
    for _ in range(FLOOR_REPEATS // 5):
        fn()
    times = []
    for _ in range(FLOOR_REPEATS):
        _sync(device)
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def parse_args() -> argparse.Namespace:
    """Command-line flags."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--probes", type=int, default=30)
    p.add_argument("--widths", type=int, nargs="+", default=[64, 1152],
                   help="feature widths (embedded default: 64; DiT-XL/2: 1152)")
    p.add_argument("--n-train", type=int, default=2400)
    p.add_argument("--n-val", type=int, default=800)
    p.add_argument("--labels", type=int, default=14)
    p.add_argument("--epochs", type=int, default=40)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--repeats", type=int, default=1, help="timed runs per method (the best is kept)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch intra-op threads for every method (0 = torch's default)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    p.add_argument("--skip-dataloader", action="store_true", help="leave out the (slowest) DataLoader recipe")
    p.add_argument("--min-prevalence", type=float, default=0.05)
    p.add_argument("--max-prevalence", type=float, default=0.3)
    return p.parse_args()


def main() -> None:
    """Run every method at every width and print the table and the summary line."""
    logging.basicConfig(level=logging.WARNING)
    args = parse_args()
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    recipe = TrainRecipe(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, seed=args.seed)
    warmup = TrainRecipe(epochs=1, batch_size=args.batch_size, lr=args.lr, seed=args.seed)
    methods: dict[str, Callable[[list[nn.Module], Data, TrainRecipe, torch.device], Run]] = {
        "batched (train_heads)": run_batched, "sequential (train_head)": run_sequential}
    if not args.skip_dataloader:
        methods["DataLoader + sklearn mAP"] = run_dataloader

    print(f"{args.probes} linear probes per width, each on its own features; {args.n_train} train / {args.n_val} val "
          f"rows, {args.labels} labels, {args.epochs} epochs, batch {args.batch_size}, device {device}, "
          f"torch threads {torch.get_num_threads()}")
    header = f"{'width':>6}  {'method':<26}{'wall s':>9}{'probe-epochs/s':>16}{'mean final mAP':>16}{'time/batched':>14}"
    print(header)
    print("-" * len(header))
    summary = {}
    for dim in args.widths:
        data = make_data(args, dim)
        heads = initial_heads(args, dim)
        runs: dict[str, Run] = {}
        for name, method in methods.items():
            method(copy.deepcopy(heads), data, warmup, device)  # first-call overheads
            runs[name] = min((method(copy.deepcopy(heads), data, recipe, device) for _ in range(args.repeats)),
                             key=lambda r: r.seconds)
        floor, rates = compute_floor(args, dim, device)
        batched = runs["batched (train_heads)"]
        for name, run in runs.items():
            print(f"{dim:>6}  {name:<26}{run.seconds:>9.2f}{args.probes * args.epochs / run.seconds:>16.0f}"
                  f"{100 * float(np.mean(run.final_maps)):>16.2f}{run.seconds / batched.seconds:>13.2f}x")
        print(f"{dim:>6}  {'compute floor (matmuls)':<26}{floor:>9.2f}{args.probes * args.epochs / floor:>16.0f}"
              f"{'':>16}{floor / batched.seconds:>13.2f}x")
        sequential = runs["sequential (train_head)"]
        gap = max(abs(a - b) for a, b in zip(batched.final_maps, sequential.final_maps))
        print(f"{'':>6}  matmul GFLOP/s: " + ", ".join(f"{k} {v:.1f}" for k, v in rates.items()))
        print(f"{'':>6}  batched vs sequential final mAP: largest difference over the probes "
              f"{100 * gap:.5f} points")
        print("-" * len(header))
        summary[dim] = (sequential.seconds / batched.seconds, batched.seconds / floor)

    for dim, (speedup, over_floor) in summary.items():
        print(f"{dim}-d: batched {speedup:.1f}x the sequential fast loop, {over_floor:.2f}x the compute floor")
    # the goals: overhead-bound width vs the sequential loop, compute-bound width vs the floor
    small, wide = min(summary), max(summary)
    print(f"batched: {small}-d {summary[small][0]:.1f}x vs sequential; {wide}-d {summary[wide][1]:.2f}x the compute floor")

if __name__ == "__main__":
    main()
