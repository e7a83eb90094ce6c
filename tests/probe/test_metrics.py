"""Metrics against independent computations (sklearn, torchmetrics, hand-worked examples)."""

from __future__ import annotations

import dataclasses
import logging
import math

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score, precision_recall_fscore_support, top_k_accuracy_score
from torchmetrics.functional.classification import multilabel_average_precision

from difffeat_tune._errors import DataError, DiffFeatError
from difffeat_tune.probe.metrics import (
    MultiLabelMetrics,
    ProbeInputError,
    SingleLabelMetrics,
    all_finite,
    average_precision_per_class,
    batched_mean_average_precision,
    batched_top1_accuracy,
    finite_slices,
    mean_average_precision,
    multilabel_metrics,
    ordered_metrics,
    singlelabel_metrics,
    top_k_accuracy,
)

N_ROWS, N_CLASSES = 60, 6


def _fixed_data() -> tuple[torch.Tensor, torch.Tensor]:
    """Probabilities with many ties (multiples of 1/8) and ~10% ignored entries."""
    g = torch.Generator().manual_seed(7)
    probs = torch.randint(0, 9, (N_ROWS, N_CLASSES), generator=g).float() / 8
    targets = (torch.rand(N_ROWS, N_CLASSES, generator=g) < 0.35).to(torch.int8)
    targets[torch.rand(N_ROWS, N_CLASSES, generator=g) < 0.1] = -1
    targets[0, :] = 1  # every class has a positive
    return probs, targets


def _sklearn_reference(probs: torch.Tensor, targets: torch.Tensor) -> dict[str, float]:
    """Every metric from sklearn on the non-ignored entries, averaged over classes with positives."""
    p, t = probs.numpy(), targets.numpy()
    aps, precisions, recalls = [], [], []
    pooled_true, pooled_pred = [], []
    for c in range(p.shape[1]):
        keep = t[:, c] != -1
        yt, ys = t[keep, c], p[keep, c]
        yp = (ys >= 0.5).astype(int)
        pooled_true.append(yt)
        pooled_pred.append(yp)
        if yt.sum() == 0:
            continue
        aps.append(average_precision_score(yt, ys))
        prec, rec, _, _ = precision_recall_fscore_support(yt, yp, average="binary", zero_division=0)
        precisions.append(prec)
        recalls.append(rec)
    op, or_, of1, _ = precision_recall_fscore_support(
        np.concatenate(pooled_true), np.concatenate(pooled_pred), average="binary", zero_division=0
    )
    cp, cr = float(np.mean(precisions)), float(np.mean(recalls))
    return {"map": float(np.mean(aps)), "cp": cp, "cr": cr, "cf1": 2 * cp * cr / (cp + cr),
            "op": op, "or": or_, "of1": of1}


def test_all_metrics_match_sklearn_on_fixed_data_with_ties_and_ignores() -> None:
    probs, targets = _fixed_data()
    got = multilabel_metrics(probs, targets, from_logits=False).as_dict()
    ref = _sklearn_reference(probs, targets)
    for key, value in ref.items():
        assert got[key] == pytest.approx(value, abs=1e-9), key
    assert got["n_classes_scored"] == N_CLASSES
    assert got["n_classes_excluded"] == 0


def test_average_precision_matches_sklearn_and_torchmetrics_per_class() -> None:
    probs, targets = _fixed_data()
    ap = average_precision_per_class(probs, targets, from_logits=False)
    for c in range(N_CLASSES):
        keep = targets[:, c] != -1
        ref = average_precision_score(targets[keep, c].numpy(), probs[keep, c].numpy())
        assert float(ap[c]) == pytest.approx(ref, abs=1e-12)
    tm = multilabel_average_precision(
        probs, targets.long(), num_labels=N_CLASSES, average="none", thresholds=None, ignore_index=-1
    )
    torch.testing.assert_close(ap, tm.double(), atol=1e-6, rtol=0)


def test_average_precision_by_hand_without_ties() -> None:
    scores = torch.tensor([[0.9], [0.8], [0.7], [0.6]])
    targets = torch.tensor([[1], [0], [1], [0]])
    # positives at ranks 1 and 3: (1/1 + 2/3) / 2
    assert mean_average_precision(scores, targets, from_logits=False) == pytest.approx((1 + 2 / 3) / 2)


def test_ties_share_the_precision_at_the_end_of_the_group_and_ignore_input_order() -> None:
    scores = torch.tensor([[0.5], [0.5], [0.5], [0.1]])
    targets = torch.tensor([[1], [0], [1], [1]])
    # threshold 0.5: TP 2, FP 1 -> P 2/3, recall step 2/3; threshold 0.1: P 3/4, recall step 1/3
    expected = (2 / 3) * (2 / 3) + (1 / 3) * (3 / 4)
    assert mean_average_precision(scores, targets, from_logits=False) == pytest.approx(expected)
    for perm in ([1, 0, 2, 3], [2, 1, 0, 3], [3, 1, 2, 0]):
        assert mean_average_precision(scores[perm], targets[perm], from_logits=False) == pytest.approx(expected)


def test_large_logits_are_ranked_exactly_not_saturated() -> None:
    logits = torch.tensor([[30.0], [25.0], [20.0]])
    targets = torch.tensor([[0], [1], [1]])
    # float32 sigmoid makes all three 1.0 (one tie group -> 2/3); the exact ranking gives (1/2 + 2/3) / 2
    assert mean_average_precision(logits, targets, from_logits=True) == pytest.approx((1 / 2 + 2 / 3) / 2)


def test_logits_and_probabilities_give_the_same_metrics() -> None:
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(50, 4, generator=g) * 3
    logits[logits.abs() < 1e-3] = 1.0  # keep away from the threshold
    targets = (torch.rand(50, 4, generator=g) < 0.4).long()
    targets[0] = 1
    a = multilabel_metrics(logits, targets, from_logits=True)
    b = multilabel_metrics(torch.sigmoid(logits.double()), targets, from_logits=False)
    for key, value in a.as_dict().items():
        assert b.as_dict()[key] == pytest.approx(value, abs=1e-9), key


def test_all_negative_class_is_excluded_counted_and_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    probs, targets = _fixed_data()
    targets = targets.clone()
    targets[:, 2] = 0
    targets[:, 4] = torch.where(targets[:, 4] == 1, torch.zeros_like(targets[:, 4]), targets[:, 4])
    keep = [0, 1, 3, 5]
    with caplog.at_level(logging.DEBUG, logger="difffeat_tune.probe.metrics"):
        got = multilabel_metrics(probs, targets, from_logits=False)
        multilabel_metrics(probs, targets, from_logits=False)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "[2, 4]" in warnings[0].getMessage()
    assert got.n_classes_scored == 4 and got.n_classes_excluded == 2
    ref_map = np.mean([average_precision_score(targets[targets[:, c] != -1, c], probs[targets[:, c] != -1, c])
                       for c in keep])
    assert got.map == pytest.approx(ref_map, abs=1e-12)
    ap = average_precision_per_class(probs, targets, from_logits=False)
    assert torch.isnan(ap[[2, 4]]).all() and not torch.isnan(ap[keep]).any()
    # CP/CR over the scored classes only; OP still counts the excluded classes' false positives
    ref = _sklearn_reference(probs[:, keep], targets[:, keep])
    assert got.cp == pytest.approx(ref["cp"]) and got.cr == pytest.approx(ref["cr"])
    pooled = _sklearn_reference(probs, targets)
    assert got.op == pytest.approx(pooled["op"]) and got.or_ == pytest.approx(pooled["or"])


def test_all_positive_class_has_ap_one() -> None:
    scores = torch.tensor([[0.2, 0.9], [0.7, 0.1], [0.4, 0.3]])
    targets = torch.tensor([[1, 1], [1, 0], [1, 0]])
    ap = average_precision_per_class(scores, targets, from_logits=False)
    assert float(ap[0]) == pytest.approx(1.0)
    assert float(ap[0]) == pytest.approx(average_precision_score([1, 1, 1], [0.2, 0.7, 0.4]))


def test_class_without_predicted_positive_has_precision_zero() -> None:
    scores = torch.tensor([[0.9, 0.1], [0.8, 0.2], [0.1, 0.3]])
    targets = torch.tensor([[1, 1], [0, 0], [0, 1]])
    m = multilabel_metrics(scores, targets, from_logits=False)
    # class 0: P 1/2, R 1; class 1: nothing predicted -> P 0, R 0
    assert m.cp == pytest.approx(0.25) and m.cr == pytest.approx(0.5)
    assert m.cf1 == pytest.approx(2 * 0.25 * 0.5 / 0.75)
    assert m.op == pytest.approx(0.5) and m.or_ == pytest.approx(1 / 3)


def test_threshold_is_inclusive_at_one_half() -> None:
    scores = torch.tensor([[0.5], [0.49]])
    targets = torch.tensor([[1], [1]])
    assert multilabel_metrics(scores, targets, from_logits=False).or_ == pytest.approx(0.5)
    logits = torch.tensor([[0.0], [-1e-6]])
    assert multilabel_metrics(logits, targets, from_logits=True).or_ == pytest.approx(0.5)


def test_ignored_entries_equal_removing_them() -> None:
    scores = torch.tensor([[0.95], [0.9], [0.8], [0.3], [0.2]])
    with_ignore = torch.tensor([[-1], [1], [0], [1], [-1]])
    removed_scores, removed_targets = scores[1:4], with_ignore[1:4]
    a = multilabel_metrics(scores, with_ignore, from_logits=False)
    b = multilabel_metrics(removed_scores, removed_targets, from_logits=False)
    assert a == b
    # the ignored top-ranked entry is neither a false positive (OP) nor a miss
    assert a.op == pytest.approx(0.5) and a.map == pytest.approx((1 + 2 / 3) / 2)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_scores_raise(bad: float) -> None:
    scores = torch.tensor([[0.2, 0.4], [0.6, bad]])
    targets = torch.tensor([[1, 0], [0, 1]])
    with pytest.raises(ProbeInputError, match="NaN/Inf"):
        multilabel_metrics(scores, targets, from_logits=True)
    with pytest.raises(ProbeInputError, match="NaN/Inf"):
        singlelabel_metrics(scores, torch.tensor([0, 1]))


def test_input_errors() -> None:
    targets = torch.tensor([[1, 0], [0, 1]])
    with pytest.raises(ProbeInputError, match="from_logits=True"):
        multilabel_metrics(torch.tensor([[2.0, 0.1], [0.3, 0.4]]), targets, from_logits=False)
    with pytest.raises(ProbeInputError, match="does not match"):
        multilabel_metrics(torch.rand(3, 2), targets, from_logits=False)
    with pytest.raises(ProbeInputError, match=r"\{-1, 0, 1\}"):
        multilabel_metrics(torch.rand(2, 2), torch.tensor([[2, 0], [0, 1]]), from_logits=False)
    with pytest.raises(ProbeInputError, match="no class has a positive"):
        multilabel_metrics(torch.rand(2, 2), torch.zeros(2, 2, dtype=torch.long), from_logits=False)
    assert issubclass(ProbeInputError, DataError) and issubclass(ProbeInputError, DiffFeatError)


def test_batched_map_equals_each_probes_map_with_ties_ignores_and_an_excluded_class() -> None:
    probs, targets = _fixed_data()
    targets = targets.clone()
    targets[:, 3] = torch.where(targets[:, 3] == 1, torch.zeros_like(targets[:, 3]), targets[:, 3])  # no positive
    g = torch.Generator().manual_seed(3)
    # probe 0: the tied probabilities; the others: coarse logits with ties, one of them reversed
    scores = torch.stack([probs, *(torch.randint(-4, 5, (N_ROWS, N_CLASSES), generator=g).float() for _ in range(3))])
    scores[3] = -scores[2]
    got = batched_mean_average_precision(scores, targets)
    assert got.dtype == torch.float64 and got.shape == (4,)
    for k in range(4):
        assert float(got[k]) == pytest.approx(mean_average_precision(scores[k], targets, from_logits=True), abs=1e-12)


def test_ap_is_the_same_in_every_score_dtype_and_signed_zeros_tie() -> None:
    probs, targets = _fixed_data()
    ap = average_precision_per_class(probs, targets, from_logits=False)
    for dtype in (torch.float64, torch.bfloat16, torch.float16):  # multiples of 1/8: exact in each
        torch.testing.assert_close(average_precision_per_class(probs.to(dtype), targets, from_logits=False), ap,
                                   atol=1e-15, rtol=0)
    scores = torch.tensor([[0.0], [-0.0], [0.0], [-0.0], [1.0]])
    labels = torch.tensor([[1], [0], [0], [1], [0]])
    # one tie group of four zeros after a negative: both positives get precision 2/5
    assert float(average_precision_per_class(scores, labels, from_logits=True)[0]) == pytest.approx(0.4)


def test_batched_map_blocks_give_the_same_values_as_one_block(monkeypatch: pytest.MonkeyPatch) -> None:
    probs, targets = _fixed_data()
    scores = torch.stack([probs, probs.flip(0), 1 - probs])
    whole = batched_mean_average_precision(scores, targets)
    import difffeat_tune.probe.metrics as metrics

    monkeypatch.setattr(metrics, "AP_CHUNK_ELEMENTS", 2 * N_ROWS)  # one probe per sort
    torch.testing.assert_close(batched_mean_average_precision(scores, targets), whole, atol=0, rtol=0)


def test_batched_map_input_errors() -> None:
    probs, targets = _fixed_data()
    scores = torch.stack([probs, probs])
    scores[1, 5, 2] = float("nan")
    with pytest.raises(ProbeInputError, match=r"probes \[1\]"):
        batched_mean_average_precision(scores, targets)
    with pytest.raises(ProbeInputError, match=r"\[K, N, C\]"):
        batched_mean_average_precision(probs, targets)
    with pytest.raises(ProbeInputError, match="does not match"):
        batched_mean_average_precision(torch.stack([probs]), targets[:, :3])
    with pytest.raises(ProbeInputError, match="no class has a positive"):
        batched_mean_average_precision(torch.stack([probs]), torch.zeros_like(targets))


def test_batched_top1_equals_each_probes_top1() -> None:
    g = torch.Generator().manual_seed(12)
    scores = torch.randn(3, 40, 7, generator=g)
    labels = torch.randint(0, 7, (40,), generator=g)
    got = batched_top1_accuracy(scores, labels)
    assert got.tolist() == [top_k_accuracy(scores[k], labels, 1) for k in range(3)]
    one_hot = torch.nn.functional.one_hot(labels, 7).to(torch.int8)
    assert torch.equal(batched_top1_accuracy(scores, one_hot), got)


def test_finite_checks_find_nan_and_inf_and_are_not_fooled_by_overflowing_sums() -> None:
    x = torch.zeros(4, 3, 5)
    x[1, 2, 3] = float("nan")
    x[2, 0, 0] = float("-inf")
    x[3] = 3e38  # finite values whose sum overflows to inf
    assert finite_slices(x).tolist() == [True, False, False, True]
    assert all_finite(x[3]) and not all_finite(x) and all_finite(torch.empty(0, 3))


def test_top_k_accuracy_matches_sklearn() -> None:
    g = torch.Generator().manual_seed(11)
    scores = torch.randn(40, 7, generator=g)
    labels = torch.randint(0, 7, (40,), generator=g)
    for k in (1, 3, 5):
        ref = top_k_accuracy_score(labels.numpy(), scores.numpy(), k=k, labels=list(range(7)))
        assert top_k_accuracy(scores, labels, k) == pytest.approx(ref)
    m = singlelabel_metrics(scores, labels)
    assert m.top1 == pytest.approx(top_k_accuracy_score(labels.numpy(), scores.numpy(), k=1))
    assert m.top5 == pytest.approx(top_k_accuracy_score(labels.numpy(), scores.numpy(), k=5))
    one_hot = torch.nn.functional.one_hot(labels, 7).to(torch.int8)
    assert singlelabel_metrics(scores, one_hot) == m


def test_top5_is_clipped_to_the_number_of_classes() -> None:
    scores = torch.tensor([[0.1, 0.7, 0.2], [0.5, 0.3, 0.2], [0.1, 0.3, 0.6]])
    labels = torch.tensor([0, 0, 1])
    m = singlelabel_metrics(scores, labels)
    assert m.top1 == pytest.approx(1 / 3)
    assert m.top5 == pytest.approx(1.0)
    assert top_k_accuracy(scores, labels, 2) == pytest.approx(2 / 3)


def test_singlelabel_target_errors() -> None:
    scores = torch.rand(2, 3)
    with pytest.raises(ProbeInputError, match="exactly one 1"):
        singlelabel_metrics(scores, torch.tensor([[1, 1, 0], [0, 0, 1]]))
    with pytest.raises(ProbeInputError, match="class indices"):
        singlelabel_metrics(scores, torch.tensor([0, 3]))


def test_result_dataclasses_are_frozen_and_export_dicts() -> None:
    probs, targets = _fixed_data()
    m = multilabel_metrics(probs, targets, from_logits=False)
    assert isinstance(m, MultiLabelMetrics)
    d = m.as_dict()
    assert set(d) == {"map", "cp", "cr", "cf1", "op", "or", "of1", "n_classes_scored", "n_classes_excluded"}
    assert all(0.0 <= d[k] <= 1.0 for k in ("map", "cp", "cr", "cf1", "op", "or", "of1"))
    assert "mAP" in m.format() and math.isclose(float(m.format().split()[1]), 100 * m.map, abs_tol=0.01)
    with pytest.raises(dataclasses.FrozenInstanceError):
        m.map = 0.0  # type: ignore[misc]
    s = singlelabel_metrics(torch.rand(4, 3), torch.tensor([0, 1, 2, 0]))
    assert isinstance(s, SingleLabelMetrics) and set(s.as_dict()) == {"top1", "top5"}


def test_metrics_are_listed_in_the_order_papers_write_them_without_counts() -> None:
    scores, targets = _fixed_data()
    metrics = multilabel_metrics(scores, targets, from_logits=True).as_dict()
    assert [name for _, name, _ in ordered_metrics(metrics)] == ["mAP", "CP", "CR", "CF1", "OP", "OR", "OF1"]
    assert [value for key, _, value in ordered_metrics(metrics)] == [metrics[k] for k in
                                                                     ("map", "cp", "cr", "cf1", "op", "or", "of1")]
    assert [name for _, name, _ in ordered_metrics({"top5": 0.9, "top1": 0.5})] == ["top-1", "top-5"]
