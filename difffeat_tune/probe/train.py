"""The probe training loop: feature tensors on the device, index batches, no DataLoader.

Probe training is the inner loop of the search (65 trainings per data set in Algorithm 1, 600 per
fusion method in the full grid), and a linear layer costs almost nothing per step: with a
``DataLoader`` over a ``TensorDataset`` most of the time goes to per-sample indexing and collation.
Here every epoch draws one seeded permutation of row indices on the device (``torch.randperm``
with a ``torch.Generator``), each batch is one ``index_select`` per input tensor, the optimizer
step is torch's fused kernel, and the per-epoch validation is one forward pass plus a vectorised
mAP. The head is left in eval mode.

One loop for one probe and for many: :func:`run_epochs` trains a :class:`ProbeSet` of K probes
(K heads stacked into one computation by :func:`~difffeat_tune.probe.train_heads`, or one head of
any kind) on the same rows, in the same order, with one optimizer step for all of them;
:func:`train_head` is its K = 1 case. Each probe's loss, schedule, stopping and divergence are
the loop's, so a probe trained in a stack and alone differ only in the order its matmuls sum.

Recipe (the paper's): Adam, lr 1e-3, cosine annealing over the epochs (stepped once per epoch,
``T_max = epochs``), batch 128, 40 epochs, mixed precision (bf16 autocast) on CUDA only.
Losses: BCE-with-logits for multi-label, averaged over the non-ignored entries (target -1 is
masked out); cross-entropy for single-label (one-hot targets, class = argmax). After every epoch
the validation split is scored (mAP for multi-label, top-1 for single-label; always in float32)
and ``on_epoch(epoch, score)`` is called with the 1-based epoch number; returning True stops.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Literal, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from difffeat_tune._defaults import DEFAULT_EPOCHS
from difffeat_tune._device import autocast_dtype, resolve_device
from difffeat_tune._errors import ConfigError, DiffFeatError
from difffeat_tune.data._base import IGNORE
from difffeat_tune.probe.metrics import (
    MapScorer,
    MultiLabelMetrics,
    ProbeInputError,
    SingleLabelMetrics,
    all_finite,
    batched_top1_accuracy,
    finite_slices,
    multilabel_metrics,
    singlelabel_class_indices,
    singlelabel_metrics,
)

logger = logging.getLogger(__name__)

Task = Literal["multilabel", "singlelabel"]
TASKS: tuple[str, ...] = ("multilabel", "singlelabel")
OPTIMIZERS: tuple[str, ...] = ("adam", "adamw", "sgd")
SCHEDULERS: tuple[str, ...] = ("cosine", "constant")
#: Rows per forward pass when scoring a split.
DEFAULT_EVAL_BATCH_SIZE = 8192

#: ``on_epoch(epoch, score) -> stop?`` of one probe.
OnEpoch = Callable[[int, float], bool]
#: ``on_epoch(k, epoch, score) -> stop?`` for probe k of several trained together.
BatchOnEpoch = Callable[[int, int, float], bool]
# Devices where torch's fused optimizer kernels exist (and are used).
_FUSED_OPTIMIZER_DEVICES = frozenset({"cpu", "cuda"})


class ProbeDivergedError(DiffFeatError):
    """Training produced non-finite logits or loss (usually a learning rate too high)."""


@dataclass(frozen=True)
class TrainRecipe:
    """Hyper-parameters of one probe training (defaults: the paper's recipe).

    Attributes:
        epochs: passes over the training split.
        batch_size: rows per optimisation step (the last batch of an epoch may be smaller).
        lr: initial learning rate.
        weight_decay: L2 (adam, sgd) or decoupled (adamw) weight decay.
        optimizer: "adam", "adamw" or "sgd".
        momentum: momentum of "sgd" (ignored otherwise).
        scheduler: "cosine" (annealed to 0 over ``epochs``, stepped per epoch) or "constant".
        seed: seed of the batch order (heads are initialised by :func:`build_head`'s own seed).
        amp: bf16 autocast for the training forward pass, only when the device is CUDA.
        eval_batch_size: rows per forward pass when scoring a split.
        cpu_threads: if set and training on CPU, ``torch.set_num_threads(cpu_threads)`` for the
            duration of the call (restored afterwards). Probe matmuls are small: on a shared CPU,
            1 thread per trial is often several times faster than torch's default (one per core),
            whose threads contend with other trials. Process-global: do not use it from several
            Python threads training at once. None leaves torch's setting alone.
    """

    epochs: int = DEFAULT_EPOCHS
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 0.0
    optimizer: str = "adam"
    momentum: float = 0.9
    scheduler: str = "cosine"
    seed: int = 0
    amp: bool = True
    eval_batch_size: int = DEFAULT_EVAL_BATCH_SIZE
    cpu_threads: int | None = None

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "eval_batch_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"TrainRecipe.{name} must be a positive integer, got {value!r}",
                                  field=f"TrainRecipe.{name}")
        if self.cpu_threads is not None and (
            not isinstance(self.cpu_threads, int) or isinstance(self.cpu_threads, bool) or self.cpu_threads < 1
        ):
            raise ConfigError(f"TrainRecipe.cpu_threads must be a positive integer or None, got {self.cpu_threads!r}",
                              field="TrainRecipe.cpu_threads")
        if not self.lr > 0:
            raise ConfigError(f"TrainRecipe.lr must be > 0, got {self.lr!r}", field="TrainRecipe.lr")
        if self.weight_decay < 0:
            raise ConfigError(f"TrainRecipe.weight_decay must be >= 0, got {self.weight_decay!r}",
                              field="TrainRecipe.weight_decay")
        if self.optimizer not in OPTIMIZERS:
            raise ConfigError(f"unknown optimizer {self.optimizer!r}", f"valid names: {', '.join(OPTIMIZERS)}")
        if self.scheduler not in SCHEDULERS:
            raise ConfigError(f"unknown scheduler {self.scheduler!r}", f"valid names: {', '.join(SCHEDULERS)}")


@dataclass(frozen=True)
class TrainResult:
    """Outcome of :func:`train_head`.

    Attributes:
        score: validation score after the last epoch run (mAP or top-1), in [0, 1].
        metrics: all validation metrics after the last epoch run.
        epochs_run: epochs completed (< recipe.epochs if stopped early).
        history: validation score after each epoch; ``history[-1] == score``.
        train_seconds: wall time of the optimisation steps (excluding validation).
        eval_seconds: wall time of the per-epoch validation.
        stopped_early: True if ``on_epoch`` asked to stop before the last epoch of the recipe.
        loss_history: mean training loss of each epoch.
        task: "multilabel" or "singlelabel".
    """

    score: float
    metrics: MultiLabelMetrics | SingleLabelMetrics
    epochs_run: int
    history: list[float]
    train_seconds: float
    eval_seconds: float = 0.0
    stopped_early: bool = False
    loss_history: list[float] = field(default_factory=list)
    task: str = "multilabel"

    def evaluate(
        self, head: nn.Module, inputs: Sequence[Tensor], targets: Tensor
    ) -> MultiLabelMetrics | SingleLabelMetrics:
        """Score another split with this result's task (see :func:`evaluate`)."""
        return evaluate(head, inputs, targets, self.task)


# --------------------------------------------------------------------------------------------
# checks


def _as_tuple(inputs: Tensor | Sequence[Tensor]) -> tuple[Tensor, ...]:
    return (inputs,) if isinstance(inputs, Tensor) else tuple(inputs)


def _check_task(task: str) -> None:
    if task not in TASKS:
        raise ConfigError(f"unknown task {task!r}", f"valid names: {', '.join(TASKS)}")


def _check_inputs(split: str, inputs: tuple[Tensor, ...], targets: Tensor, n_inputs: int | None) -> None:
    """Shapes, dtypes, finiteness and row counts of one split; errors name the input."""
    if n_inputs is not None and len(inputs) != n_inputs:
        raise ProbeInputError(f"{split}: the head takes {n_inputs} input tensor(s), got {len(inputs)}")
    if not inputs:
        raise ProbeInputError(f"{split}: no input tensors")
    if not isinstance(targets, Tensor):
        raise ProbeInputError(f"{split} targets must be a torch.Tensor, got {type(targets).__name__}")
    for i, x in enumerate(inputs):
        if not isinstance(x, Tensor):
            raise ProbeInputError(f"{split} input {i} must be a torch.Tensor, got {type(x).__name__}")
    shapes = [tuple(x.shape) for x in inputs]
    for i, x in enumerate(inputs):
        name = f"{split} input {i}"
        if x.ndim != 2 or not x.is_floating_point():
            raise ProbeInputError(f"{name} must be a floating [N, D] matrix, got {x.dtype} {tuple(x.shape)}")
        if x.shape[0] != targets.shape[0]:
            raise ProbeInputError(
                f"{split}: row counts differ: input shapes {shapes}, targets {tuple(targets.shape)}",
                "features and labels of a split must be aligned row by row",
            )
        if not all_finite(x):
            rows = torch.nonzero(~torch.isfinite(x).all(dim=1)).flatten()
            raise ProbeInputError(
                f"{name} (shape {tuple(x.shape)}) has NaN/Inf in {rows.numel()} row(s), first rows {rows[:5].tolist()}",
                "re-extract these features or drop the rows",
            )
    if targets.shape[0] == 0:
        raise ProbeInputError(f"{split} split is empty")


def _check_dims(train: tuple[Tensor, ...], val: tuple[Tensor, ...]) -> None:
    for i, (a, b) in enumerate(zip(train, val)):
        if a.shape[1] != b.shape[1]:
            raise ProbeInputError(f"input {i}: train width {a.shape[1]} != val width {b.shape[1]}")


def _prepare_targets(targets: Tensor, task: str, split: str) -> Tensor:
    """Validated targets: multi-label long [N, C] in {-1, 0, 1}; single-label class indices [N]."""
    if not isinstance(targets, Tensor):
        raise ProbeInputError(f"{split} targets must be a torch.Tensor, got {type(targets).__name__}")
    if task == "singlelabel":
        try:
            return singlelabel_class_indices(targets)
        except ProbeInputError as exc:
            raise ProbeInputError(f"{split} targets: {exc.message}", exc.hint) from exc
    if targets.ndim != 2:
        raise ProbeInputError(f"{split} multi-label targets must be [N, C], got shape {tuple(targets.shape)}")
    targets = targets.long()
    valid = (targets == 1) | (targets == 0) | (targets == IGNORE)
    if not bool(valid.all()):
        raise ProbeInputError(f"{split} multi-label targets must be in {{-1, 0, 1}}")
    return targets


def _check_output_width(
    head: nn.Module, inputs: tuple[Tensor, ...], raw_targets: Tensor, targets: Tensor, task: str
) -> None:
    """The head's number of outputs must match the label columns (or cover every class index)."""
    with torch.no_grad():
        width = head(*[x[:1].to(_head_dtype(head)) for x in inputs]).shape[-1]
    if raw_targets.ndim == 2 and width != raw_targets.shape[1]:
        raise ProbeInputError(f"the head outputs {width} classes, the targets have {raw_targets.shape[1]} columns")
    if task == "singlelabel" and int(targets.max()) >= width:
        raise ProbeInputError(f"the head outputs {width} classes, the targets use class {int(targets.max())}")


def _head_device(head: nn.Module) -> torch.device:
    param = next(head.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


def _head_dtype(head: nn.Module) -> torch.dtype:
    param = next(head.parameters(), None)
    return param.dtype if param is not None else torch.float32


# --------------------------------------------------------------------------------------------
# scoring


@torch.no_grad()
def predict_logits(
    head: nn.Module, inputs: Tensor | Sequence[Tensor], *, batch_size: int = DEFAULT_EVAL_BATCH_SIZE
) -> Tensor:
    """Float32 logits ``[N, C]`` of ``head`` on ``inputs``, in eval mode, on the head's device.

    Inputs are moved batch by batch to the head's device and cast to its dtype; no autocast
    (bf16 logits would create ties that change AP).
    """
    inputs = _as_tuple(inputs)
    device = _head_device(head)
    dtype = _head_dtype(head)
    was_training = head.training
    head.eval()
    try:
        n_rows = inputs[0].shape[0]
        chunks = []
        for start in range(0, n_rows, batch_size):
            batch = [x[start:start + batch_size].to(device=device, dtype=dtype) for x in inputs]
            chunks.append(head(*batch).float())
        return torch.cat(chunks) if chunks else torch.empty(0, 0, device=device)
    finally:
        head.train(was_training)


def _full_metrics(logits: Tensor, targets: Tensor, task: str) -> MultiLabelMetrics | SingleLabelMetrics:
    if task == "multilabel":
        return multilabel_metrics(logits, targets, from_logits=True)
    return singlelabel_metrics(logits, targets)


def _check_logits(logits: Tensor, where: str) -> None:
    if not all_finite(logits):
        raise ProbeDivergedError(f"non-finite logits {where}", "lower the learning rate")


def evaluate(
    head: nn.Module,
    inputs: Tensor | Sequence[Tensor],
    targets: Tensor,
    task: Task = "multilabel",
    *,
    batch_size: int = DEFAULT_EVAL_BATCH_SIZE,
) -> MultiLabelMetrics | SingleLabelMetrics:
    """Score a trained head on one split.

    Args:
        head: the head (any device; inputs follow it).
        inputs: one feature tensor, or (image, text) for a fusion head.
        targets: ``[N, C]`` targets (multi-label {-1, 0, 1}; single-label one-hot) or, for
            single-label, class indices ``[N]``.
        task: "multilabel" (all of :class:`MultiLabelMetrics`) or "singlelabel" (top-1, top-5).
        batch_size: rows per forward pass.

    Raises:
        ProbeInputError: malformed inputs or targets. ProbeDivergedError: non-finite logits.
    """
    _check_task(task)
    inputs = _as_tuple(inputs)
    _check_inputs("eval", inputs, targets, getattr(head, "n_inputs", None))
    prepared = _prepare_targets(targets, task, "eval").to(_head_device(head))
    logits = predict_logits(head, inputs, batch_size=batch_size)
    _check_logits(logits, "on the evaluated split")
    return _full_metrics(logits, prepared, task)


# --------------------------------------------------------------------------------------------
# what a training call trains on


@dataclass(frozen=True)
class TrainingData:
    """The validated heads, features and targets of one training call, on one device.

    Built by :meth:`prepare` for :func:`train_head` (one head) and
    :func:`~difffeat_tune.probe.train_heads` (several, sharing the rows and targets).

    Attributes:
        heads: the heads, moved to ``device`` (trained in place).
        train_x: per head, its training inputs on ``device``, in their stored floating dtype
            (float16 features stay float16: each step casts the rows it gathers).
        val_x: per head, its validation inputs, likewise.
        y_train: training targets (multi-label long ``[N, C]`` in {-1, 0, 1}; single-label class
            indices ``[N]``).
        y_val: validation targets, likewise.
        task: "multilabel" or "singlelabel".
        recipe: hyper-parameters of every probe.
        device: where training runs.
        map_scorer: the validation targets laid out once for the per-epoch mAP (multi-label), else None.
    """

    heads: tuple[nn.Module, ...]
    train_x: tuple[tuple[Tensor, ...], ...]
    val_x: tuple[tuple[Tensor, ...], ...]
    y_train: Tensor
    y_val: Tensor
    task: str
    recipe: TrainRecipe
    device: torch.device
    map_scorer: MapScorer | None

    @classmethod
    def prepare(
        cls,
        heads: Sequence[nn.Module],
        train_inputs: Sequence[Tensor | Sequence[Tensor]],
        train_targets: Tensor,
        val_inputs: Sequence[Tensor | Sequence[Tensor]],
        val_targets: Tensor,
        *,
        task: str,
        recipe: TrainRecipe | None,
        device: str | torch.device | None,
        name_probes: bool = True,
    ) -> TrainingData:
        """Check every head's inputs and the shared targets; move heads and inputs to the device.

        Args:
            heads: the heads; ``train_inputs[k]`` and ``val_inputs[k]`` are head k's features
                (one tensor, or (image, text)).
            train_targets: ``[N, C]`` labels (or ``[N]`` class indices for single-label).
            val_targets: validation labels, likewise.
            task: "multilabel" or "singlelabel".
            recipe: hyper-parameters; ``TrainRecipe()`` when None.
            device: where to train; None = the device of the first training input.
            name_probes: prefix an input error with ``probe k:`` (for calls with several heads).

        Raises:
            ConfigError: unknown task. ProbeInputError: malformed inputs or targets (see
            :func:`train_head`), or not one input of each split per head.
        """
        _check_task(task)
        if not len(heads) == len(train_inputs) == len(val_inputs):
            raise ProbeInputError(f"{len(heads)} heads, {len(train_inputs)} training inputs and "
                                  f"{len(val_inputs)} validation inputs: give one of each per head")
        if device is not None:
            dev = resolve_device(device)
        else:
            dev = _as_tuple(train_inputs[0])[0].device if heads else torch.device("cpu")
        y_train = _prepare_targets(train_targets, task, "train").to(dev)
        y_val = _prepare_targets(val_targets, task, "val").to(dev)
        if task == "multilabel" and y_train.shape[1] != y_val.shape[1]:
            raise ProbeInputError(f"train has {y_train.shape[1]} label columns, val has {y_val.shape[1]}")
        inputs = []
        for k, head in enumerate(heads):
            try:
                train_x, val_x = _prepare_inputs(head, train_inputs[k], val_inputs[k], train_targets, val_targets, dev)
                _check_output_width(head, train_x, train_targets, y_train, task)
                _check_output_width(head, val_x, val_targets, y_val, task)
            except ProbeInputError as exc:
                if not name_probes:
                    raise
                raise ProbeInputError(f"probe {k}: {exc.message}", exc.hint) from exc
            inputs.append((train_x, val_x))
        return cls(tuple(heads), tuple(x for x, _ in inputs), tuple(x for _, x in inputs), y_train, y_val, task,
                   recipe if recipe is not None else TrainRecipe(), dev,
                   MapScorer(y_val) if task == "multilabel" and heads else None)

    def scores(self, logits: Tensor) -> list[float]:
        """The selection score (mAP or top-1) of each probe's ``[K, N_val, C]`` finite validation logits."""
        if self.map_scorer is not None:
            return self.map_scorer(logits).tolist()
        return batched_top1_accuracy(logits, self.y_val).tolist()


def _prepare_inputs(
    head: nn.Module,
    train_inputs: Tensor | Sequence[Tensor],
    val_inputs: Tensor | Sequence[Tensor],
    train_targets: Tensor,
    val_targets: Tensor,
    dev: torch.device,
) -> tuple[tuple[Tensor, ...], tuple[Tensor, ...]]:
    """Validated train and val inputs of ``head`` on ``dev`` (the head moves there too).

    Inputs keep their floating dtype (features stay float16 when stored so): each step casts the
    rows it gathers to the head's dtype, which gives the same values as casting the whole tensor
    first, without a second, wider copy of every feature.
    """
    train_x = _as_tuple(train_inputs)
    val_x = _as_tuple(val_inputs)
    n_inputs = getattr(head, "n_inputs", None)
    _check_inputs("train", train_x, train_targets, n_inputs)
    _check_inputs("val", val_x, val_targets, n_inputs)
    if len(train_x) != len(val_x):
        raise ProbeInputError(f"train has {len(train_x)} input tensor(s), val has {len(val_x)}")
    _check_dims(train_x, val_x)
    if any(x.device != dev for x in (*train_x, *val_x)):
        logger.info("copying probe features to %s (pass tensors already there to avoid the copy)", dev)
    head.to(dev)
    return tuple(x.to(device=dev) for x in train_x), tuple(x.to(device=dev) for x in val_x)


@contextmanager
def cpu_threads(recipe: TrainRecipe, dev: torch.device) -> Iterator[None]:
    """Apply ``recipe.cpu_threads`` while training on the CPU; torch's setting is restored afterwards."""
    if recipe.cpu_threads is None or dev.type != "cpu":
        yield
        return
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(recipe.cpu_threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous_threads)


# --------------------------------------------------------------------------------------------
# the loop


class ProbeSet(Protocol):
    """K probes that :func:`run_epochs` trains as one computation, numbered 0..K-1 (slices).

    Attributes:
        dtype: dtype of the parameters (the loss targets are built in it).
    """

    dtype: torch.dtype

    def __len__(self) -> int:
        """K, the slices still training."""
        ...

    def parameters(self) -> Iterator[nn.Parameter]:
        """Every trainable tensor of the K probes (one optimizer steps them all)."""
        ...

    def train_mode(self) -> None:
        """Put the probes in training mode (once per epoch)."""
        ...

    def logits(self, batch_idx: Tensor) -> Tensor:
        """Training logits ``[K, B, C]`` of the training rows ``batch_idx``, every probe on its own features.

        A set of one returns ``[B, C]`` (its loss then needs no stacked reduction).
        """
        ...

    def val_logits(self) -> Tensor:
        """Float32 validation logits ``[K, N_val, C]``, in eval mode, without autocast or gradients."""
        ...

    def write_back(self, j: int) -> None:
        """Leave slice ``j``'s weights in its head, in eval mode (the slice is leaving the set)."""
        ...

    def keep(self, kept: list[int], optimizer: torch.optim.Optimizer) -> None:
        """Go on with only the slices ``kept`` (increasing, non-empty), renumbered from 0.

        ``optimizer``'s parameters and state must follow, its learning-rate schedule unchanged.
        """
        ...


@dataclass(frozen=True)
class _LossTargets:
    """Training targets in the form the loss reads them, built once per training.

    Multi-label: BCE-with-logits averaged over the non-ignored entries of the batch (target -1 is
    masked out); single-label: cross-entropy averaged over the batch's rows.

    Attributes:
        task: "multilabel" or "singlelabel".
        labels: multi-label float targets (ignored entries as 0), or single-label class indices.
        weight: multi-label 0/1 weight of every entry (0 = ignored), None when nothing is ignored.
    """

    task: str
    labels: Tensor
    weight: Tensor | None

    @classmethod
    def of(cls, y_train: Tensor, task: str, dtype: torch.dtype) -> _LossTargets:
        """From prepared targets (:func:`_prepare_targets`)."""
        if task != "multilabel":
            return cls(task, y_train, None)
        weight = (y_train != IGNORE).to(dtype)
        return cls(task, y_train.clamp(min=0).to(dtype), None if bool(weight.all()) else weight)

    def loss(self, logits: Tensor, batch_idx: Tensor) -> Tensor:
        """The batch's loss: a scalar for one probe's ``[B, C]`` logits, one per probe ``[K]`` for ``[K, B, C]``.

        One probe takes torch's reducing losses: a step of a small probe costs about as much as
        its few kernel launches, which the stacked form's extra reductions would add to.
        """
        stacked = logits.ndim == 3
        if self.task != "multilabel":
            labels = self.labels.index_select(0, batch_idx)
            if not stacked:
                return F.cross_entropy(logits, labels)
            per_row = F.cross_entropy(logits.flatten(0, 1), labels.repeat(logits.shape[0]), reduction="none")
            return per_row.view(logits.shape[:2]).mean(dim=1)
        target = self.labels.index_select(0, batch_idx).expand_as(logits)
        if self.weight is None:
            if not stacked:
                return F.binary_cross_entropy_with_logits(logits, target)
            return F.binary_cross_entropy_with_logits(logits, target, reduction="none").mean(dim=(1, 2))
        weight = self.weight.index_select(0, batch_idx)
        per_entry = F.binary_cross_entropy_with_logits(logits, target, reduction="none") * weight
        return (per_entry.sum(dim=(1, 2)) if stacked else per_entry.sum()) / weight.sum().clamp(min=1.0)


def _make_optimizer(parameters: Iterable[Tensor], recipe: TrainRecipe) -> torch.optim.Optimizer:
    """The recipe's optimizer over ``parameters``; the fused kernel (one call per step) on CPU and CUDA.

    For a probe of one or a few small layers the optimizer step costs as much as the forward
    and backward passes; the fused implementation is 2-3x cheaper than the default foreach one.
    Adam, AdamW and SGD update element by element, so stacked probes each get the update they
    would get alone.
    """
    params = [p for p in parameters if p.requires_grad]
    device_types = {p.device.type for p in params}
    fused = True if params and device_types <= _FUSED_OPTIMIZER_DEVICES else None
    if recipe.optimizer == "adam":
        return torch.optim.Adam(params, lr=recipe.lr, weight_decay=recipe.weight_decay, fused=fused)
    if recipe.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=recipe.lr, weight_decay=recipe.weight_decay, fused=fused)
    return torch.optim.SGD(
        params, lr=recipe.lr, weight_decay=recipe.weight_decay, momentum=recipe.momentum, fused=fused
    )


def _make_scheduler(
    optimizer: torch.optim.Optimizer, recipe: TrainRecipe
) -> torch.optim.lr_scheduler.LRScheduler | None:
    if recipe.scheduler == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=recipe.epochs)
    return None


@dataclass
class _Track:
    """Per-probe bookkeeping of a run."""

    history: list[float] = field(default_factory=list)
    loss_history: list[float] = field(default_factory=list)
    train_seconds: float = 0.0
    eval_seconds: float = 0.0


def run_epochs(probes: ProbeSet, data: TrainingData,
               on_epoch: BatchOnEpoch | None) -> list[TrainResult | ProbeDivergedError]:
    """Train the K probes of ``probes`` with ``data``'s targets and recipe; entry j is slice j's outcome.

    Every epoch draws one permutation of the training rows (a generator seeded with
    ``recipe.seed``), so every probe sees the batches it would see alone; per batch the loss is
    the sum of the probes' losses (they share no parameter: each gradient is its own loss's), and
    one optimizer steps them all; the schedule is stepped per epoch. After every epoch all are
    scored on validation and ``on_epoch(j, epoch, score)`` is called for every slice still
    training, in order of j; True stops slice j: its weights are written back, its result ends at
    this epoch, and the others go on (:meth:`ProbeSet.keep`). A slice whose loss or validation
    logits become non-finite leaves the same way; its entry is the :class:`ProbeDivergedError`.
    """
    recipe, dev = data.recipe, data.device
    targets = _LossTargets.of(data.y_train, data.task, probes.dtype)
    amp_dtype = autocast_dtype(dev) if recipe.amp else None
    optimizer = _make_optimizer(probes.parameters(), recipe)
    scheduler = _make_scheduler(optimizer, recipe)
    generator = torch.Generator(device=dev)
    generator.manual_seed(recipe.seed)
    n_rows = data.y_train.shape[0]
    tracks = [_Track() for _ in range(len(probes))]
    outcome: list[TrainResult | ProbeDivergedError | None] = [None] * len(tracks)
    active = list(range(len(tracks)))  # the position (in ``tracks``) of every slice still training
    for epoch in range(1, recipe.epochs + 1):
        start = time.perf_counter()
        probes.train_mode()
        order = torch.randperm(n_rows, generator=generator, device=dev)
        loss_sum = torch.zeros(len(active), device=dev)
        n_batches = 0
        for batch_idx in order.split(recipe.batch_size):
            with torch.autocast(device_type=dev.type, dtype=amp_dtype) if amp_dtype is not None else nullcontext():
                logits = probes.logits(batch_idx)
            losses = targets.loss(logits.float(), batch_idx)
            optimizer.zero_grad(set_to_none=True)
            (losses.sum() if losses.ndim else losses).backward()
            optimizer.step()
            loss_sum += losses.detach()
            n_batches += 1
        if scheduler is not None:
            scheduler.step()
        epoch_losses = [value / n_batches for value in loss_sum.tolist()]
        _charge([tracks[k] for k in active], "train_seconds", time.perf_counter() - start)

        start = time.perf_counter()
        failed: dict[int, ProbeDivergedError] = {}  # slices that leave with an error after this epoch
        for j, loss in enumerate(epoch_losses):
            if not math.isfinite(loss):
                failed[j] = ProbeDivergedError(f"training loss became non-finite at epoch {epoch}",
                                               "lower the learning rate")
            else:
                tracks[active[j]].loss_history.append(loss)
        logits_val = probes.val_logits()
        for j, finite in enumerate(finite_slices(logits_val).tolist()):
            if not finite and j not in failed:
                failed[j] = ProbeDivergedError(f"non-finite logits on validation at epoch {epoch}",
                                               "lower the learning rate")
        healthy = [j for j in range(len(active)) if j not in failed]
        scores = data.scores(logits_val if not failed else logits_val[healthy]) if healthy else []
        _charge([tracks[active[j]] for j in healthy], "eval_seconds", time.perf_counter() - start)
        leaving: list[int] = []  # slices that finished after this epoch
        for j, score in zip(healthy, scores):
            k = active[j]
            tracks[k].history.append(score)
            logger.debug("probe %d epoch %d/%d loss %.5f val %.4f", k, epoch, recipe.epochs, epoch_losses[j], score)
            stop = on_epoch is not None and bool(on_epoch(k, epoch, score))
            if stop or epoch == recipe.epochs:
                leaving.append(j)
                probes.write_back(j)
                outcome[k] = _result(tracks[k], logits_val[j], data, stopped_early=stop and epoch < recipe.epochs)
        for j, error in failed.items():
            outcome[active[j]] = error
            probes.write_back(j)
        if failed or leaving:
            kept = [j for j in range(len(active)) if j not in failed and j not in leaving]
            active = [active[j] for j in kept]
            if not active:
                break
            probes.keep(kept, optimizer)
    assert all(r is not None for r in outcome)  # the last epoch ends every slice still training
    return outcome  # type: ignore[return-value]


def _charge(tracks: list[_Track], what: str, seconds: float) -> None:
    """Split a batch's wall time evenly among the probes it served."""
    for track in tracks:
        setattr(track, what, getattr(track, what) + seconds / len(tracks))


def _result(track: _Track, logits_val: Tensor, data: TrainingData, *, stopped_early: bool) -> TrainResult:
    return TrainResult(
        score=track.history[-1], metrics=_full_metrics(logits_val, data.y_val, data.task),
        epochs_run=len(track.history), history=list(track.history), train_seconds=track.train_seconds,
        eval_seconds=track.eval_seconds, stopped_early=stopped_early, loss_history=list(track.loss_history),
        task=data.task)


# --------------------------------------------------------------------------------------------
# one probe


class _OneHead:
    """Head ``k`` of a :class:`TrainingData` as a :class:`ProbeSet` of one: any head kind, its own forward."""

    def __init__(self, data: TrainingData, k: int) -> None:
        self.head = data.heads[k]
        self.train_x = data.train_x[k]
        self.val_x = data.val_x[k]
        self.eval_batch_size = data.recipe.eval_batch_size
        self.dtype = _head_dtype(self.head)

    def __len__(self) -> int:
        return 1

    def parameters(self) -> Iterator[nn.Parameter]:
        return self.head.parameters()

    def train_mode(self) -> None:
        self.head.train()

    def logits(self, batch_idx: Tensor) -> Tensor:
        return self.head(*[x.index_select(0, batch_idx).to(self.dtype) for x in self.train_x])

    def val_logits(self) -> Tensor:
        return predict_logits(self.head, self.val_x, batch_size=self.eval_batch_size).unsqueeze(0)

    def write_back(self, j: int) -> None:
        self.head.eval()  # the weights are the head's own

    def keep(self, kept: list[int], optimizer: torch.optim.Optimizer) -> None:
        """Nothing to re-stack: the only slice leaves when its training ends."""


def train_alone(data: TrainingData, k: int, on_epoch: BatchOnEpoch | None) -> TrainResult | ProbeDivergedError:
    """Train head ``k`` of ``data`` by itself (any head kind): :func:`run_epochs` with K = 1.

    ``on_epoch(k, epoch, score)`` is called with ``k``; a diverged probe's error is returned, not raised.
    """
    report = None if on_epoch is None else (lambda j, epoch, score: on_epoch(k, epoch, score))
    return run_epochs(_OneHead(data, k), data, report)[0]


def train_head(
    head: nn.Module,
    train_inputs: Tensor | Sequence[Tensor],
    train_targets: Tensor,
    val_inputs: Tensor | Sequence[Tensor],
    val_targets: Tensor,
    *,
    task: Task = "multilabel",
    recipe: TrainRecipe | None = None,
    device: str | torch.device | None = None,
    on_epoch: OnEpoch | None = None,
) -> TrainResult:
    """Train ``head`` in place on precomputed features and score it on validation every epoch.

    Args:
        head: an ``nn.Module`` called as ``head(*inputs)`` (see :mod:`difffeat_tune.probe.heads`);
            it is moved to ``device`` and trained in place.
        train_inputs: one feature tensor ``[N, D]`` (unimodal) or (image ``[N, Di]``, text
            ``[N, Dt]``), ideally already on ``device`` (otherwise copied there once).
        train_targets: ``[N, C]`` label matrix: {-1, 0, 1} for multi-label (-1 is masked out of
            the loss), one-hot for single-label (class = argmax; ``[N]`` class indices also work).
        val_inputs: validation features, same layout as ``train_inputs``.
        val_targets: validation labels, same layout as ``train_targets``.
        task: "multilabel" (BCE, score = mAP) or "singlelabel" (cross-entropy, score = top-1).
        recipe: hyper-parameters; ``TrainRecipe()`` (the paper's) when None.
        device: where to train; None = the device of the first training input.
        on_epoch: called after each epoch as ``on_epoch(epoch, score)`` with the 1-based epoch
            number and the validation score; returning True stops training (pruning).

    Returns:
        :class:`TrainResult` (score and metrics of the last epoch run, per-epoch history).

    Raises:
        ConfigError: unknown task or bad recipe.
        ProbeInputError: NaN/Inf features (the message names the input), mismatched row counts
            or widths (the message gives the shapes), malformed targets, no positive in val.
        ProbeDivergedError: the loss or the validation logits became non-finite.

    Example:
        >>> head = build_head("linear", in_dim=64, n_classes=14, seed=0)        # doctest: +SKIP
        >>> train_head(head, x_train, y_train, x_val, y_val).score             # doctest: +SKIP
    """
    data = TrainingData.prepare([head], [train_inputs], train_targets, [val_inputs], val_targets, task=task,
                                recipe=recipe, device=device, name_probes=False)
    with cpu_threads(data.recipe, data.device):
        outcome = train_alone(data, 0, None if on_epoch is None else (lambda k, epoch, score: on_epoch(epoch, score)))
    if isinstance(outcome, ProbeDivergedError):
        raise outcome
    return outcome
