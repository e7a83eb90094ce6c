"""Many probes trained as one computation: stacked weights, batched matmuls, one optimizer step.

:func:`train_heads` trains K heads, each on its own features, as :func:`train_head` would train
each alone, but with one forward, one backward and one optimizer step per batch of rows for all
of them. A linear probe is a tiny computation: trained alone, the Python and kernel-launch
overhead of each step costs more than its arithmetic (on a GPU it fills a sliver of the device).

How a batch works:

* **Grouping.** Heads batch when they have the same class (:data:`BATCHABLE_HEADS`), the same
  parameter shapes and the same input widths; probes of different widths are *grouped*, not
  padded (no wasted arithmetic). Each group is cut into batches that fit in memory
  (:mod:`difffeat_tune.probe._memory`); groups and batches run one after another. Other heads
  (``cross_attention``) and groups of one train alone through :func:`train_head`.
* **Stacking.** Each input is stacked row-major into ``[N, K, D]`` (a step gathers one
  contiguous block per row for all probes). The batch is a copy of the first head
  in which every ``nn.Linear`` is replaced by the K heads' layers stacked (weights
  ``[K, out, in]``, one batched matmul); the head's own ``forward`` then runs unchanged on
  ``[K, B, D]`` tensors (its other operations act on the last dimension), so there is no second
  implementation of the heads. ``torch.func.vmap`` over ``F.linear`` would do the same, but its
  backward computes the weight gradient as ``x^T G``, a layout 4x slower on the CPU than
  ``G^T x`` (forward and backward of 30 probes at 1152-d, batch 128: 24.6 ms against 5.6 ms).
* **Same rows, same order.** One generator seeded with ``recipe.seed`` draws each epoch's
  permutation, exactly as :func:`train_head` does, so every probe sees its batches in the order
  it would alone.
* **Loss and step.** The loss is the sum over probes of each probe's loss (BCE with the ignore
  mask, or cross-entropy, averaged as :func:`train_head` averages it); since the probes share no
  parameter, each one's gradient is its own loss's gradient. One optimizer (the recipe's, fused)
  steps all stacked tensors: Adam, AdamW and SGD update element by element, so each probe's
  update is the one it would get alone. The cosine schedule is stepped per epoch.
* **Validation.** All K are scored at once after every epoch (one batched forward per row chunk,
  :class:`~difffeat_tune.probe.metrics.MapScorer` ranks probes x classes in blocks of one sort).
* **Stopping.** ``on_epoch(k, epoch, score)`` is called for every probe still training, in
  order of k; True stops probe k: its weights are written back to its head, its result ends at
  this epoch, and the others are re-stacked (parameters and optimizer state sliced) and go on.
  A probe whose loss or validation logits become non-finite leaves the batch the same way; its
  entry in the result list is the :class:`~difffeat_tune.probe.train.ProbeDivergedError` that
  training it alone would raise.

With the same seeds each probe's weights and metrics equal its training alone up to float
rounding (batched and single matmuls sum in different orders).
"""

from __future__ import annotations

import copy
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from difffeat_tune._device import autocast_dtype, resolve_device
from difffeat_tune.probe._memory import check_probe_count, max_batch_probes, probe_footprint, split_batches
from difffeat_tune.probe.heads import HEAD_KINDS, head_class
from difffeat_tune.probe.metrics import (
    MapScorer,
    ProbeInputError,
    batched_top1_accuracy,
    finite_slices,
)
from difffeat_tune.probe.train import (
    ProbeDivergedError,
    Task,
    TrainRecipe,
    TrainResult,
    _as_tuple,
    _check_output_width,
    _check_task,
    _full_metrics,
    _head_dtype,
    _LossTargets,
    _make_optimizer,
    _make_scheduler,
    _prepare_inputs,
    _prepare_split_targets,
    cpu_threads,
    train_head,
)

logger = logging.getLogger(__name__)

#: ``on_epoch(k, epoch, score) -> stop?`` for probe k (its index in the list given to :func:`train_heads`).
BatchOnEpoch = Callable[[int, int, float], bool]
#: Head classes trained as one stacked computation (their ``batchable``); any other head trains alone.
BATCHABLE_HEADS: tuple[type[nn.Module], ...] = tuple(
    cls for cls in map(head_class, HEAD_KINDS) if cls.batchable)


def train_heads(
    heads: Sequence[nn.Module],
    train_inputs: Sequence[Tensor | Sequence[Tensor]],
    train_targets: Tensor,
    val_inputs: Sequence[Tensor | Sequence[Tensor]],
    val_targets: Tensor,
    *,
    task: Task = "multilabel",
    recipe: TrainRecipe | None = None,
    device: str | torch.device | None = None,
    on_epoch: BatchOnEpoch | None = None,
    max_probes: int | None = None,
    memory_budget: int | None = None,
) -> list[TrainResult | ProbeDivergedError]:
    """Train several heads in place, each on its own features, as stacked computations.

    Every probe uses the same rows, targets and recipe; probe k's result equals
    ``train_head(heads[k], train_inputs[k], train_targets, val_inputs[k], val_targets, ...)``
    up to float rounding (see the module docstring for how the batch is built).

    Args:
        heads: heads from :func:`~difffeat_tune.probe.heads.build_head` (their current weights
            are the starting point); moved to ``device`` and trained in place.
        train_inputs: per head, one feature tensor ``[N, D]`` or (image, text).
        train_targets: ``[N, C]`` labels shared by all heads (as for :func:`train_head`).
        val_inputs: per head, its validation features.
        val_targets: validation labels shared by all heads.
        task: "multilabel" or "singlelabel".
        recipe: hyper-parameters of every probe; ``TrainRecipe()`` when None.
        device: where to train; None = the device of the first training input.
        on_epoch: ``on_epoch(k, epoch, score)`` after each epoch of probe k; True stops probe k.
        max_probes: probes per batch; None = as many as fit in memory (at most
            :data:`~difffeat_tune.probe._memory.DEFAULT_MAX_BATCH_PROBES`); a K that does not fit
            is reduced with a warning.
        memory_budget: bytes to plan the batches against instead of the device's free memory.

    Returns:
        One entry per head, in order: its :class:`TrainResult`, or the
        :class:`ProbeDivergedError` it ran into (the other probes are not affected).

    Raises:
        ConfigError: unknown task, bad recipe or ``max_probes``.
        ProbeInputError: malformed inputs or targets (checked for every probe before training).

    Example:
        >>> heads = [build_head("linear", in_dim=64, n_classes=14, seed=0) for _ in features]  # doctest: +SKIP
        >>> results = train_heads(heads, features, y_train, val_features, y_val)               # doctest: +SKIP
    """
    _check_task(task)
    check_probe_count("max_probes", max_probes)
    recipe = recipe if recipe is not None else TrainRecipe()
    if not len(heads) == len(train_inputs) == len(val_inputs):
        raise ProbeInputError(f"{len(heads)} heads, {len(train_inputs)} training inputs and "
                              f"{len(val_inputs)} validation inputs: give one of each per head")
    if not heads:
        return []
    dev = resolve_device(device) if device is not None else _as_tuple(train_inputs[0])[0].device
    y_train, y_val = _prepare_split_targets(train_targets, val_targets, task, dev)
    train_x, val_x = [], []
    for k, head in enumerate(heads):
        try:
            tx, vx = _prepare_inputs(head, train_inputs[k], val_inputs[k], train_targets, val_targets, dev)
            _check_output_width(head, tx, train_targets, y_train, task)
            _check_output_width(head, vx, val_targets, y_val, task)
        except ProbeInputError as exc:
            raise ProbeInputError(f"probe {k}: {exc.message}", exc.hint) from exc
        train_x.append(tx)
        val_x.append(vx)

    data = _Data(y_train, y_val, task, recipe, dev, MapScorer(y_val) if task == "multilabel" else None)
    results: list[TrainResult | ProbeDivergedError | None] = [None] * len(heads)
    with cpu_threads(recipe, dev):
        for members in _groups(heads, train_x):
            if len(members) == 1 or not isinstance(heads[members[0]], BATCHABLE_HEADS):
                for k in members:
                    results[k] = _train_alone(k, heads[k], train_x[k], val_x[k], data, on_epoch)
                continue
            footprint = probe_footprint(
                heads[members[0]], [x.shape[1] for x in train_x[members[0]]],
                n_train=y_train.shape[0], n_val=y_val.shape[0], batch_size=recipe.batch_size,
                eval_batch_size=recipe.eval_batch_size, input_element=train_x[members[0]][0].element_size())
            per_batch = max_batch_probes(footprint, device=dev, requested=max_probes, budget=memory_budget)
            for part in split_batches(len(members), per_batch):
                batch = [members[i] for i in part]
                _train_or_split(batch, heads, train_x, val_x, data, on_epoch, results)
    assert all(r is not None for r in results)  # every group and batch above filled its entries
    return results  # type: ignore[return-value]


# --------------------------------------------------------------------------------------------
# grouping and fallbacks


def _groups(heads: Sequence[nn.Module], train_x: Sequence[tuple[Tensor, ...]]) -> list[list[int]]:
    """Indices of heads that can share a batch, in order of first appearance."""
    groups: dict[object, list[int]] = {}
    for k, head in enumerate(heads):
        if isinstance(head, BATCHABLE_HEADS):
            key: object = (type(head), tuple((n, tuple(p.shape), p.dtype) for n, p in head.named_parameters()),
                           tuple(x.shape[1] for x in train_x[k]))
        else:
            key = ("alone", k)
        groups.setdefault(key, []).append(k)
    return list(groups.values())


@dataclass(frozen=True)
class _Data:
    """What every probe of a call shares: targets, task, recipe, device."""

    y_train: Tensor
    y_val: Tensor
    task: str
    recipe: TrainRecipe
    device: torch.device
    map_scorer: MapScorer | None  # multi-label validation targets, checked and laid out once


def _train_alone(k: int, head: nn.Module, train_x: tuple[Tensor, ...], val_x: tuple[Tensor, ...], data: _Data,
                 on_epoch: BatchOnEpoch | None) -> TrainResult | ProbeDivergedError:
    report = None if on_epoch is None else (lambda epoch, score: on_epoch(k, epoch, score))
    try:
        return train_head(head, train_x, data.y_train, val_x, data.y_val, task=data.task,  # type: ignore[arg-type]
                          recipe=data.recipe, device=data.device, on_epoch=report)
    except ProbeDivergedError as exc:
        return exc


def _train_or_split(batch: list[int], heads: Sequence[nn.Module], train_x: Sequence[tuple[Tensor, ...]],
                    val_x: Sequence[tuple[Tensor, ...]], data: _Data, on_epoch: BatchOnEpoch | None,
                    results: list[TrainResult | ProbeDivergedError | None]) -> None:
    """Train one batch; if the device runs out of memory before any epoch was reported, halve it.

    The memory plan should prevent this; the fallback covers estimates that were too low (e.g. a
    fragmented CUDA cache). After an epoch was reported the error propagates: re-running would
    report epochs twice.
    """
    run = _StackedRun([heads[k] for k in batch], [train_x[k] for k in batch], [val_x[k] for k in batch], data,
                      None if on_epoch is None else (lambda j, epoch, score: on_epoch(batch[j], epoch, score)))
    try:
        outcome = run.train()
    except torch.OutOfMemoryError:
        if run.reported or len(batch) == 1:
            raise
        del run
        if data.device.type == "cuda":
            torch.cuda.empty_cache()
        half = len(batch) // 2
        logger.warning("out of memory with %d probes in a batch: retrying as %d + %d", len(batch), half,
                       len(batch) - half)
        for part in (batch[:half], batch[half:]):
            _train_or_split(part, heads, train_x, val_x, data, on_epoch, results)
        return
    for j, k in enumerate(batch):
        results[k] = outcome[j]


# --------------------------------------------------------------------------------------------
# one stacked batch


@dataclass
class _Track:
    """Per-probe bookkeeping of a batch."""

    history: list[float] = field(default_factory=list)
    loss_history: list[float] = field(default_factory=list)
    train_seconds: float = 0.0
    eval_seconds: float = 0.0


class _StackedRun:
    """K heads of one structure trained as one computation (see the module docstring)."""

    def __init__(self, heads: list[nn.Module], train_x: list[tuple[Tensor, ...]], val_x: list[tuple[Tensor, ...]],
                 data: _Data, on_epoch: BatchOnEpoch | None) -> None:
        self.heads = heads
        self.data = data
        self.on_epoch = on_epoch
        self.reported = False
        self.stacked = _stack_heads(heads)
        self.dtype = _head_dtype(self.stacked)
        n_inputs = len(train_x[0])
        # inputs stacked row-major, [N, K, D_i]: a row of all probes is one contiguous block, so a
        # step's gather copies batch-size blocks (faster than K x batch-size rows of [K, N, D])
        self.train_x = [torch.stack([x[i] for x in train_x], dim=1) for i in range(n_inputs)]
        self.val_x = [torch.stack([x[i] for x in val_x], dim=1) for i in range(n_inputs)]
        # one buffer per input for the gathered rows of a step: reusing it spares an allocation of
        # batch x K x D floats per step (page faults and zeroing for large K x D on the CPU)
        rows = min(data.recipe.batch_size, data.y_train.shape[0])
        self.gathered = [x.new_empty(rows * x.shape[1] * x.shape[2]) for x in self.train_x]
        self.active = list(range(len(heads)))  # positions (in ``heads``) of the stacked slices
        self.tracks = [_Track() for _ in heads]
        self.outcome: list[TrainResult | ProbeDivergedError | None] = [None] * len(heads)

    # -- steps ---------------------------------------------------------------------------------

    def _gather(self, batch_idx: Tensor) -> list[Tensor]:
        """The batch's rows of every input, as ``[K, batch, D_i]`` views for the stacked head."""
        out = []
        for x, buffer in zip(self.train_x, self.gathered):
            view = buffer[: batch_idx.numel() * x.shape[1] * x.shape[2]].view(batch_idx.numel(), *x.shape[1:])
            # the stored dtype (float16) is widened per step: no float32 copy of the stacked features
            out.append(torch.index_select(x, 0, batch_idx, out=view).to(self.dtype).transpose(0, 1))
        return out

    @torch.no_grad()
    def _val_logits(self) -> Tensor:
        """Float32 validation logits ``[K, N_val, C]`` of the active probes, in row chunks."""
        self.stacked.eval()
        n_rows, n_probes = self.val_x[0].shape[:2]
        # rows per chunk so that a chunk of the whole batch is as large as one eval batch alone
        rows = max(1, self.data.recipe.eval_batch_size // n_probes)
        chunks = [self.stacked(*[x[start:start + rows].to(self.dtype).transpose(0, 1) for x in self.val_x]).float()
                  for start in range(0, n_rows, rows)]
        return torch.cat(chunks, dim=1)

    def _scores(self, logits: Tensor) -> list[float]:
        if self.data.map_scorer is not None:
            return self.data.map_scorer(logits).tolist()
        return batched_top1_accuracy(logits, self.data.y_val).tolist()

    # -- the epochs ----------------------------------------------------------------------------

    def train(self) -> list[TrainResult | ProbeDivergedError]:
        data, recipe, dev = self.data, self.data.recipe, self.data.device
        targets = _LossTargets.of(data.y_train, data.task, _head_dtype(self.stacked))
        amp_dtype = autocast_dtype(dev) if recipe.amp else None
        optimizer = _make_optimizer(self.stacked.parameters(), recipe)
        scheduler = _make_scheduler(optimizer, recipe)
        generator = torch.Generator(device=dev)
        generator.manual_seed(recipe.seed)
        n_rows = data.y_train.shape[0]
        for epoch in range(1, recipe.epochs + 1):
            start = time.perf_counter()
            self.stacked.train()
            order = torch.randperm(n_rows, generator=generator, device=dev)
            loss_sum = torch.zeros(len(self.active), device=dev)
            n_batches = 0
            for batch_idx in order.split(recipe.batch_size):
                batch = self._gather(batch_idx)
                if amp_dtype is not None:
                    with torch.autocast(device_type=dev.type, dtype=amp_dtype):
                        logits = self.stacked(*batch)
                else:
                    logits = self.stacked(*batch)
                losses = targets.loss(logits.float(), batch_idx)
                optimizer.zero_grad(set_to_none=True)
                losses.sum().backward()
                optimizer.step()
                loss_sum += losses.detach()
                n_batches += 1
            if scheduler is not None:
                scheduler.step()
            epoch_losses = [value / n_batches for value in loss_sum.tolist()]  # as train_head divides
            self._charge("train_seconds", time.perf_counter() - start)

            start = time.perf_counter()
            leaving: list[int] = []  # stacked slices that leave the batch after this epoch
            failed: dict[int, ProbeDivergedError] = {}
            for j, loss in enumerate(epoch_losses):
                if not math.isfinite(loss):
                    failed[j] = ProbeDivergedError(f"training loss became non-finite at epoch {epoch}",
                                                   "lower the learning rate")
                else:
                    self.tracks[self.active[j]].loss_history.append(loss)
            logits_val = self._val_logits()
            finite = finite_slices(logits_val).tolist()
            for j, ok in enumerate(finite):
                if not ok and j not in failed:
                    failed[j] = ProbeDivergedError(f"non-finite logits on validation at epoch {epoch}",
                                                   "lower the learning rate")
            healthy = [j for j in range(len(self.active)) if j not in failed]
            scores = self._scores(logits_val[healthy]) if healthy else []
            self._charge("eval_seconds", time.perf_counter() - start, among=healthy)
            for j, score in zip(healthy, scores):
                k = self.active[j]
                self.tracks[k].history.append(score)
                logger.debug("probe %d epoch %d/%d loss %.5f val %.4f", k, epoch, recipe.epochs, epoch_losses[j], score)
                stop = False
                if self.on_epoch is not None:
                    self.reported = True
                    stop = bool(self.on_epoch(k, epoch, score))
                if stop or epoch == recipe.epochs:
                    leaving.append(j)
                    self._finish(j, logits_val[j], stopped_early=stop and epoch < recipe.epochs)
            for j, error in failed.items():
                self.outcome[self.active[j]] = error
                self._write_back(j)
            if failed or leaving:
                self._keep([j for j in range(len(self.active)) if j not in failed and j not in leaving], optimizer)
            if not self.active:
                break
        return [r for r in self.outcome if r is not None]

    def _charge(self, what: str, seconds: float, among: list[int] | None = None) -> None:
        """Split a batch's wall time evenly among the probes it served."""
        served = range(len(self.active)) if among is None else among
        for j in served:
            track = self.tracks[self.active[j]]
            setattr(track, what, getattr(track, what) + seconds / max(1, len(served)))

    def _finish(self, j: int, logits_val: Tensor, *, stopped_early: bool) -> None:
        k = self.active[j]
        track = self.tracks[k]
        self._write_back(j)
        self.outcome[k] = TrainResult(
            score=track.history[-1], metrics=_full_metrics(logits_val, self.data.y_val, self.data.task),
            epochs_run=len(track.history), history=list(track.history), train_seconds=track.train_seconds,
            eval_seconds=track.eval_seconds, stopped_early=stopped_early, loss_history=list(track.loss_history),
            task=self.data.task)

    @torch.no_grad()
    def _write_back(self, j: int) -> None:
        """Copy stacked slice ``j``'s weights into its head (an ordinary module again)."""
        stacked = dict(self.stacked.named_parameters())
        head = self.heads[self.active[j]]
        for name, param in head.named_parameters():
            param.copy_(stacked[name][j])
        head.eval()

    def _keep(self, kept: list[int], optimizer: torch.optim.Optimizer) -> None:
        """Re-stack the batch with only the slices ``kept``: features, parameters, optimizer state.

        Features are compacted in place (no second copy of the largest tensors); parameters and
        their optimizer state are sliced into new tensors that replace the old ones in the
        optimizer, whose learning-rate schedule therefore goes on unchanged.
        """
        self.active = [self.active[j] for j in kept]
        if not kept:
            return
        index = torch.tensor(kept, device=self.data.device)
        self.train_x = [_compact(x, kept) for x in self.train_x]
        self.val_x = [_compact(x, kept) for x in self.val_x]
        replaced: dict[Tensor, Tensor] = {}  # old parameter -> its kept slices (tensors hash by identity)
        for layer in self.stacked.modules():
            if isinstance(layer, _StackedLinear):
                replaced.update(layer.keep(index))
        for group in optimizer.param_groups:
            group["params"] = [replaced[old] for old in group["params"]]
        for old, new in replaced.items():
            state = optimizer.state.pop(old, None)
            if state:
                optimizer.state[new] = {key: _slice_state(value, index, old.shape[0]) for key, value in state.items()}


class _StackedLinear(nn.Module):
    """K ``nn.Linear`` layers of one shape applied to K inputs at once: ``[K, B, in] -> [K, B, out]``."""

    def __init__(self, layers: Sequence[nn.Linear]) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.stack([layer.weight.detach() for layer in layers]))
        self.bias = (nn.Parameter(torch.stack([layer.bias.detach() for layer in layers]))
                     if layers[0].bias is not None else None)

    def forward(self, x: Tensor) -> Tensor:
        # (W x^T)^T rather than x W^T: autograd then computes the weight gradient as G^T x, in the
        # weight's own [K, out, in] layout (x^T G is several times slower on the CPU)
        out = torch.bmm(self.weight, x.transpose(1, 2)).transpose(1, 2)
        return out if self.bias is None else out + self.bias.unsqueeze(1)

    def keep(self, index: Tensor) -> dict[Tensor, Tensor]:
        """Keep only the layers ``index``; returns each replaced parameter and its replacement."""
        replaced = {}
        for name in ("weight", "bias"):
            old = getattr(self, name)
            if old is not None:
                new = nn.Parameter(old.detach().index_select(0, index))
                setattr(self, name, new)
                replaced[old] = new
        return replaced


def _stack_heads(heads: Sequence[nn.Module]) -> nn.Module:
    """A copy of ``heads[0]`` whose every ``nn.Linear`` holds the K heads' layers stacked."""
    stacked = copy.deepcopy(heads[0])
    for name, module in heads[0].named_modules():
        if isinstance(module, nn.Linear):
            parent, _, attr = name.rpartition(".")
            setattr(stacked.get_submodule(parent), attr, _StackedLinear([h.get_submodule(name) for h in heads]))
    return stacked


def _compact(x: Tensor, kept: list[int]) -> Tensor:
    """Move probes ``kept`` (increasing) of ``[N, K, D]`` inputs to the front of dimension 1, in place.

    Returns the view of the first ``len(kept)`` probes. Safe in increasing order: probe ``j`` is
    written from ``kept[j] >= j``, which no earlier write touched.
    """
    for j, k in enumerate(kept):
        if j != k:
            x[:, j].copy_(x[:, k])
    return x[:, : len(kept)]


def _slice_state(value: object, index: Tensor, n_stacked: int) -> object:
    """An optimizer state entry for the kept probes: stacked tensors sliced, scalars (e.g. step) as they are."""
    if isinstance(value, Tensor) and value.ndim > 0 and value.shape[0] == n_stacked:
        return value.index_select(0, index)
    return value


__all__ = ["BATCHABLE_HEADS", "BatchOnEpoch", "train_heads"]
