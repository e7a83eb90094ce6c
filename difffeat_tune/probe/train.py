"""The fast probe training loop: feature tensors on the device, index batches, no DataLoader.

Probe training is the inner loop of the search (65 trainings per data set in Algorithm 1, 600 per
fusion method in the full grid), and a linear layer costs almost nothing per step: with a
``DataLoader`` over a ``TensorDataset`` most of the time goes to per-sample indexing and collation.
Here every epoch draws one seeded permutation of row indices on the device (``torch.randperm``
with a ``torch.Generator``), each batch is one ``index_select`` per input tensor, the optimizer
step is torch's fused kernel, and the per-epoch validation is one forward pass plus a vectorised
mAP. The head is left in eval mode.

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
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Literal

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
    multilabel_metrics,
    singlelabel_class_indices,
    singlelabel_metrics,
    top_k_accuracy,
)

logger = logging.getLogger(__name__)

Task = Literal["multilabel", "singlelabel"]
TASKS: tuple[str, ...] = ("multilabel", "singlelabel")
OPTIMIZERS: tuple[str, ...] = ("adam", "adamw", "sgd")
SCHEDULERS: tuple[str, ...] = ("cosine", "constant")
#: Rows per forward pass when scoring a split.
DEFAULT_EVAL_BATCH_SIZE = 8192

OnEpoch = Callable[[int, float], bool]
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


def _epoch_scorer(targets: Tensor, task: str) -> Callable[[Tensor], float]:
    """The per-epoch selection score (mAP or top-1) of ``[N, C]`` logits against fixed targets.

    For mAP the targets are checked and laid out once (:class:`MapScorer`), not every epoch.
    """
    if task == "multilabel":
        scorer = MapScorer(targets)
        return lambda logits: float(scorer(logits.unsqueeze(0))[0])
    return lambda logits: top_k_accuracy(logits, targets, 1)


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
# training


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
        """The batch's loss: a scalar for ``[B, C]`` logits, one per probe ``[K]`` for ``[K, B, C]``."""
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
    """
    _check_task(task)
    recipe = recipe if recipe is not None else TrainRecipe()
    dev = resolve_device(device) if device is not None else _as_tuple(train_inputs)[0].device
    train_x, val_x = _prepare_inputs(head, train_inputs, val_inputs, train_targets, val_targets, dev)
    y_train, y_val = _prepare_split_targets(train_targets, val_targets, task, dev)
    _check_output_width(head, train_x, train_targets, y_train, task)
    _check_output_width(head, val_x, val_targets, y_val, task)
    with cpu_threads(recipe, dev):
        return _train_loop(head, train_x, y_train, val_x, y_val, task, recipe, dev, on_epoch)


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


def _prepare_split_targets(train_targets: Tensor, val_targets: Tensor, task: str,
                           dev: torch.device) -> tuple[Tensor, Tensor]:
    """Validated train and val targets on ``dev`` (see :func:`_prepare_targets`)."""
    y_train = _prepare_targets(train_targets, task, "train").to(dev)
    y_val = _prepare_targets(val_targets, task, "val").to(dev)
    if task == "multilabel" and y_train.shape[1] != y_val.shape[1]:
        raise ProbeInputError(f"train has {y_train.shape[1]} label columns, val has {y_val.shape[1]}")
    return y_train, y_val


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


def _train_loop(
    head: nn.Module,
    train_x: tuple[Tensor, ...],
    y_train: Tensor,
    val_x: tuple[Tensor, ...],
    y_val: Tensor,
    task: str,
    recipe: TrainRecipe,
    dev: torch.device,
    on_epoch: OnEpoch | None,
) -> TrainResult:
    """The epochs of :func:`train_head` on validated inputs already on ``dev``."""
    targets = _LossTargets.of(y_train, task, _head_dtype(head))
    n_rows = y_train.shape[0]

    amp_dtype = autocast_dtype(dev) if recipe.amp else None
    optimizer = _make_optimizer(head.parameters(), recipe)
    scheduler = _make_scheduler(optimizer, recipe)
    generator = torch.Generator(device=dev)
    generator.manual_seed(recipe.seed)
    score_of = _epoch_scorer(y_val, task)

    dtype = _head_dtype(head)

    def loss_of(batch_idx: Tensor) -> Tensor:
        batch = [x.index_select(0, batch_idx).to(dtype) for x in train_x]
        if amp_dtype is not None:
            with torch.autocast(device_type=dev.type, dtype=amp_dtype):
                logits = head(*batch)
        else:
            logits = head(*batch)
        return targets.loss(logits.float(), batch_idx)

    history: list[float] = []
    loss_history: list[float] = []
    train_seconds = 0.0
    eval_seconds = 0.0
    stopped_early = False
    logits_val: Tensor | None = None
    for epoch in range(1, recipe.epochs + 1):
        start = time.perf_counter()
        head.train()
        order = torch.randperm(n_rows, generator=generator, device=dev)
        loss_sum = torch.zeros((), device=dev)
        n_batches = 0
        for batch_idx in order.split(recipe.batch_size):
            loss = loss_of(batch_idx)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss_sum += loss.detach()
            n_batches += 1
        if scheduler is not None:
            scheduler.step()
        epoch_loss = float(loss_sum) / n_batches
        train_seconds += time.perf_counter() - start
        if not math.isfinite(epoch_loss):
            raise ProbeDivergedError(f"training loss became non-finite at epoch {epoch}", "lower the learning rate")
        loss_history.append(epoch_loss)

        start = time.perf_counter()
        logits_val = predict_logits(head, val_x, batch_size=recipe.eval_batch_size)
        _check_logits(logits_val, f"on validation at epoch {epoch}")
        score = score_of(logits_val)
        eval_seconds += time.perf_counter() - start
        history.append(score)
        logger.debug("epoch %d/%d loss %.5f val %.4f", epoch, recipe.epochs, epoch_loss, score)
        if on_epoch is not None and on_epoch(epoch, score):
            stopped_early = epoch < recipe.epochs
            break

    assert logits_val is not None  # epochs >= 1
    metrics = _full_metrics(logits_val, y_val, task)
    head.eval()
    return TrainResult(
        score=history[-1],
        metrics=metrics,
        epochs_run=len(history),
        history=history,
        train_seconds=train_seconds,
        eval_seconds=eval_seconds,
        stopped_early=stopped_early,
        loss_history=loss_history,
        task=task,
    )
