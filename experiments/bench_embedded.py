"""What the embedded default shows: A(t, b) of each modality, baselines, best image vs text vs fusion.

Runs (or reuses) the heuristic search on the embedded default ("shapes" with the tiny
backbones), then prints, measured in one run:

* A(t, b): the validation mAP of every image (t, b) and every text (t, b) of the space (the
  heuristic's unimodal phases evaluate each of them once);
* baselines on the same splits: chance (the mean label frequency, the mAP of uninformative
  scores), a logistic regression on downsampled raw pixels (16 x 16), a small CNN trained from
  scratch on the training images (the supervised reference: what the 2,400 labelled images
  alone give; a fixed, seeded recipe, :func:`cnn_baseline`), and a bag-of-words logistic
  regression on the captions (scikit-learn);
* the best image, best text and best fusion configurations, each re-trained and scored on
  validation and test;
* with ``--grid``, the full grid's best and the heuristic's regret on validation;

(the baselines do not depend on the backbones: they are kept under ``<runs>/bench_embedded/``
and reused), and ends with one line that sums it up (test mAP):
``embedded: image .., text .., fusion .. test mAP; raw pixels .., supervised CNN .., bag of words ..``.

    python experiments/bench_embedded.py [--runs runs] [--threads 2] [--cnn-epochs 20] [--grid]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import math
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import optuna
import torch
from PIL import Image
from sklearn.feature_extraction.text import CountVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import average_precision_score
from sklearn.multiclass import OneVsRestClassifier
from torch import nn

from difffeat_tune._io import atomic_write_json
from difffeat_tune.config import TrialConfig
from difffeat_tune.data import Dataset
from difffeat_tune.features import StoreSettings, ensure_features
from difffeat_tune.probe.objective import Objective
from difffeat_tune.search._options import SearchOptions
from difffeat_tune.search.runner import run_search
from difffeat_tune.settings import Settings

PIXELS = 16
RAW = f"raw pixels {PIXELS}x{PIXELS} (logistic regression)"
SUPERVISED = "small CNN from scratch on train (supervised)"
WORDS = "bag of words (logistic regression)"


def _map(labels: np.ndarray, scores: np.ndarray) -> float:
    keep = labels.sum(axis=0) > 0
    return float(average_precision_score(labels[:, keep], scores[:, keep], average="macro"))


@dataclass(frozen=True)
class CNNRecipe:
    """The supervised reference: a small CNN trained from scratch on the training split only.

    Four 3 x 3 conv blocks (BatchNorm, ReLU; max-pooling by 2 after the first three), global average
    pooling and a linear layer to the labels; binary cross-entropy, AdamW with a cosine schedule,
    horizontal flips. Fixed (not tuned on val or test) and seeded, so every run gives the same number.
    """

    channels: tuple[int, ...] = (24, 48, 96, 128)
    epochs: int = 20
    batch_size: int = 64
    lr: float = 3e-3
    weight_decay: float = 1e-4
    seed: int = 0


def _images(split) -> torch.Tensor:  # type: ignore[no-untyped-def]
    pixels = np.stack([np.asarray(split.images.load(i).convert("RGB"), dtype=np.uint8) for i in range(len(split))])
    return torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 127.5 - 1.0


def _cnn(recipe: CNNRecipe, labels: int) -> nn.Module:
    layers: list[nn.Module] = []
    width = 3
    for i, out in enumerate(recipe.channels):
        layers += [nn.Conv2d(width, out, 3, padding=1, bias=False), nn.BatchNorm2d(out), nn.ReLU()]
        if i < len(recipe.channels) - 1:
            layers.append(nn.MaxPool2d(2))  # full-resolution convolutions first: the shapes are small
        width = out
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, labels))


def cnn_baseline(dataset: Dataset, recipe: CNNRecipe | None = None) -> dict[str, float]:
    """Val and test mAP of :class:`CNNRecipe` trained on the training split (last epoch, no selection)."""
    recipe = recipe or CNNRecipe()
    torch.manual_seed(recipe.seed)
    generator = torch.Generator().manual_seed(recipe.seed)
    train = dataset.split("train")
    x, y = _images(train), torch.as_tensor(np.asarray(train.labels), dtype=torch.float32)
    model = _cnn(recipe, y.shape[1])
    optimizer = torch.optim.AdamW(model.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay)
    steps = recipe.epochs * math.ceil(len(x) / recipe.batch_size)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=recipe.lr, total_steps=steps, pct_start=0.1)
    model.train()
    for _ in range(recipe.epochs):
        order = torch.randperm(len(x), generator=generator)
        for lo in range(0, len(x), recipe.batch_size):
            rows = order[lo:lo + recipe.batch_size]
            flip = torch.rand(len(rows), generator=generator) < 0.5
            batch = torch.where(flip[:, None, None, None], x[rows].flip(-1), x[rows])
            loss = nn.functional.binary_cross_entropy_with_logits(model(batch), y[rows])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
    model.eval()
    out = {}
    with torch.inference_mode():
        for name in ("val", "test"):
            split = dataset.split(name)
            images = _images(split)
            scores = torch.cat([model(images[lo:lo + 256]) for lo in range(0, len(images), 256)])
            out[name] = _map(np.asarray(split.labels), torch.sigmoid(scores).numpy())
    return out


def baselines(dataset: Dataset, cnn: CNNRecipe | None = None) -> dict[str, dict[str, float]]:
    """Chance, raw-pixel, supervised-CNN and bag-of-words mAP on val and test (fitted on train)."""
    train = dataset.split("train")
    out: dict[str, dict[str, float]] = {"chance": {}, RAW: {}, WORDS: {}}

    def pixels(split) -> np.ndarray:  # type: ignore[no-untyped-def]
        return np.stack([np.asarray(split.images.load(i).resize((PIXELS, PIXELS), Image.BILINEAR), dtype=np.float32)
                         .ravel() / 255 for i in range(len(split))])

    x_train = pixels(train)
    mean, std = x_train.mean(0), x_train.std(0) + 1e-6
    pixel_model = OneVsRestClassifier(LogisticRegression(C=0.01, max_iter=3000)).fit((x_train - mean) / std,
                                                                                     train.labels)
    words = CountVectorizer()
    word_model = OneVsRestClassifier(LogisticRegression(C=1.0, max_iter=3000)).fit(
        words.fit_transform(train.captions), train.labels)
    out[SUPERVISED] = cnn_baseline(dataset, cnn)
    for name in ("val", "test"):
        split = dataset.split(name)
        labels = np.asarray(split.labels)
        out["chance"][name] = float(labels[:, labels.sum(0) > 0].mean(0).mean())
        out[RAW][name] = _map(
            labels, pixel_model.predict_proba((pixels(split) - mean) / std))
        out[WORDS][name] = _map(labels,
                                                               word_model.predict_proba(words.transform(split.captions)))
    return out


def cached_baselines(runs: Path, dataset: Dataset, cnn: CNNRecipe) -> dict[str, dict[str, float]]:
    """:func:`baselines`, kept in ``runs`` by data set fingerprint and CNN recipe (they do not depend on the backbones)."""
    key = hashlib.sha256(json.dumps([dataset.fingerprint(), asdict(cnn), PIXELS]).encode()).hexdigest()[:16]
    path = runs / "bench_embedded" / f"baselines-{key}.json"
    if path.is_file():
        return json.loads(path.read_text())  # type: ignore[no-any-return]
    scores = baselines(dataset, cnn)
    atomic_write_json(path, scores)
    return scores


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=Path, default=Path("runs"))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--cnn-epochs", type=int, default=CNNRecipe().epochs, help="epochs of the supervised CNN")
    parser.add_argument("--grid", action="store_true",
                        help="also run the full grid and print the heuristic's regret on validation")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    torch.set_num_threads(args.threads)

    settings = Settings.create(store=StoreSettings(features=args.runs / "features"), device="cpu",
                               search=SearchOptions(runs=args.runs, evaluate_best=True))
    prepared = ensure_features(settings.features)
    settings = settings.with_space(prepared.space)
    summary = run_search(settings, prepared.view)
    study = optuna.load_study(study_name=summary.study_name, storage=settings.search.storage_url())
    values = {t.user_attrs.get("config"): t.value for t in study.trials if t.value is not None}
    space = settings.space
    for modality in space.modalities:
        axes = space.axes(modality)
        print(f"\nA(t, b), {modality}: validation mAP (%) of a linear probe; rows t, columns b")
        print("t \\ b " + "".join(f"{b:>7d}" for b in axes.b))
        for t in axes.t:
            cells = [values.get(TrialConfig(modality, **{modality: (t, b)}).label())  # type: ignore[arg-type]
                     for b in axes.b]
            print(f"{t:>5d} " + "".join("      -" if v is None else f"{100 * v:7.1f}" for v in cells))

    print("\nbaselines (mAP %)                              val     test")
    base = cached_baselines(args.runs, prepared.dataset, replace(CNNRecipe(), epochs=args.cnn_epochs))
    for name in ("chance", RAW, SUPERVISED, WORDS):  # weakest to strongest (a cached file may hold them sorted)
        print(f"{name:<46s} {100 * base[name]['val']:6.1f}  {100 * base[name]['test']:6.1f}")

    objective = Objective(prepared.view, settings.probe, device="cpu")
    print("\nbest of each modality (mAP %)                         val     test")
    tests: dict[str, float] = {}
    for modality, row in summary.best_by_modality.items():
        best = study.trials[int(row["trial"])]  # type: ignore[call-overload]
        config = TrialConfig.from_params(best.params, d_alg=space.d_alg)
        tests[modality] = objective.evaluate(config).metrics["map"]
        print(f"{modality:<7s} {config.label():<45s} {100 * float(row['score']):6.1f}  {100 * tests[modality]:6.1f}")

    if args.grid:
        grid_settings = Settings.create(store=StoreSettings(features=args.runs / "features"), device="cpu",
                                        search=SearchOptions(runs=args.runs, sampler="grid", evaluate_best=True))
        grid = run_search(grid_settings.with_space(prepared.space), prepared.view)
        print(f"\nfull grid: best {grid.best_label} val {100 * float(grid.best_score or 0):.2f}; heuristic regret "
              f"{100 * (float(grid.best_score or 0) - float(summary.best_score or 0)):.2f} points on validation")

    shown = ", ".join(f"{m} {100 * tests[m]:.1f}" for m in ("image", "text", "fusion") if m in tests)
    print(f"\nembedded: {shown} test mAP; raw pixels {100 * base[RAW]['test']:.1f}, supervised CNN "
          f"{100 * base[SUPERVISED]['test']:.1f}, bag of words {100 * base[WORDS]['test']:.1f}")

if __name__ == "__main__":
    main()
