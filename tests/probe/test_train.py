"""The fast training loop: learning, determinism, callbacks, masking, single-label, input errors."""

from __future__ import annotations

import pytest
import torch

from difffeat_tune._errors import ConfigError
from difffeat_tune.probe.heads import build_head
from difffeat_tune.probe.metrics import MultiLabelMetrics, ProbeInputError, SingleLabelMetrics
from difffeat_tune.probe.train import TrainRecipe, TrainResult, evaluate, train_head

N_TRAIN, N_VAL, DIM, N_CLASSES = 192, 96, 24, 4
# one intra-op thread: these matmuls are tiny and the test machine's cores are shared
FAST = TrainRecipe(epochs=15, batch_size=32, lr=3e-2, seed=0, cpu_threads=1)


def _separable(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Labels from a noiseless linear teacher: perfectly learnable by a linear probe."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(N_TRAIN + N_VAL, DIM, generator=g)
    teacher = torch.randn(DIM, N_CLASSES, generator=g)
    y = (x @ teacher > 0.5).to(torch.int8)
    return x[:N_TRAIN], y[:N_TRAIN], x[N_TRAIN:], y[N_TRAIN:]


def _linear(seed: int = 0) -> torch.nn.Module:
    return build_head("linear", in_dim=DIM, n_classes=N_CLASSES, seed=seed)


def test_learns_a_separable_problem() -> None:
    x_tr, y_tr, x_va, y_va = _separable()
    result = train_head(_linear(), x_tr, y_tr, x_va, y_va, recipe=FAST, device="cpu")
    assert isinstance(result, TrainResult) and isinstance(result.metrics, MultiLabelMetrics)
    assert result.score > 0.95
    assert result.epochs_run == FAST.epochs and len(result.history) == FAST.epochs
    assert result.score == result.history[-1] == pytest.approx(result.metrics.map)
    assert result.history[-1] > result.history[0]
    assert result.loss_history[-1] < result.loss_history[0]
    assert not result.stopped_early and result.train_seconds > 0


def test_deterministic_under_a_seed() -> None:
    data = _separable()
    heads = [_linear(), _linear()]
    results = [train_head(h, *data, recipe=FAST) for h in heads]
    assert results[0].history == results[1].history
    assert results[0].loss_history == results[1].loss_history
    for a, b in zip(heads[0].parameters(), heads[1].parameters()):
        assert torch.equal(a, b)
    other = train_head(_linear(), *data, recipe=TrainRecipe(epochs=3, batch_size=32, lr=3e-2, seed=1, cpu_threads=1))
    assert other.loss_history != results[0].loss_history[:3]


def test_on_epoch_called_every_epoch_and_can_stop_early() -> None:
    data = _separable()
    calls: list[tuple[int, float]] = []
    result = train_head(_linear(), *data, recipe=FAST, on_epoch=lambda e, s: calls.append((e, s)) is not None)
    assert [e for e, _ in calls] == list(range(1, FAST.epochs + 1))
    assert [s for _, s in calls] == result.history

    stop_at = 3
    seen: list[int] = []

    def stop(epoch: int, score: float) -> bool:
        seen.append(epoch)
        return epoch >= stop_at

    stopped = train_head(_linear(), *data, recipe=FAST, on_epoch=stop)
    assert seen == [1, 2, 3]
    assert stopped.stopped_early and stopped.epochs_run == stop_at and len(stopped.history) == stop_at
    assert stopped.history == result.history[:stop_at]


def test_ignored_targets_are_masked_out_of_the_loss() -> None:
    x_tr, y_tr, x_va, y_va = _separable()
    # a fully ignored column gets no gradient: with Adam and no weight decay its weights never move
    ignored = y_tr.clone()
    ignored[:, 0] = -1
    head = _linear()
    before = head.classifier.weight.detach().clone(), head.classifier.bias.detach().clone()
    train_head(head, x_tr, ignored, x_va, y_va, recipe=FAST)
    assert torch.equal(head.classifier.weight[0], before[0][0]) and head.classifier.bias[0] == before[1][0]
    assert not torch.equal(head.classifier.weight[1], before[0][1])

    # partly ignored entries are neither positives nor negatives
    runs = {}
    for name, fill in (("ignore", -1), ("zero", 0), ("one", 1)):
        y = y_tr.clone()
        y[::3, 1] = fill
        recipe = TrainRecipe(epochs=2, batch_size=32, seed=0, cpu_threads=1)
        runs[name] = train_head(_linear(), x_tr, y, x_va, y_va, recipe=recipe)
    assert runs["ignore"].loss_history != runs["zero"].loss_history
    assert runs["ignore"].loss_history != runs["one"].loss_history


def test_singlelabel_path() -> None:
    g = torch.Generator().manual_seed(4)
    centers = torch.randn(3, DIM, generator=g) * 3
    labels = torch.randint(0, 3, (N_TRAIN + N_VAL,), generator=g)
    x = centers[labels] + torch.randn(N_TRAIN + N_VAL, DIM, generator=g)
    one_hot = torch.nn.functional.one_hot(labels, 3).to(torch.int8)
    head = build_head("linear", in_dim=DIM, n_classes=3, seed=0)
    result = train_head(head, x[:N_TRAIN], one_hot[:N_TRAIN], x[N_TRAIN:], one_hot[N_TRAIN:],
                        task="singlelabel", recipe=FAST)
    assert isinstance(result.metrics, SingleLabelMetrics)
    assert result.score == result.metrics.top1 > 0.95
    assert result.metrics.top5 == 1.0  # top-5 clipped to 3 classes
    with pytest.raises(ProbeInputError, match="exactly one 1"):
        bad = one_hot.clone()
        bad[0] = 0
        train_head(head, x[:N_TRAIN], bad[:N_TRAIN], x[N_TRAIN:], one_hot[N_TRAIN:], task="singlelabel", recipe=FAST)


def test_fusion_head_trains_on_two_inputs_and_evaluate_scores_another_split() -> None:
    x_tr, y_tr, x_va, y_va = _separable()
    text_tr, text_va = x_tr[:, :8] * 2, x_va[:, :8] * 2
    head = build_head("linear_add", image_dim=DIM, text_dim=8, n_classes=N_CLASSES, d_alg=16, seed=0)
    result = train_head(head, (x_tr, text_tr), y_tr, (x_va, text_va), y_va, recipe=FAST)
    assert result.score > 0.9
    again = evaluate(head, (x_va, text_va), y_va, "multilabel")
    assert again == result.metrics == result.evaluate(head, (x_va, text_va), y_va)
    train_metrics = evaluate(head, (x_tr, text_tr), y_tr, "multilabel")
    assert isinstance(train_metrics, MultiLabelMetrics) and train_metrics.map > 0.9


def test_nan_features_raise_naming_the_input() -> None:
    x_tr, y_tr, x_va, y_va = _separable()
    text_tr, text_va = x_tr[:, :8].clone(), x_va[:, :8].clone()
    text_tr[5, 2] = float("nan")
    head = build_head("linear_add", image_dim=DIM, text_dim=8, n_classes=N_CLASSES, d_alg=16)
    with pytest.raises(ProbeInputError, match=r"train input 1 .*NaN/Inf.*\[5\]"):
        train_head(head, (x_tr, text_tr), y_tr, (x_va, text_va), y_va, recipe=FAST)
    bad_val = x_va.clone()
    bad_val[0, 0] = float("inf")
    with pytest.raises(ProbeInputError, match="val input 0"):
        train_head(_linear(), x_tr, y_tr, bad_val, y_va, recipe=FAST)


def test_mismatched_rows_raise_with_shapes() -> None:
    x_tr, y_tr, x_va, y_va = _separable()
    with pytest.raises(ProbeInputError, match=r"\(192, 24\).*\(191, 4\)"):
        train_head(_linear(), x_tr, y_tr[:-1], x_va, y_va, recipe=FAST)
    head = build_head("linear_add", image_dim=DIM, text_dim=8, n_classes=N_CLASSES, d_alg=16)
    with pytest.raises(ProbeInputError, match=r"\(192, 24\), \(190, 8\)"):
        train_head(head, (x_tr, x_tr[:-2, :8]), y_tr, (x_va, x_va[:, :8]), y_va, recipe=FAST)


def test_other_input_errors() -> None:
    x_tr, y_tr, x_va, y_va = _separable()
    with pytest.raises(ProbeInputError, match="takes 1 input"):
        train_head(_linear(), (x_tr, x_tr), y_tr, (x_va, x_va), y_va, recipe=FAST)
    with pytest.raises(ProbeInputError, match="width"):
        train_head(_linear(), x_tr, y_tr, x_va[:, :-1], y_va, recipe=FAST)
    with pytest.raises(ProbeInputError, match="outputs 4 classes"):
        train_head(_linear(), x_tr, y_tr[:, :3], x_va, y_va[:, :3], recipe=FAST)
    with pytest.raises(ConfigError, match="unknown task"):
        train_head(_linear(), x_tr, y_tr, x_va, y_va, task="regression", recipe=FAST)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="optimizer"):
        TrainRecipe(optimizer="lbfgs")
    with pytest.raises(ConfigError, match="epochs"):
        TrainRecipe(epochs=0)
    with pytest.raises(ConfigError, match="cpu_threads"):
        TrainRecipe(cpu_threads=0)


def test_cpu_threads_setting_is_restored() -> None:
    before = torch.get_num_threads()
    train_head(_linear(), *_separable(), recipe=TrainRecipe(epochs=1, cpu_threads=1))
    assert torch.get_num_threads() == before


def test_recipe_defaults_are_the_papers() -> None:
    r = TrainRecipe()
    assert (r.epochs, r.batch_size, r.lr, r.weight_decay, r.optimizer, r.scheduler, r.seed, r.amp) == (
        40, 128, 1e-3, 0.0, "adam", "cosine", 0, True
    )
