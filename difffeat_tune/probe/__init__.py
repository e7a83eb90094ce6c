"""Probes on stored features: heads, the training loops (one probe, or many as one computation),
metrics, memory planning of batches, the trial objective, and closed-form proxies (LogME, ridge
with GCV) that rank configurations without training."""

from __future__ import annotations

from difffeat_tune.probe._batched import BATCHABLE_HEADS, BatchOnEpoch, train_heads
from difffeat_tune.probe._memory import (
    DEFAULT_MAX_BATCH_PROBES,
    ProbeFootprint,
    available_memory,
    max_batch_probes,
    probe_footprint,
    split_batches,
)
from difffeat_tune.probe._proxies import RidgeProxy, logme, ridge_score
from difffeat_tune.probe.train import ProbeDivergedError, TrainRecipe, TrainResult, evaluate, train_head

__all__ = [
    "BATCHABLE_HEADS",
    "BatchOnEpoch",
    "DEFAULT_MAX_BATCH_PROBES",
    "ProbeDivergedError",
    "ProbeFootprint",
    "RidgeProxy",
    "TrainRecipe",
    "TrainResult",
    "available_memory",
    "evaluate",
    "logme",
    "max_batch_probes",
    "probe_footprint",
    "ridge_score",
    "split_batches",
    "train_head",
    "train_heads",
]
