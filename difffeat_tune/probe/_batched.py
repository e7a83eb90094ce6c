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
  (``cross_attention``) and groups of one train alone, as :func:`train_head` trains them.
* **Stacking.** Each input is stacked row-major into ``[N, K, D]`` (a step gathers one
  contiguous block per row for all probes). The batch is a copy of the first head
  in which every ``nn.Linear`` is replaced by the K heads' layers stacked (weights
  ``[K, out, in]``, one batched matmul); the head's own ``forward`` then runs unchanged on
  ``[K, B, D]`` tensors (its other operations act on the last dimension), so there is no second
  implementation of the heads. ``torch.func.vmap`` over ``F.linear`` would do the same, but its
  backward computes the weight gradient as ``x^T G``, a layout 4x slower on the CPU than
  ``G^T x`` (forward and backward of 30 probes at 1152-d, batch 128: 24.6 ms against 5.6 ms).
* **One loop.** The stack is a :class:`~difffeat_tune.probe.train.ProbeSet` and trains in
  :func:`~difffeat_tune.probe.train.run_epochs`, the loop :func:`train_head` runs with K = 1:
  the same permutation of rows per epoch, each probe's loss as alone (their sum is
  back-propagated: the probes share no parameter), one fused optimizer step for all stacked
  tensors (element-wise updates: each probe's is its own), the same stopping and divergence.
* **Validation.** All K are scored at once after every epoch (one batched forward per row chunk,
  :class:`~difffeat_tune.probe.metrics.MapScorer` ranks probes x classes in blocks of one sort).
* **Leaving.** A probe that stops (``on_epoch(k, epoch, score)`` returned True), ends or
  diverges has its weights written back to its head; the others are re-stacked (features
  compacted in place, parameters and optimizer state sliced) and go on. A diverged probe's entry
  in the result list is the :class:`~difffeat_tune.probe.train.ProbeDivergedError` that training
  it alone would raise.

With the same seeds each probe's weights and metrics equal its training alone up to float
rounding (batched and single matmuls sum in different orders).
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Iterator, Sequence

import torch
from torch import Tensor, nn

from difffeat_tune.probe._memory import (
    check_probe_count,
    max_batch_probes,
    probe_footprint,
    split_batches,
)
from difffeat_tune.probe.heads import HEAD_KINDS, head_class
from difffeat_tune.probe.train import (
    BatchOnEpoch,
    ProbeDivergedError,
    Task,
    TrainingData,
    TrainRecipe,
    TrainResult,
    cpu_threads,
    run_epochs,
    train_alone,
)

logger = logging.getLogger(__name__)

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
    check_probe_count("max_probes", max_probes)
    data = TrainingData.prepare(heads, train_inputs, train_targets, val_inputs, val_targets, task=task,
                                recipe=recipe, device=device)
    results: list[TrainResult | ProbeDivergedError | None] = [None] * len(heads)
    with cpu_threads(data.recipe, data.device):
        for members in _groups(data):
            if len(members) == 1 or not isinstance(data.heads[members[0]], BATCHABLE_HEADS):
                for k in members:
                    results[k] = train_alone(data, k, on_epoch)
                continue
            first = members[0]
            footprint = probe_footprint(
                data.heads[first], [x.shape[1] for x in data.train_x[first]], n_train=data.y_train.shape[0],
                n_val=data.y_val.shape[0], batch_size=data.recipe.batch_size,
                eval_batch_size=data.recipe.eval_batch_size, input_element=data.train_x[first][0].element_size())
            per_batch = max_batch_probes(footprint, device=data.device, requested=max_probes, budget=memory_budget)
            for part in split_batches(len(members), per_batch):
                _train_or_split([members[i] for i in part], data, on_epoch, results)
    assert all(r is not None for r in results)  # every group and batch above filled its entries
    return results  # type: ignore[return-value]


def _groups(data: TrainingData) -> list[list[int]]:
    """Indices of heads that can share a batch, in order of first appearance."""
    groups: dict[object, list[int]] = {}
    for k, head in enumerate(data.heads):
        if isinstance(head, BATCHABLE_HEADS):
            key: object = (type(head), tuple((n, tuple(p.shape), p.dtype) for n, p in head.named_parameters()),
                           tuple(x.shape[1] for x in data.train_x[k]))
        else:
            key = ("alone", k)
        groups.setdefault(key, []).append(k)
    return list(groups.values())


def _train_or_split(batch: list[int], data: TrainingData, on_epoch: BatchOnEpoch | None,
                    results: list[TrainResult | ProbeDivergedError | None]) -> None:
    """Train one batch; if the device runs out of memory before any epoch was reported, halve it.

    The memory plan should prevent this; the fallback covers estimates that were too low (e.g. a
    fragmented CUDA cache). After an epoch was reported the error propagates: re-running would
    report epochs twice.
    """
    reported = False

    def report(j: int, epoch: int, score: float) -> bool:
        nonlocal reported
        reported = True
        return bool(on_epoch(batch[j], epoch, score))  # type: ignore[misc]  # only passed when given

    try:
        outcome = run_epochs(_StackedHeads(data, batch), data, None if on_epoch is None else report)
    except torch.OutOfMemoryError:
        if reported or len(batch) == 1:
            raise
        if data.device.type == "cuda":
            torch.cuda.empty_cache()
        half = len(batch) // 2
        logger.warning("out of memory with %d probes in a batch: retrying as %d + %d", len(batch), half,
                       len(batch) - half)
        for part in (batch[:half], batch[half:]):
            _train_or_split(part, data, on_epoch, results)
        return
    for j, k in enumerate(batch):
        results[k] = outcome[j]


# --------------------------------------------------------------------------------------------
# one stacked batch


class _StackedHeads:
    """Heads ``members`` of one structure as one :class:`~difffeat_tune.probe.train.ProbeSet` (see the module docstring)."""

    def __init__(self, data: TrainingData, members: list[int]) -> None:
        self.heads = [data.heads[k] for k in members]  # the head of every slice still training
        self.stacked = _stack_heads(self.heads)
        self.dtype = next(self.stacked.parameters()).dtype
        self.eval_batch_size = data.recipe.eval_batch_size
        self.device = data.device
        n_inputs = len(data.train_x[members[0]])
        # inputs stacked row-major, [N, K, D_i]: a row of all probes is one contiguous block, so a
        # step's gather copies batch-size blocks (faster than K x batch-size rows of [K, N, D])
        self.train_x = [torch.stack([data.train_x[k][i] for k in members], dim=1) for i in range(n_inputs)]
        self.val_x = [torch.stack([data.val_x[k][i] for k in members], dim=1) for i in range(n_inputs)]
        # one buffer per input for the gathered rows of a step: reusing it spares an allocation of
        # batch x K x D floats per step (page faults and zeroing for large K x D on the CPU)
        rows = min(data.recipe.batch_size, data.y_train.shape[0])
        self.gathered = [x.new_empty(rows * x.shape[1] * x.shape[2]) for x in self.train_x]

    def __len__(self) -> int:
        return len(self.heads)

    def parameters(self) -> Iterator[nn.Parameter]:
        return self.stacked.parameters()

    def train_mode(self) -> None:
        self.stacked.train()

    def logits(self, batch_idx: Tensor) -> Tensor:
        """The stacked head on the batch's rows of every input, gathered as ``[K, batch, D_i]`` views."""
        batch = []
        for x, buffer in zip(self.train_x, self.gathered):
            view = buffer[: batch_idx.numel() * x.shape[1] * x.shape[2]].view(batch_idx.numel(), *x.shape[1:])
            # the stored dtype (float16) is widened per step: no float32 copy of the stacked features
            batch.append(torch.index_select(x, 0, batch_idx, out=view).to(self.dtype).transpose(0, 1))
        return self.stacked(*batch)

    @torch.no_grad()
    def val_logits(self) -> Tensor:
        """Float32 validation logits ``[K, N_val, C]``, in row chunks as large as one eval batch of the whole stack."""
        self.stacked.eval()
        n_rows, n_probes = self.val_x[0].shape[:2]
        rows = max(1, self.eval_batch_size // n_probes)
        chunks = [self.stacked(*[x[start:start + rows].to(self.dtype).transpose(0, 1) for x in self.val_x]).float()
                  for start in range(0, n_rows, rows)]
        return torch.cat(chunks, dim=1)

    @torch.no_grad()
    def write_back(self, j: int) -> None:
        """Copy stacked slice ``j``'s weights into its head (an ordinary module again)."""
        stacked = dict(self.stacked.named_parameters())
        head = self.heads[j]
        for name, param in head.named_parameters():
            param.copy_(stacked[name][j])
        head.eval()

    def keep(self, kept: list[int], optimizer: torch.optim.Optimizer) -> None:
        """Re-stack with only the slices ``kept``: features, parameters, optimizer state.

        Features are compacted in place (no second copy of the largest tensors); parameters and
        their optimizer state are sliced into new tensors that replace the old ones in the
        optimizer, whose learning-rate schedule therefore goes on unchanged.
        """
        self.heads = [self.heads[j] for j in kept]
        index = torch.tensor(kept, device=self.device)
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
