"""What the embedded default shows: A(t, b) of each modality, baselines, best image vs text vs fusion.

Runs (or reuses) the heuristic search on the embedded default ("shapes" with the tiny
backbones), then prints, measured in one run:

* A(t, b): the validation mAP of every image (t, b) and every text (t, b) of the space (the
  heuristic's unimodal phases evaluate each of them once);
* baselines on the same splits: chance (the mean label frequency, the mAP of uninformative
  scores), a logistic regression on downsampled raw pixels (16 x 16), and a bag-of-words logistic
  regression on the captions (scikit-learn);
* the best image, best text and best fusion configurations, each re-trained and scored on
  validation and test.

    python experiments/bench_embedded.py [--runs runs] [--threads 2]
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np
import optuna
import torch
from PIL import Image
from sklearn.feature_extraction.text import CountVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import average_precision_score
from sklearn.multiclass import OneVsRestClassifier

from difffeat_tune.config import TrialConfig
from difffeat_tune.data import Dataset
from difffeat_tune.features import StoreSettings, ensure_features
from difffeat_tune.probe.objective import Objective
from difffeat_tune.search._options import SearchOptions
from difffeat_tune.search.runner import run_search
from difffeat_tune.settings import Settings

PIXELS = 16


def _map(labels: np.ndarray, scores: np.ndarray) -> float:
    keep = labels.sum(axis=0) > 0
    return float(average_precision_score(labels[:, keep], scores[:, keep], average="macro"))


def baselines(dataset: Dataset) -> dict[str, dict[str, float]]:
    """Chance, raw-pixel and bag-of-words mAP on val and test (fitted on train)."""
    train = dataset.split("train")
    out: dict[str, dict[str, float]] = {"chance": {}, f"raw pixels {PIXELS}x{PIXELS} (logistic regression)": {},
                                        "bag of words (logistic regression)": {}}

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
    for name in ("val", "test"):
        split = dataset.split(name)
        labels = np.asarray(split.labels)
        out["chance"][name] = float(labels[:, labels.sum(0) > 0].mean(0).mean())
        out[f"raw pixels {PIXELS}x{PIXELS} (logistic regression)"][name] = _map(
            labels, pixel_model.predict_proba((pixels(split) - mean) / std))
        out["bag of words (logistic regression)"][name] = _map(labels,
                                                               word_model.predict_proba(words.transform(split.captions)))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=Path, default=Path("runs"))
    parser.add_argument("--threads", type=int, default=2)
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

    print("\nbaselines (mAP %)          val     test")
    for name, scores in baselines(prepared.dataset).items():
        print(f"{name:<42s} {100 * scores['val']:6.1f}  {100 * scores['test']:6.1f}")

    objective = Objective(prepared.view, settings.probe, device="cpu")
    print("\nbest of each modality (mAP %)                         val     test")
    for modality, row in summary.best_by_modality.items():
        best = study.trials[int(row["trial"])]  # type: ignore[call-overload]
        config = TrialConfig.from_params(best.params, d_alg=space.d_alg)
        test = objective.evaluate(config).metrics["map"]
        print(f"{modality:<7s} {config.label():<45s} {100 * float(row['score']):6.1f}  {100 * test:6.1f}")


if __name__ == "__main__":
    main()
