"""The trial objective: a configuration in, a trained head's validation score and metrics out.

One :class:`Objective` serves plain Optuna, Ray Tune and direct Python use. It reads the shards
a configuration needs from the feature store onto its device (keeping recently used ones in a
bounded cache, since fusion trials share them), trains the head and scores it.

Validation protocol (the search must not select on the split it reports):

* ``protocol="validation"`` (default): the *evaluation* split is "test" when the data set has
  one, else "val" (COCO and VG publish no test labels, so their val plays that role). Selection
  uses "val" when it exists and is not the evaluation split, else a seeded hold-out carved from
  train (``holdout_fraction``). :meth:`Objective.evaluate` re-trains the chosen configuration on
  the same training rows and scores the evaluation split.
* ``protocol="paper"``: selection on the evaluation split itself, as the paper appears to do.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from typing import Literal

import numpy as np
import torch

from difffeat_tune._device import resolve_device
from difffeat_tune._errors import ConfigError
from difffeat_tune.config import TrialConfig
from difffeat_tune.probe.heads import build_head
from difffeat_tune.probe.train import TrainRecipe, evaluate, predict_logits, train_head
from difffeat_tune.store import FeatureView, Labels, check_aligned

logger = logging.getLogger(__name__)

Protocol = Literal["validation", "paper"]
PROTOCOLS: tuple[str, ...] = ("validation", "paper")
#: ``on_epoch(epoch, score) -> stop?``: reports each epoch's selection score (pruners hook in here).
OnEpoch = Callable[[int, float], bool]


@dataclass(frozen=True)
class ObjectiveSettings:
    """How a trial trains and scores.

    Attributes:
        recipe: the training recipe (the paper's by default).
        protocol: "validation" (select on a validation split) or "paper" (on the evaluation split).
        holdout_fraction: share of train carved out for selection when there is no val split.
        holdout_seed: seed of that carve-out.
        standardize: z-score each feature with training-split statistics before the head (a
            parameter-free normalisation, as linear-probe protocols commonly use; pooled
            diffusion features have very unequal scales across blocks).
        cache_size: feature tensors kept on the device between trials of one worker.
        head_seed: seed of the head's initialisation.
    """

    recipe: TrainRecipe = field(default_factory=TrainRecipe)
    protocol: Protocol = "validation"
    holdout_fraction: float = 0.1
    holdout_seed: int = 0
    standardize: bool = True
    cache_size: int = 24
    head_seed: int = 0

    def __post_init__(self) -> None:
        if self.protocol not in PROTOCOLS:
            raise ConfigError(f"unknown validation protocol {self.protocol!r}", f"use {' or '.join(PROTOCOLS)}")
        if not 0 < self.holdout_fraction < 1:
            raise ConfigError(f"holdout_fraction must be in (0, 1), got {self.holdout_fraction}")


@dataclass(frozen=True)
class TrialResult:
    """What one trial returns: the score, every metric, and how much training it took."""

    config: TrialConfig
    score: float
    metrics: dict[str, float]
    split: str
    epochs_run: int
    history: list[float]
    seconds: float
    stopped_early: bool = False

    def as_dict(self) -> dict[str, object]:
        out = asdict(self)
        out["config"] = self.config.to_params()
        return out


@dataclass(frozen=True)
class Representation:
    """A trained head's view of the evaluation split (see :meth:`Objective.representation`).

    Attributes:
        features: ``[N, D]`` float32 on the CPU: what the classifier reads.
        logits: ``[N, C]`` float32 on the CPU: the classifier's output.
        labels: ``[N, C]`` int8 targets (1 / 0 / -1 = ignore).
        result: the evaluation split's scores.
    """

    features: torch.Tensor
    logits: torch.Tensor
    labels: np.ndarray
    result: TrialResult


@dataclass(frozen=True)
class _Rows:
    """Which rows of which stored split a role (train / selection / evaluation) uses."""

    split: str
    index: np.ndarray | None  # None = all rows
    name: str


class Objective:
    """Train and score one configuration on features from a :class:`FeatureView`.

    Args:
        view: the data set's features and labels.
        settings: recipe, protocol and caching.
        device: where features are loaded and heads trained (default: CUDA when present).

    Example:
        >>> objective = Objective(FeatureStore("runs/features").view("shapes"))  # doctest: +SKIP
        >>> objective(TrialConfig("image", image=(30, 12))).score                # doctest: +SKIP
    """

    def __init__(self, view: FeatureView, settings: ObjectiveSettings | None = None,
                 device: str | torch.device | None = None) -> None:
        self.view = view
        self.settings = settings or ObjectiveSettings()
        self.device = resolve_device(device)
        self._cache: OrderedDict[tuple[object, ...], torch.Tensor] = OrderedDict()
        self._labels: dict[str, Labels] = {}
        splits = view.splits
        if "train" not in splits:
            raise ConfigError(f"data set {view.folder.name} has no 'train' split (has {', '.join(splits)})")
        self.eval_split = "test" if "test" in splits else "val" if "val" in splits else None
        self._train, self._select = self._roles()

    # -- roles of the splits ------------------------------------------------------------------

    def _roles(self) -> tuple[_Rows, _Rows]:
        s = self.settings
        if s.protocol == "paper":
            if self.eval_split is None:
                raise ConfigError("protocol 'paper' needs a val or test split to select on")
            return _Rows("train", None, "train"), _Rows(self.eval_split, None, self.eval_split)
        if "val" in self.view.splits and self.eval_split != "val":
            return _Rows("train", None, "train"), _Rows("val", None, "val")
        n = int(self.view.info["splits"]["train"])
        order = np.random.default_rng(s.holdout_seed).permutation(n)
        n_hold = max(1, int(round(n * s.holdout_fraction)))
        logger.info("selecting on a seeded hold-out of %d train rows (no separate val split)", n_hold)
        return (_Rows("train", np.sort(order[n_hold:]), "train"),
                _Rows("train", np.sort(order[:n_hold]), "train-holdout"))

    @property
    def selection_split(self) -> str:
        """Name of the split scores are selected on ("val", "train-holdout", or the evaluation split)."""
        return self._select.name

    # -- data ---------------------------------------------------------------------------------

    def _features(self, modality: str, tb: tuple[int, int], split: str) -> torch.Tensor:
        key = (modality, tb, split)
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        feats = self.view.load(modality, tb[0], tb[1], split, device=self.device)
        check_aligned(f"{modality} features t={tb[0]} b={tb[1]} ({split})", feats.ids, f"labels ({split})",
                      self._split_labels(split).ids)
        self._cache[key] = feats.values
        while len(self._cache) > self.settings.cache_size:
            self._cache.popitem(last=False)
        return feats.values

    def _split_labels(self, split: str) -> Labels:
        if split not in self._labels:
            self._labels[split] = self.view.labels(split)
        return self._labels[split]

    def _targets(self, rows: _Rows) -> torch.Tensor:
        values = self._split_labels(rows.split).values
        if rows.index is not None:
            values = values[rows.index]
        return torch.from_numpy(np.ascontiguousarray(values)).to(self.device)

    def _inputs(self, config: TrialConfig, rows: _Rows, train_rows: _Rows) -> tuple[torch.Tensor, ...]:
        out = []
        for modality, tb in (("image", config.image), ("text", config.text)):
            if tb is None:
                continue
            values = self._features(modality, tb, rows.split)
            if rows.index is not None:
                values = values[torch.as_tensor(rows.index, device=self.device)]
            if self.settings.standardize:
                mean, std = self._stats(modality, tb, train_rows)
                values = (values - mean) / std
            out.append(values)
        return tuple(out)

    def _stats(self, modality: str, tb: tuple[int, int], rows: _Rows) -> tuple[torch.Tensor, torch.Tensor]:
        key = ("stats", modality, tb, rows.name)
        if key not in self._cache:
            values = self._features(modality, tb, rows.split)
            if rows.index is not None:
                values = values[torch.as_tensor(rows.index, device=self.device)]
            mean = values.mean(dim=0)
            std = values.std(dim=0).clamp_min(1e-6)
            self._cache[key] = torch.stack([mean, std])
        mean_std = self._cache[key]
        return mean_std[0], mean_std[1]

    # -- training -----------------------------------------------------------------------------

    def _head(self, config: TrialConfig, inputs: tuple[torch.Tensor, ...], n_classes: int) -> torch.nn.Module:
        if config.modality == "fusion":
            return build_head(str(config.fusion), image_dim=inputs[0].shape[1], text_dim=inputs[1].shape[1],
                              n_classes=n_classes, d_alg=config.d_alg, seed=self.settings.head_seed)
        return build_head("linear", in_dim=inputs[0].shape[1], n_classes=n_classes, seed=self.settings.head_seed)

    def _fit(self, config: TrialConfig, score_rows: _Rows,
             on_epoch: OnEpoch | None) -> tuple[TrialResult, torch.nn.Module, tuple[torch.Tensor, ...]]:
        """Train ``config``'s head; the result, the trained head and the scored rows' inputs."""
        start = time.perf_counter()
        train_x = self._inputs(config, self._train, self._train)
        score_x = self._inputs(config, score_rows, self._train)
        train_y, score_y = self._targets(self._train), self._targets(score_rows)
        head = self._head(config, train_x, train_y.shape[1])
        result = train_head(head, train_x, train_y, score_x, score_y, task=self.view.task,
                            recipe=self.settings.recipe, device=self.device, on_epoch=on_epoch)
        trial = TrialResult(config=config, score=float(result.score), metrics=dict(result.metrics.as_dict()),
                            split=score_rows.name, epochs_run=result.epochs_run, history=list(result.history),
                            seconds=time.perf_counter() - start, stopped_early=result.stopped_early)
        return trial, head, score_x

    def __call__(self, config: TrialConfig, on_epoch: OnEpoch | None = None) -> TrialResult:
        """Train ``config``'s head on train and score it on the selection split."""
        return self._fit(config, self._select, on_epoch)[0]

    def evaluate(self, config: TrialConfig) -> TrialResult:
        """Re-train ``config`` and score it on the evaluation split (the number to report)."""
        return self._fit(config, self._eval_rows(), None)[0]

    def representation(self, config: TrialConfig) -> Representation:
        """Train ``config``'s head and return what it reads and predicts on the evaluation split.

        The features are the standardised feature for a unimodal configuration and the head's
        fused vector (``head.fuse``, before the classifier) for a fusion configuration; the logits
        are the classifier's output on the same rows (per-class scores).
        """
        rows = self._eval_rows()
        result, head, inputs = self._fit(config, rows, None)
        with torch.no_grad():
            features = head.eval().fuse(*inputs).float().cpu()
        logits = predict_logits(head, inputs, batch_size=self.settings.recipe.eval_batch_size).cpu()
        return Representation(features=features, logits=logits,
                              labels=np.asarray(self._split_labels(rows.split).values), result=result)

    def _eval_rows(self) -> _Rows:
        if self.eval_split is None:
            raise ConfigError(f"data set {self.view.folder.name} has no val or test split to evaluate on")
        return _Rows(self.eval_split, None, self.eval_split)

    def with_recipe(self, **changes: object) -> Objective:
        """A copy with recipe fields changed (shares nothing mutable with this one)."""
        recipe = replace(self.settings.recipe, **changes)  # type: ignore[arg-type]
        return Objective(self.view, replace(self.settings, recipe=recipe), self.device)


__all__ = ["Objective", "ObjectiveSettings", "Representation", "TrialResult", "PROTOCOLS", "evaluate"]
