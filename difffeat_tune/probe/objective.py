"""The trial objective: a configuration in, a trained head's validation score and metrics out.

One :class:`Objective` serves plain Optuna, Ray Tune and direct Python use. It reads the shards
a configuration needs from the feature store onto its device (keeping recently used ones in a
cache, since fusion trials share them), trains the head and scores it.

Memory is bounded by one budget in bytes (:attr:`ObjectiveSettings.memory_budget`): the cache
of inputs and the batches of probes share it. Inputs stay in the store's dtype (float16 by
default) and are standardised once into that dtype; training widens each step's rows to the
head's dtype. A single input larger than the budget is a :class:`ConfigError` that says how
much it needs and how to raise the budget, not an out-of-memory crash.

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
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Literal

import numpy as np
import torch

from difffeat_tune._defaults import DEFAULT_PROTOCOL, OBJECTIVE_MEMORY_SHARE
from difffeat_tune._device import resolve_device
from difffeat_tune._errors import ConfigError, DiffFeatError
from difffeat_tune.config import TrialConfig
from difffeat_tune.probe._batched import BATCHABLE_HEADS, BatchOnEpoch, train_heads
from difffeat_tune.probe._cache import FeatureCache
from difffeat_tune.probe._memory import (
    DEFAULT_MAX_BATCH_PROBES, MEMORY_SHARE, ProbeFootprint, available_memory, format_bytes, probe_footprint,
)
from difffeat_tune.probe.heads import build_head
from difffeat_tune.probe.train import TrainRecipe, TrainResult, evaluate, predict_logits, train_head
from difffeat_tune.store import FeatureView, Labels, check_aligned

logger = logging.getLogger(__name__)

Protocol = Literal["validation", "paper"]
PROTOCOLS: tuple[str, ...] = ("validation", "paper")
#: ``on_epoch(epoch, score) -> stop?``: reports each epoch's selection score (pruners hook in here).
OnEpoch = Callable[[int, float], bool]
#: Smallest standard deviation a feature is divided by (constant features stay finite).
_MIN_STD = 1e-6
#: Rows standardised (and summed for the statistics) at a time: bounds the float32 working copy.
_CHUNK_ROWS = 8192
#: torch dtype of a store's dtype name.
_DTYPES = {"float16": torch.float16, "float32": torch.float32}


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
        memory_budget: bytes this objective may hold on its device: the inputs it keeps between
            trials (one per feature and role: training, selection and evaluation rows) and the
            batches of probes it trains, together. ``None``: a share of the memory
            free when the objective is made (the GPU's free memory, or the available RAM);
            :data:`~difffeat_tune._defaults.OBJECTIVE_MEMORY_SHARE` of it.
        head_seed: seed of the head's initialisation.
    """

    recipe: TrainRecipe = field(default_factory=TrainRecipe)
    protocol: Protocol = DEFAULT_PROTOCOL
    holdout_fraction: float = 0.1
    holdout_seed: int = 0
    standardize: bool = True
    memory_budget: int | None = None
    head_seed: int = 0

    def __post_init__(self) -> None:
        if self.protocol not in PROTOCOLS:
            raise ConfigError(f"unknown validation protocol {self.protocol!r}", f"use {' or '.join(PROTOCOLS)}")
        if not 0 < self.holdout_fraction < 1:
            raise ConfigError(f"holdout_fraction must be in (0, 1), got {self.holdout_fraction}")
        if self.memory_budget is not None and (not isinstance(self.memory_budget, int)
                                               or isinstance(self.memory_budget, bool) or self.memory_budget < 1):
            raise ConfigError(f"ObjectiveSettings.memory_budget must be a positive number of bytes, got "
                              f"{self.memory_budget!r}", field="ObjectiveSettings.memory_budget")


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
class _ProbePlan:
    """The bytes a configuration needs in a batch (see :meth:`Objective._plan`).

    Attributes:
        inputs: its standardised inputs (training and selection rows), held in the cache.
        footprint: what its training adds while the batch runs (the stacked copy of its inputs,
            parameters, gradients, optimizer state, activations, logits, the AP workspace).
        batchable: whether it trains stacked with others.
    """

    inputs: int
    footprint: ProbeFootprint
    batchable: bool


def _batch_bytes(plans: Sequence[_ProbePlan]) -> tuple[int, int]:
    """(inputs, training) bytes of a batch of ``plans``: what the cache holds, what training reserves."""
    inputs = sum(p.inputs for p in plans)
    per_probe = sum(p.footprint.per_probe if p.batchable else p.footprint.per_probe - p.inputs for p in plans)
    scoring = min(sum(p.footprint.scoring_per_probe for p in plans), max(p.footprint.scoring_cap for p in plans))
    return inputs, max(p.footprint.fixed for p in plans) + per_probe + scoring


def _pack(indices: Sequence[int], plans: Sequence[_ProbePlan | None], budget: int,
          max_probes: int | None) -> list[list[int]]:
    """Consecutive batches of ``indices`` whose bytes fit ``budget`` (at least one configuration each).

    A head that trains alone is a batch of its own; a configuration that does not fit even alone
    is trained alone (each of its inputs fits: :meth:`Objective._plan` checked), with a warning.
    """
    limit = max_probes or DEFAULT_MAX_BATCH_PROBES
    batches: list[list[int]] = []
    current: list[int] = []
    for k in indices:
        plan = plans[k]
        assert plan is not None
        if not plan.batchable:
            batches.append([k])
            continue
        if current and (len(current) >= limit or sum(_batch_bytes([plans[i] for i in [*current, k]])) > budget):  # type: ignore[misc]
            batches.append(current)
            current = []
        if not current and sum(_batch_bytes([plan])) > budget:
            logger.warning("one probe of this batch needs %s, more than the memory budget of %s: it trains alone",
                           format_bytes(sum(_batch_bytes([plan]))), format_bytes(budget))
        current.append(k)
    if current:
        batches.append(current)
    return batches


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
        #: Bytes this objective plans to hold at most (see :attr:`ObjectiveSettings.memory_budget`).
        self.budget = self.settings.memory_budget or int(OBJECTIVE_MEMORY_SHARE * available_memory(self.device))
        # standardised inputs per (modality, (t, b), role), least recently used first
        self._cache = FeatureCache(self.budget)
        # [2, D] training mean and std per feature: small, kept for the objective's lifetime
        self._stats: dict[tuple[str, tuple[int, int]], torch.Tensor] = {}
        self._labels: dict[str, Labels] = {}
        self._target_cache: dict[str, torch.Tensor] = {}
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

    def _input(self, modality: str, tb: tuple[int, int], rows: _Rows) -> torch.Tensor:
        """One feature for one role (train / selection / evaluation rows), standardised, on the device.

        Kept in the cache in its final form and the store's dtype, so a feature that several
        trials use (every fusion trial reuses its modality's optimum) is read, indexed and
        standardised once. Roles that read the same stored split (train and its hold-out) are
        built from one read.
        """
        key = (modality, tb, rows.name)
        cached = self._cache.get(key)
        if cached is not None:
            return cached
        self._check_fits(modality, tb, rows.split)
        raw = self._load(modality, tb, rows.split)
        if self.settings.standardize and rows.split == self._train.split and (modality, tb) not in self._stats:
            self._stats[(modality, tb)] = _mean_std(self._rows_of(raw, self._train))
        for role in (self._train, self._select):
            if role.split == rows.split and role.name != rows.name and (modality, tb, role.name) not in self._cache:
                self._cache.put((modality, tb, role.name), self._standardised(modality, tb, raw, role))
        values = self._standardised(modality, tb, raw, rows, last_use=True)
        self._cache.put(key, values)
        return values

    def input_bytes(self, modality: str, tb: tuple[int, int], split: str) -> int:
        """Bytes one stored (t, b) of ``split`` takes on the device, read in the store's dtype."""
        ext = self.view.extraction(modality)
        width = int(ext.info.get("width") or 0)
        if not width:  # an old store without its width: read the feature once to learn it
            width = int(self._load(modality, tb, split).shape[1])
        return int(self.view.info["splits"][split]) * width * _stored_dtype(ext.dtype).itemsize

    def _check_fits(self, modality: str, tb: tuple[int, int], split: str) -> None:
        needed = self.input_bytes(modality, tb, split)
        if needed > self.budget:
            raise ConfigError(
                f"{modality} features t={tb[0]} b={tb[1]} of split {split!r} need {format_bytes(needed)} on {self.device}, "
                f"more than this objective's memory budget of {format_bytes(self.budget)}",
                "raise the budget with --memory-budget (ObjectiveSettings.memory_budget in Python), or use a "
                "device with more free memory")

    def _load(self, modality: str, tb: tuple[int, int], split: str) -> torch.Tensor:
        dtype = _stored_dtype(self.view.extraction(modality).dtype)
        feats = self.view.load(modality, tb[0], tb[1], split, device=self.device, dtype=dtype)
        check_aligned(f"{modality} features t={tb[0]} b={tb[1]} ({split})", feats.ids, f"labels ({split})",
                      self._split_labels(split).ids)
        return feats.values

    def _standardised(self, modality: str, tb: tuple[int, int], raw: torch.Tensor, rows: _Rows, *,
                      last_use: bool = False) -> torch.Tensor:
        """``raw``'s rows of ``rows``, standardised; in place where that copy is ours (an indexed copy,
        or ``raw`` itself on its ``last_use``), so a feature never exists three times at once."""
        values = self._rows_of(raw, rows)
        if not self.settings.standardize:
            return values
        if (modality, tb) not in self._stats:
            self._stats[(modality, tb)] = _mean_std(self._rows_of(self._load(modality, tb, self._train.split),
                                                                  self._train))
        mean, std = self._stats[(modality, tb)]
        out = values if (values is not raw or last_use) else torch.empty_like(values)
        for start in range(0, values.shape[0], _CHUNK_ROWS):  # in chunks: no float32 copy of the whole feature
            stop = start + _CHUNK_ROWS
            out[start:stop] = ((values[start:stop].float() - mean) / std).to(values.dtype)
        return out

    def _rows_of(self, values: torch.Tensor, rows: _Rows) -> torch.Tensor:
        return values if rows.index is None else values[torch.as_tensor(rows.index, device=self.device)]

    @property
    def cache(self) -> FeatureCache:
        """The inputs kept between trials, with their byte accounting (``bytes_used``, ``peak_bytes``)."""
        return self._cache

    def _split_labels(self, split: str) -> Labels:
        if split not in self._labels:
            self._labels[split] = self.view.labels(split)
        return self._labels[split]

    def _targets(self, rows: _Rows) -> torch.Tensor:
        if rows.name not in self._target_cache:
            values = self._split_labels(rows.split).values
            if rows.index is not None:
                values = values[rows.index]
            self._target_cache[rows.name] = torch.from_numpy(np.ascontiguousarray(values)).to(self.device)
        return self._target_cache[rows.name]

    def _inputs(self, config: TrialConfig, rows: _Rows) -> tuple[torch.Tensor, ...]:
        return tuple(self._input(modality, tb, rows)
                     for modality, tb in (("image", config.image), ("text", config.text)) if tb is not None)

    # -- training -----------------------------------------------------------------------------

    def _head(self, config: TrialConfig, widths: tuple[int, ...], n_classes: int) -> torch.nn.Module:
        if config.modality == "fusion":
            return build_head(str(config.fusion), image_dim=widths[0], text_dim=widths[1],
                              n_classes=n_classes, d_alg=config.d_alg, seed=self.settings.head_seed)
        return build_head("linear", in_dim=widths[0], n_classes=n_classes, seed=self.settings.head_seed)

    def _fit(self, config: TrialConfig, score_rows: _Rows,
             on_epoch: OnEpoch | None) -> tuple[TrialResult, torch.nn.Module, tuple[torch.Tensor, ...]]:
        """Train ``config``'s head; the result, the trained head and the scored rows' inputs."""
        start = time.perf_counter()
        train_x = self._inputs(config, self._train)
        score_x = self._inputs(config, score_rows)
        train_y, score_y = self._targets(self._train), self._targets(score_rows)
        head = self._head(config, tuple(x.shape[1] for x in train_x), train_y.shape[1])
        result = train_head(head, train_x, train_y, score_x, score_y, task=self.view.task,
                            recipe=self.settings.recipe, device=self.device, on_epoch=on_epoch)
        return _trial_result(config, result, score_rows.name, time.perf_counter() - start), head, score_x

    def __call__(self, config: TrialConfig, on_epoch: OnEpoch | None = None) -> TrialResult:
        """Train ``config``'s head on train and score it on the selection split."""
        return self._fit(config, self._select, on_epoch)[0]

    def proxy_score(self, config: TrialConfig, proxy: str) -> TrialResult:
        """Score a unimodal ``config`` by a closed-form proxy instead of training a probe.

        The inputs are the ones :meth:`__call__` trains on (standardised, cached). ``"logme"``
        is :func:`~difffeat_tune.probe.logme` of the training rows; ``"ridge"`` is
        :func:`~difffeat_tune.probe.ridge_score` fitted on the training rows and scored on the
        selection rows. The result has no epochs and one metric named after the proxy.

        Raises:
            ConfigError: For a fusion configuration or an unknown proxy.
        """
        from difffeat_tune.probe._proxies import logme, ridge_score
        from difffeat_tune.search._plan import PROXIES

        if config.modality == "fusion" or proxy not in PROXIES:
            raise ConfigError(f"cannot score {config.label()} by the proxy {proxy!r}",
                              f"proxies ({', '.join(PROXIES)}) score unimodal configurations")
        start = time.perf_counter()
        (train_x,), train_y = self._inputs(config, self._train), self._targets(self._train)
        if proxy == "logme":
            score, split = logme(train_x, train_y), self._train.name
        else:
            (select_x,), select_y = self._inputs(config, self._select), self._targets(self._select)
            score, split = ridge_score(train_x, train_y, select_x, select_y, task=self.view.task).score, self._select.name
        return TrialResult(config=config, score=float(score), metrics={proxy: float(score)}, split=split, epochs_run=0,
                           history=[], seconds=time.perf_counter() - start)

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
            dtype = next(head.parameters()).dtype
            features = head.eval().fuse(*(x.to(dtype) for x in inputs)).float().cpu()
        logits = predict_logits(head, inputs, batch_size=self.settings.recipe.eval_batch_size).cpu()
        return Representation(features=features, logits=logits,
                              labels=np.asarray(self._split_labels(rows.split).values), result=result)

    def run_many(self, configs: Sequence[TrialConfig], on_epoch: BatchOnEpoch | None = None, *,
                 max_probes: int | None = None,
                 memory_budget: int | None = None) -> list[TrialResult | DiffFeatError]:
        """Train several configurations and score them on the selection split, as stacked computations.

        Probes of the same head and widths train as one computation (:func:`train_heads`):
        linear probes and the linear fusion heads; ``cross_attention`` configurations train one
        at a time through the same call. Entry k equals ``self(configs[k], ...)`` up to float
        rounding, with ``on_epoch(k, epoch, score)`` in place of ``on_epoch(epoch, score)``
        (True stops configuration k only). Features come from the same cache as :meth:`__call__`.

        The configurations are trained in consecutive batches that fit the memory budget: a
        batch's inputs (kept in the cache) and its stacked copy, parameters and optimizer state
        (reserved from the same budget while it trains) never plan to exceed it.

        Args:
            configs: the configurations (e.g. the trials of one search phase).
            on_epoch: ``on_epoch(k, epoch, score) -> stop?`` for configuration k.
            max_probes: probes per batch at most (None: as many as fit, at most
                :data:`~difffeat_tune.probe._memory.DEFAULT_MAX_BATCH_PROBES`).
            memory_budget: bytes to plan against instead of the objective's budget.

        Returns:
            One entry per configuration: its :class:`TrialResult`, or the error it ran into (a
            missing or corrupt shard, a diverged probe, an input larger than the budget); the
            other configurations are unaffected. ``seconds`` is the configuration's feature
            loading plus its share of the batch's time.

        Example:
            >>> results = objective.run_many([TrialConfig("image", image=(t, 12)) for t in (10, 30, 50)])  # doctest: +SKIP
        """
        out: list[TrialResult | DiffFeatError | None] = [None] * len(configs)
        budget = memory_budget or self.budget
        plans: list[_ProbePlan | None] = []
        for k, config in enumerate(configs):
            try:
                plans.append(self._plan(config))
            except DiffFeatError as exc:  # e.g. a missing shard, or an input larger than the budget
                out[k] = exc
                plans.append(None)
        for batch in _pack([k for k, plan in enumerate(plans) if plan is not None], plans, budget, max_probes):
            _, reserved = _batch_bytes([plans[k] for k in batch])  # type: ignore[misc]
            with self._cache.reserve(reserved):
                self._run_batch(configs, batch, on_epoch, out, reserved)
        return out  # type: ignore[return-value]  # every entry was filled above

    def _run_batch(self, configs: Sequence[TrialConfig], batch: Sequence[int], on_epoch: BatchOnEpoch | None,
                   out: list[TrialResult | DiffFeatError | None], reserved: int) -> None:
        """Load the inputs of the configurations ``batch`` (indices into ``configs``) and train them together."""
        ready: list[tuple[int, torch.nn.Module, tuple[torch.Tensor, ...], tuple[torch.Tensor, ...], float]] = []
        train_y, score_y = self._targets(self._train), self._targets(self._select)
        for k in batch:
            config = configs[k]
            start = time.perf_counter()
            try:
                train_x, score_x = self._inputs(config, self._train), self._inputs(config, self._select)
            except DiffFeatError as exc:
                logger.debug("configuration %s: %s", config.label(), exc)  # the caller reports it
                out[k] = exc
                continue
            head = self._head(config, tuple(x.shape[1] for x in train_x), train_y.shape[1])
            ready.append((k, head, train_x, score_x, time.perf_counter() - start))

        def report(j: int, epoch: int, score: float) -> bool:
            return bool(on_epoch(ready[j][0], epoch, score)) if on_epoch is not None else False

        # The batch was planned within the budget: train_heads gets room for exactly this batch.
        results = train_heads([r[1] for r in ready], [r[2] for r in ready], train_y, [r[3] for r in ready], score_y,
                              task=self.view.task, recipe=self.settings.recipe, device=self.device,
                              on_epoch=report if on_epoch is not None else None,
                              memory_budget=int(reserved / MEMORY_SHARE) + 1)
        for (k, _head, _train_x, _score_x, load_seconds), result in zip(ready, results):
            if isinstance(result, DiffFeatError):
                out[k] = result
            else:
                out[k] = _trial_result(configs[k], result, self._select.name,
                                       load_seconds + result.train_seconds + result.eval_seconds)

    def _plan(self, config: TrialConfig) -> _ProbePlan:
        """The bytes one configuration needs in a batch: its inputs, and what its training adds.

        Raises:
            ConfigError: one of its inputs alone is larger than the budget.
        """
        tbs = [(m, tb) for m, tb in (("image", config.image), ("text", config.text)) if tb is not None]
        inputs = 0
        widths = []
        element = 4
        for modality, tb in tbs:
            for role in (self._train, self._select):
                self._check_fits(modality, tb, role.split)
            ext = self.view.extraction(modality)
            element = _stored_dtype(ext.dtype).itemsize
            width = int(ext.info.get("width") or 0) or int(self._input(modality, tb, self._train).shape[1])
            widths.append(width)
            inputs += element * width * (self._n_rows(self._train) + self._n_rows(self._select))
        n_classes = len(self.view.label_names)
        with torch.device("meta"):  # shapes only: no memory, no initialisation
            head = self._head(config, tuple(widths), n_classes)
        recipe = self.settings.recipe
        footprint = probe_footprint(head, widths, n_train=self._n_rows(self._train), n_val=self._n_rows(self._select),
                                    batch_size=recipe.batch_size, eval_batch_size=recipe.eval_batch_size,
                                    input_element=element)
        return _ProbePlan(inputs=inputs, footprint=footprint, batchable=isinstance(head, BATCHABLE_HEADS))

    def batch_bytes(self, configs: Sequence[TrialConfig]) -> int:
        """Bytes :meth:`run_many` plans for training ``configs`` as one batch: their inputs and training state.

        Raises:
            ConfigError: an input alone is larger than the budget.
        """
        return sum(_batch_bytes([self._plan(config) for config in configs]))

    def batch_limit(self, config: TrialConfig, *, requested: int | None = None,
                    memory_budget: int | None = None) -> int:
        """How many trials like ``config`` :meth:`run_many` trains as one batch on this device.

        The number of probes whose inputs, stacked features, parameters, gradients and optimizer
        state fit in the memory budget (``memory_budget`` bytes, or the objective's);
        ``requested`` is reduced, with a logged warning, if it does not fit. 1 for heads that
        train alone.
        """
        plan = self._plan(config)
        if not plan.batchable:
            return 1
        budget = memory_budget or self.budget
        # The first batch run_many would pack from many such configurations: one rule for both.
        n = max(requested or 0, DEFAULT_MAX_BATCH_PROBES)
        fits = len(_pack(range(n), [plan] * n, budget, n)[0])
        if requested is None:
            return min(fits, DEFAULT_MAX_BATCH_PROBES)
        if requested > fits:
            logger.warning("%d probes of %s per batch do not fit the memory budget of %s: reduced to %d",
                           requested, config.label(), format_bytes(budget), fits)
            return fits
        return requested

    def _n_rows(self, rows: _Rows) -> int:
        return len(rows.index) if rows.index is not None else int(self.view.info["splits"][rows.split])

    def _eval_rows(self) -> _Rows:
        if self.eval_split is None:
            raise ConfigError(f"data set {self.view.folder.name} has no val or test split to evaluate on")
        return _Rows(self.eval_split, None, self.eval_split)


def _stored_dtype(name: str) -> torch.dtype:
    return _DTYPES.get(name, torch.float32)


def _mean_std(values: torch.Tensor) -> torch.Tensor:
    """``[2, D]`` float32: the columns' mean and (unbiased) standard deviation, summed in float64 chunks."""
    n = values.shape[0]
    total = torch.zeros(values.shape[1], dtype=torch.float64, device=values.device)
    squares = torch.zeros_like(total)
    for chunk in values.split(_CHUNK_ROWS):
        wide = chunk.double()
        total += wide.sum(dim=0)
        squares += (wide * wide).sum(dim=0)
    mean = total / n
    var = ((squares - n * mean * mean) / max(n - 1, 1)).clamp_min(0.0)
    return torch.stack([mean, var.sqrt().clamp_min(_MIN_STD)]).float()


def _trial_result(config: TrialConfig, result: TrainResult, split: str, seconds: float) -> TrialResult:
    return TrialResult(config=config, score=float(result.score), metrics=dict(result.metrics.as_dict()), split=split,
                       epochs_run=result.epochs_run, history=list(result.history), seconds=seconds,
                       stopped_early=result.stopped_early)


__all__ = ["Objective", "ObjectiveSettings", "Representation", "TrialResult", "PROTOCOLS", "evaluate"]
