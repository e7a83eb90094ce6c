"""Batched training: each probe of a batch ends where its training alone ends (weights, metrics, history)."""

from __future__ import annotations

import logging
import math

import pytest
import torch
from torch import Tensor, nn

from difffeat_tune._errors import ConfigError
from difffeat_tune.probe import BATCHABLE_HEADS, probe_footprint, train_heads
from difffeat_tune.probe._memory import MEMORY_SHARE
from difffeat_tune.probe.heads import CrossAttention, build_head
from difffeat_tune.probe.metrics import ProbeInputError
from difffeat_tune.probe.train import ProbeDivergedError, TrainRecipe, TrainResult, train_head

N_TRAIN, N_VAL, N_CLASSES = 150, 60, 5
IMAGE_DIM, TEXT_DIM, D_ALG = 12, 9, 8
N_PROBES = 3
# a last batch smaller than the others (150 = 4 x 32 + 22), one thread: tiny matmuls on shared cores
RECIPE = TrainRecipe(epochs=5, batch_size=32, lr=1e-2, seed=3, cpu_threads=1)
# batched and single matmuls sum in different orders: float32 rounding, amplified a little by training
WEIGHT_TOL = dict(atol=1e-5, rtol=1e-4)


def _targets(seed: int, *, ignored: bool = False) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed)
    y = (torch.rand(N_TRAIN + N_VAL, N_CLASSES, generator=g) < 0.3).to(torch.int8)
    if ignored:
        y[::7, 1] = -1  # VOC-style "difficult" entries, in train and val
    return y[:N_TRAIN], y[N_TRAIN:]


def _single_label_targets(seed: int) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed)
    classes = torch.randint(0, N_CLASSES, (N_TRAIN + N_VAL,), generator=g)
    one_hot = torch.nn.functional.one_hot(classes, N_CLASSES).to(torch.int8)
    return one_hot[:N_TRAIN], one_hot[N_TRAIN:]


def _features(kind: str, seed: int) -> tuple[tuple[Tensor, ...], tuple[Tensor, ...]]:
    """(train inputs, val inputs) of one probe; each probe gets its own features."""
    g = torch.Generator().manual_seed(100 + seed)
    widths = (IMAGE_DIM,) if kind == "linear" else (IMAGE_DIM, TEXT_DIM)
    full = [torch.randn(N_TRAIN + N_VAL, w, generator=g) for w in widths]
    return tuple(x[:N_TRAIN] for x in full), tuple(x[N_TRAIN:] for x in full)


def _head(kind: str, seed: int) -> nn.Module:
    if kind == "linear":
        return build_head("linear", in_dim=IMAGE_DIM, n_classes=N_CLASSES, seed=seed)
    return build_head(kind, image_dim=IMAGE_DIM, text_dim=TEXT_DIM, n_classes=N_CLASSES, d_alg=D_ALG, seed=seed)


def _assert_same(batched: TrainResult | ProbeDivergedError, batched_head: nn.Module,
                 alone: TrainResult, alone_head: nn.Module) -> None:
    assert isinstance(batched, TrainResult)
    for (name, a), b in zip(batched_head.named_parameters(), alone_head.parameters()):
        torch.testing.assert_close(a, b, **WEIGHT_TOL, msg=name)
    assert batched.epochs_run == alone.epochs_run and batched.stopped_early == alone.stopped_early
    assert batched.history == pytest.approx(alone.history, abs=1e-6)
    assert batched.loss_history == pytest.approx(alone.loss_history, abs=1e-6)
    assert batched.score == pytest.approx(alone.score, abs=1e-6)
    assert batched.metrics.as_dict() == pytest.approx(alone.metrics.as_dict(), abs=1e-6)
    assert batched.task == alone.task


def _compare(kind: str, targets: tuple[Tensor, Tensor], task: str, stop: dict[int, int] | None = None) -> None:
    """Train N_PROBES heads of ``kind`` batched and each alone; probe k stops at epoch ``stop[k]``."""
    stop = stop or {}
    data = [_features(kind, k) for k in range(N_PROBES)]
    heads = [_head(kind, k) for k in range(N_PROBES)]
    calls: list[tuple[int, int]] = []

    def on_epoch(k: int, epoch: int, score: float) -> bool:
        calls.append((k, epoch))
        return epoch >= stop.get(k, RECIPE.epochs + 1)

    batched = train_heads(heads, [d[0] for d in data], targets[0], [d[1] for d in data], targets[1],
                          task=task, recipe=RECIPE, device="cpu", on_epoch=on_epoch)  # type: ignore[arg-type]
    assert len(batched) == N_PROBES
    for k in range(N_PROBES):
        alone_head = _head(kind, k)
        alone = train_head(alone_head, data[k][0], targets[0], data[k][1], targets[1], task=task,  # type: ignore[arg-type]
                           recipe=RECIPE, device="cpu", on_epoch=lambda e, s, k=k: e >= stop.get(k, RECIPE.epochs + 1))
        _assert_same(batched[k], heads[k], alone, alone_head)
        assert [e for j, e in calls if j == k] == list(range(1, alone.epochs_run + 1))


@pytest.mark.parametrize("kind", ["linear", "simple_concat", "linear_concat", "linear_add"])
def test_each_probe_of_a_batch_equals_its_training_alone(kind: str) -> None:
    _compare(kind, _targets(0), "multilabel")


@pytest.mark.parametrize("kind", ["linear", "linear_add"])
def test_ignored_entries_are_masked_per_probe_as_alone(kind: str) -> None:
    _compare(kind, _targets(1, ignored=True), "multilabel")


@pytest.mark.parametrize("kind", ["linear", "linear_concat"])
def test_single_label_probes_equal_their_training_alone(kind: str) -> None:
    _compare(kind, _single_label_targets(2), "singlelabel")


@pytest.mark.parametrize("kind", ["linear", "simple_concat"])
def test_a_stopped_probe_equals_its_training_stopped_at_that_epoch(kind: str) -> None:
    # probe 1 leaves after epoch 2 and probe 0 after epoch 4: the batch is re-stacked twice
    _compare(kind, _targets(3), "multilabel", stop={1: 2, 0: 4})


def test_cross_attention_trains_alone_through_the_same_entry_point() -> None:
    assert CrossAttention not in BATCHABLE_HEADS
    _compare("cross_attention", _targets(4), "multilabel", stop={2: 3})


def test_heads_of_different_widths_and_kinds_share_one_call() -> None:
    """Grouped by head and widths: a 12-d and a 7-d linear probe and a fusion head, interleaved."""
    y_train, y_val = _targets(5)
    g = torch.Generator().manual_seed(7)
    widths = [IMAGE_DIM, 7, IMAGE_DIM, 7]
    inputs = [(torch.randn(N_TRAIN, w, generator=g),) for w in widths]
    val = [(torch.randn(N_VAL, w, generator=g),) for w in widths]
    heads: list[nn.Module] = [build_head("linear", in_dim=w, n_classes=N_CLASSES, seed=k) for k, w in enumerate(widths)]
    fusion_train, fusion_val = _features("linear_add", 9)
    heads.append(_head("linear_add", 9))
    inputs.append(fusion_train)
    val.append(fusion_val)
    results = train_heads(heads, inputs, y_train, val, y_val, recipe=RECIPE, device="cpu")
    for k, head in enumerate(heads):
        alone_head = build_head("linear", in_dim=widths[k], n_classes=N_CLASSES, seed=k) if k < 4 \
            else _head("linear_add", 9)
        alone = train_head(alone_head, inputs[k], y_train, val[k], y_val, recipe=RECIPE, device="cpu")
        _assert_same(results[k], head, alone, alone_head)


def test_a_diverging_probe_fails_alone_and_the_others_go_on() -> None:
    y_train, y_val = _targets(6)
    data = [_features("linear", k) for k in range(N_PROBES)]
    # features near float32's limit: the logits overflow, as a too-high learning rate would make them
    data[1] = (tuple(x * 1e37 for x in data[1][0]), data[1][1])
    heads = [_head("linear", k) for k in range(N_PROBES)]
    results = train_heads(heads, [d[0] for d in data], y_train, [d[1] for d in data], y_val, recipe=RECIPE)
    assert isinstance(results[1], ProbeDivergedError) and "epoch 1" in results[1].message
    with pytest.raises(ProbeDivergedError):
        train_head(_head("linear", 1), data[1][0], y_train, data[1][1], y_val, recipe=RECIPE)
    for k in (0, 2):
        alone_head = _head("linear", k)
        alone = train_head(alone_head, data[k][0], y_train, data[k][1], y_val, recipe=RECIPE)
        _assert_same(results[k], heads[k], alone, alone_head)


def test_a_small_memory_budget_splits_the_batch_with_the_same_results(caplog: pytest.LogCaptureFixture) -> None:
    y_train, y_val = _targets(8)
    data = [_features("linear", k) for k in range(5)]
    ample = train_heads([_head("linear", k) for k in range(5)], [d[0] for d in data], y_train,
                        [d[1] for d in data], y_val, recipe=RECIPE)
    heads = [_head("linear", k) for k in range(5)]
    footprint = probe_footprint(heads[0], [IMAGE_DIM], n_train=N_TRAIN, n_val=N_VAL, batch_size=RECIPE.batch_size,
                                eval_batch_size=RECIPE.eval_batch_size)
    room_for_two = math.ceil(footprint.batch_bytes(2) / MEMORY_SHARE)
    assert footprint.batch_bytes(3) > MEMORY_SHARE * room_for_two
    with caplog.at_level(logging.WARNING):
        # an explicit K of 5 is reduced to 2 and the 5 probes run in 3 batches
        tight = train_heads(heads, [d[0] for d in data], y_train, [d[1] for d in data], y_val, recipe=RECIPE,
                            max_probes=5, memory_budget=room_for_two)
    assert "5 probes per batch" in caplog.text and "reduced to 2" in caplog.text
    for a, b in zip(ample, tight):
        assert isinstance(a, TrainResult) and isinstance(b, TrainResult)
        assert a.history == pytest.approx(b.history, abs=1e-6)


def test_inputs_are_checked_per_probe_before_anything_trains() -> None:
    y_train, y_val = _targets(9)
    good, bad = _features("linear", 0), _features("linear", 1)
    bad_train = (bad[0][0].clone(),)
    bad_train[0][4, 2] = float("nan")
    heads = [_head("linear", 0), _head("linear", 1)]
    before = heads[0].classifier.weight.detach().clone()
    with pytest.raises(ProbeInputError, match="probe 1: train input 0"):
        train_heads(heads, [good[0], bad_train], y_train, [good[1], bad[1]], y_val, recipe=RECIPE)
    assert torch.equal(heads[0].classifier.weight, before)
    with pytest.raises(ProbeInputError, match="2 heads, 1 training inputs"):
        train_heads(heads, [good[0]], y_train, [good[1], bad[1]], y_val, recipe=RECIPE)
    assert train_heads([], [], y_train, [], y_val) == []
    with pytest.raises(ConfigError, match="max_probes"):
        train_heads(heads, [good[0], good[0]], y_train, [good[1], good[1]], y_val, max_probes=0)
