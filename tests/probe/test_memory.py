"""Memory planning of probe batches, against budgets passed in (never by exhausting the machine)."""

from __future__ import annotations

import logging

import pytest
import torch

from difffeat_tune._errors import ConfigError
from difffeat_tune.probe import (
    DEFAULT_MAX_BATCH_PROBES,
    ProbeFootprint,
    available_memory,
    max_batch_probes,
    probe_footprint,
    split_batches,
)
from difffeat_tune.probe._memory import MEMORY_SHARE
from difffeat_tune.probe.heads import build_head

MIB = 2**20


def _linear_footprint(width: int, n_train: int = 2400, n_val: int = 800) -> ProbeFootprint:
    with torch.device("meta"):
        head = build_head("linear", in_dim=width, n_classes=14)
    return probe_footprint(head, [width], n_train=n_train, n_val=n_val, batch_size=128, eval_batch_size=8192)


def test_footprint_counts_the_stacked_features_and_the_optimizer_state() -> None:
    small, wide = _linear_footprint(64), _linear_footprint(1152)
    features = (2400 + 800) * 1152 * 4
    assert wide.per_probe > features > small.per_probe
    assert _linear_footprint(1152, n_train=4800).per_probe - wide.per_probe == 2400 * 1152 * 4
    with torch.device("meta"):
        fusion = build_head("linear_add", image_dim=1152, text_dim=2048, n_classes=14, d_alg=512)
    params = sum(p.numel() for p in fusion.parameters())
    fused = probe_footprint(fusion, [1152, 2048], n_train=2400, n_val=800, batch_size=128, eval_batch_size=8192)
    # weights, gradients and Adam's two moments at least
    assert fused.per_probe > (2400 + 800) * (1152 + 2048) * 4 + 4 * params * 4


def test_batch_bytes_grow_with_k_and_the_ap_workspace_stops_at_its_cap() -> None:
    footprint = ProbeFootprint(per_probe=10 * MIB, fixed=5 * MIB, scoring_per_probe=4 * MIB, scoring_cap=8 * MIB)
    assert [footprint.batch_bytes(k) // MIB for k in (1, 2, 3)] == [19, 33, 43]
    assert footprint.max_probes(43 * MIB) == 3 and footprint.max_probes(43 * MIB - 1) == 2
    assert footprint.max_probes(4 * MIB) == 0


def test_automatic_k_fills_the_budget_up_to_the_limit() -> None:
    footprint = ProbeFootprint(per_probe=100 * MIB, fixed=50 * MIB)
    budget = int((50 + 7 * 100) * MIB / MEMORY_SHARE) + 1  # room for exactly 7 probes
    assert max_batch_probes(footprint, budget=budget) == 7
    assert max_batch_probes(footprint, budget=budget, limit=4) == 4
    assert max_batch_probes(footprint, budget=100 * budget) == DEFAULT_MAX_BATCH_PROBES


def test_an_explicit_k_that_does_not_fit_is_reduced_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    footprint = ProbeFootprint(per_probe=100 * MIB, fixed=50 * MIB)
    budget = int((50 + 7 * 100) * MIB / MEMORY_SHARE) + 1
    with caplog.at_level(logging.WARNING):
        assert max_batch_probes(footprint, budget=budget, requested=5) == 5
        assert not caplog.records
        assert max_batch_probes(footprint, budget=budget, requested=40) == 7
    assert "40 probes per batch" in caplog.text and "reduced to 7" in caplog.text
    # an explicit K above the automatic limit is kept when it fits
    assert max_batch_probes(footprint, budget=100 * budget, requested=DEFAULT_MAX_BATCH_PROBES + 8) == \
        DEFAULT_MAX_BATCH_PROBES + 8


def test_when_not_even_one_probe_fits_probes_train_one_at_a_time(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        assert max_batch_probes(ProbeFootprint(per_probe=100 * MIB, fixed=0), budget=MIB, requested=8) == 1
    assert "one at a time" in caplog.text


def test_the_free_memory_of_the_device_is_measured_when_no_budget_is_given() -> None:
    free = available_memory("cpu")
    assert 0 < free
    footprint = ProbeFootprint(per_probe=free, fixed=0)  # one probe takes all of it: more than the share
    assert max_batch_probes(footprint, device="cpu", requested=3) == 1


def test_bad_limits_are_config_errors() -> None:
    footprint = ProbeFootprint(per_probe=MIB, fixed=0)
    for bad in (0, -2, 1.5, True):
        with pytest.raises(ConfigError, match="positive integer"):
            max_batch_probes(footprint, budget=10 * MIB, requested=bad)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="budget"):
        max_batch_probes(footprint, budget=-1)


def test_split_batches_uses_the_fewest_batches_of_nearly_equal_size() -> None:
    assert split_batches(30, 32) == [range(0, 30)]
    assert [len(b) for b in split_batches(30, 16)] == [15, 15]
    assert [len(b) for b in split_batches(10, 4)] == [3, 4, 3]
    assert [i for b in split_batches(23, 5) for i in b] == list(range(23))
    assert split_batches(0, 4) == []
