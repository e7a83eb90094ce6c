"""How many probes fit in one batch: the bytes a probe adds, the memory free on the device.

A batch of K probes holds, per probe: its stacked training and validation features (a copy of the
standardised inputs, in their dtype: float16 when the store holds float16), its parameters with their gradients and optimizer state, the per-step
gathered batch and activations, and its validation logits. On top of that, once per batch: the
validation forward of one row chunk and the workspace of the vectorised AP. K is the largest
number for which ``fixed + K * per_probe`` stays within a share of the free memory
(:data:`MEMORY_SHARE`), so the rest stays free for the allocator's slack, other workers and the
caller's own tensors.

Free memory: on CUDA ``torch.cuda.mem_get_info`` plus what torch's caching allocator holds but
does not use; on the CPU the operating system's available RAM (``psutil.virtual_memory().available``:
free plus reclaimable page cache).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass

import psutil
import torch
from torch import nn

from difffeat_tune._errors import ConfigError
from difffeat_tune.probe.metrics import AP_CHUNK_ELEMENTS

logger = logging.getLogger(__name__)

#: Share of the free memory a batch may plan to use.
MEMORY_SHARE = 0.6
#: Upper bound of an automatic K (an explicit K may be larger if it fits). Beyond a few dozen
#: probes a batch is already compute-bound on a CPU, and smaller batches let a pruner see
#: finished trials sooner.
DEFAULT_MAX_BATCH_PROBES = 32
#: Copies of the parameters a probe keeps: weights, gradients, Adam's two moments, and one more
#: while a stopped probe's batch is re-stacked.
_PARAMETER_COPIES = 5
#: Copies of a step's activations (the gathered batch and every layer output) alive at once
#: (forward values kept for the backward pass, their gradients).
_ACTIVATION_COPIES = 3
#: Bytes of one element of the AP workspace (float64 / int64 arrays) times the arrays alive at once.
_AP_WORKSPACE_BYTES_PER_ELEMENT = 8 * 10


@dataclass(frozen=True)
class ProbeFootprint:
    """Bytes a batch of K probes of one shape needs (see :meth:`batch_bytes`).

    Attributes:
        per_probe: bytes each probe adds (features, parameters and state, activations, logits).
        fixed: bytes the batch needs once (the validation forward of one row chunk).
        scoring_per_probe: bytes of the vectorised AP's workspace per probe (its validation
            rows x classes), which is computed in blocks of at most ``scoring_cap`` bytes.
        scoring_cap: the workspace of one block.
    """

    per_probe: int
    fixed: int
    scoring_per_probe: int = 0
    scoring_cap: int = 0

    def batch_bytes(self, n_probes: int) -> int:
        """Bytes of a batch of ``n_probes`` probes."""
        return self.fixed + n_probes * self.per_probe + min(n_probes * self.scoring_per_probe, self.scoring_cap)

    def max_probes(self, usable: float) -> int:
        """The largest K with ``batch_bytes(K) <= usable`` (0 if not even one probe fits)."""
        room = usable - self.fixed
        if room <= 0:
            return 0
        # either the AP workspace still grows with K, or it has reached its cap
        growing = room / (self.per_probe + self.scoring_per_probe) if self.per_probe + self.scoring_per_probe else math.inf
        capped = (room - self.scoring_cap) / self.per_probe if self.per_probe else math.inf
        fits = max(growing, capped)
        return int(fits) if math.isfinite(fits) else DEFAULT_MAX_BATCH_PROBES


def probe_footprint(
    head: nn.Module,
    input_widths: Sequence[int],
    *,
    n_train: int,
    n_val: int,
    batch_size: int,
    eval_batch_size: int,
    input_element: int | None = None,
) -> ProbeFootprint:
    """The memory a probe like ``head`` takes in a batch (the head may live on the ``meta`` device).

    Args:
        head: a head of the batch (only its parameter count and layer widths are read).
        input_widths: width of each of its inputs.
        n_train: training rows.
        n_val: validation rows.
        batch_size: rows per training step.
        eval_batch_size: rows per validation forward pass (shared by the batch).
        input_element: bytes of one feature element as stacked (2 for features kept in float16);
            default: the head's parameter dtype.
    """
    element = next((p.element_size() for p in head.parameters()), 4)
    features = element if input_element is None else input_element
    n_params = sum(p.numel() for p in head.parameters())
    linears = [m for m in head.modules() if isinstance(m, nn.Linear)]
    # every linear layer's output is an activation of the step (projections, classifier)
    row_width = sum(input_widths) + sum(m.out_features for m in linears)
    n_classes = linears[-1].out_features if linears else 1
    per_probe = features * (n_train + n_val) * sum(input_widths) + element * (
        _PARAMETER_COPIES * n_params
        + _ACTIVATION_COPIES * batch_size * row_width
        + 2 * n_val * n_classes
    )
    return ProbeFootprint(
        per_probe=int(per_probe),
        fixed=int(element * _ACTIVATION_COPIES * eval_batch_size * row_width),
        scoring_per_probe=_AP_WORKSPACE_BYTES_PER_ELEMENT * n_val * n_classes,
        scoring_cap=_AP_WORKSPACE_BYTES_PER_ELEMENT * AP_CHUNK_ELEMENTS,
    )


def available_memory(device: torch.device | str) -> int:
    """Bytes free for new tensors on ``device`` (CUDA: free + cached by torch; CPU: available RAM)."""
    dev = torch.device(device)
    if dev.type == "cuda":
        free, _total = torch.cuda.mem_get_info(dev)
        return int(free + torch.cuda.memory_reserved(dev) - torch.cuda.memory_allocated(dev))
    return int(psutil.virtual_memory().available)


def max_batch_probes(
    footprint: ProbeFootprint,
    *,
    device: torch.device | str = "cpu",
    requested: int | None = None,
    budget: int | None = None,
    limit: int = DEFAULT_MAX_BATCH_PROBES,
) -> int:
    """How many probes of ``footprint`` to train as one batch (at least 1).

    Args:
        footprint: the bytes of one probe and of the batch (:func:`probe_footprint`).
        device: where the batch trains (its free memory is measured unless ``budget`` is given).
        requested: an explicit K; reduced, with a logged warning, if it does not fit.
        budget: bytes free to plan against instead of measuring the device (e.g. a share of a
            device several workers use); :data:`MEMORY_SHARE` of it is used.
        limit: upper bound of an automatic K (``requested=None``).

    Raises:
        ConfigError: ``requested`` or ``limit`` is not a positive integer, or ``budget`` is negative.
    """
    check_probe_count("requested", requested)
    check_probe_count("limit", limit)
    if budget is not None and budget < 0:
        raise ConfigError(f"memory budget must be >= 0 bytes, got {budget}")
    free = available_memory(device) if budget is None else int(budget)
    usable = MEMORY_SHARE * free
    fits = footprint.max_probes(usable)
    if fits < 1:
        logger.warning("one probe needs %s and %s of %s free are usable on %s: training one at a time",
                       format_bytes(footprint.batch_bytes(1)), format_bytes(usable), format_bytes(free), device)
        return 1
    if requested is None:
        return min(fits, limit)
    if requested > fits:
        logger.warning("%d probes per batch need %s, %s of %s free are usable on %s: reduced to %d",
                       requested, format_bytes(footprint.batch_bytes(requested)), format_bytes(usable), format_bytes(free), device, fits)
        return fits
    return requested


def check_probe_count(name: str, value: int | None) -> None:
    """Raise :class:`ConfigError` unless ``value`` (a number of probes per batch) is None or a positive integer."""
    if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
        raise ConfigError(f"{name} (probes per batch) must be a positive integer, got {value!r}")


def split_batches(n_probes: int, per_batch: int) -> list[range]:
    """``range(n_probes)`` cut into the fewest batches of at most ``per_batch``, of nearly equal sizes.

    Example:
        >>> split_batches(10, 4)
        [range(0, 3), range(3, 7), range(7, 10)]
    """
    if per_batch < 1:
        raise ConfigError(f"probes per batch must be >= 1, got {per_batch}")
    n_batches = max(1, math.ceil(n_probes / per_batch))
    bounds = [round(i * n_probes / n_batches) for i in range(n_batches + 1)]
    return [range(a, b) for a, b in zip(bounds, bounds[1:]) if b > a]


def format_bytes(n_bytes: float) -> str:
    """Bytes in the largest binary unit that keeps them at 1 or more (tiny probes are KiB, not 0.00 GiB)."""
    for power, unit in ((30, "GiB"), (20, "MiB"), (10, "KiB")):
        if n_bytes >= 2**power:
            return f"{n_bytes / 2**power:.2f} {unit}"
    return f"{n_bytes:.0f} bytes"
