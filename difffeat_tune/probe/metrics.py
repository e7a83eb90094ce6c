"""Multi-label and single-label metrics, in the definitions of the multi-label literature.

Definitions (all values are fractions in [0, 1]; percent only in :meth:`MultiLabelMetrics.format`):

* **Targets** are an integer matrix ``[N, C]``: 1 positive, 0 negative, -1 (:data:`IGNORE`)
  "ignore this entry" (VOC's difficult objects). An ignored entry is left out of everything: of
  the ranking behind AP and of every true/false positive count. (ML-GCN's ``evaluation`` instead
  turns -1 into 0 for CP..OF1; we do not, so an ignored entry never counts as a false positive.)
* **AP** of a class: non-interpolated average precision, as in sklearn's
  ``average_precision_score``: ``AP = sum_n (R_n - R_{n-1}) P_n`` over the distinct score values
  taken as thresholds, from the highest down. Without ties this is the precision at each
  positive's rank, averaged over the class's positives. **Ties**: entries with equal scores form
  one threshold, so every positive in a tie group gets the precision measured at the end of the
  group (as if all tied entries were ranked together). The value does not depend on input order,
  unlike ML-GCN's ``AveragePrecisionMeter``, which breaks ties by sort order. AP depends only on
  the order of the scores, so logits and probabilities give the same AP (no sigmoid is applied:
  a float32 sigmoid saturates to 1.0 above a logit of ~17 and would create artificial ties).
  Computed in torch, vectorised over classes (one sort per block of classes).
  ``torchmetrics.functional.classification.multilabel_average_precision(thresholds=None,
  ignore_index=-1)`` has this exact definition (a port of sklearn's curve) and the tests check
  that both agree, but it loops over classes in Python (~0.7 ms per class per call on this CPU,
  e.g. ~60 ms for 80 classes), which would dominate the per-epoch validation of the fast loop.
* **mAP**: mean of AP over the *scored* classes. A class is scored when it has at least one
  positive among its non-ignored entries in the split. AP is undefined for the other classes:
  they are left out of the mean (and out of CP, CR, CF1, see below), their indices are logged once
  per distinct set (WARNING the first time, DEBUG after), and their number is returned as
  ``n_classes_excluded`` (with ``n_classes_scored`` the number of classes averaged over).
* **Threshold**: an entry is predicted positive when its probability is >= 0.5
  (:data:`DEFAULT_THRESHOLD`). For logits this is evaluated as ``logit >= log(t / (1 - t))``
  (``logit >= 0`` at 0.5), the same test in exact arithmetic without sigmoid rounding. ML-GCN and
  Query2Label use the same rule (``scores >= 0`` on logits).
* **CP, CR** (per-class): for each scored class, precision ``TP / (TP + FP)`` and recall
  ``TP / (TP + FN)``; a class with no predicted positive has precision 0 (ML-GCN's ``Np[Np == 0] = 1``).
  CP and CR are the means over the scored classes.
* **CF1** = ``2 CP CR / (CP + CR)``: the harmonic mean of the averaged precision and recall, as
  ML-GCN / Query2Label compute it, *not* the mean of per-class F1 (sklearn's ``average="macro"``
  F1). 0 when CP + CR = 0.
* **OP, OR, OF1** (overall): TP, FP, FN pooled over every non-ignored entry of every class
  (including the classes without positives, whose predicted positives are false positives);
  ``OP = TP / (TP + FP)`` (0 if nothing is predicted positive), ``OR = TP / (TP + FN)``,
  ``OF1 = 2 OP OR / (OP + OR)`` (0 when OP + OR = 0).
* **Top-k accuracy** (single-label): the fraction of rows whose true class is among the k highest
  scores; k is clipped to the number of classes (so top-5 with 3 classes is top-3 = 1.0). Computed
  with ``torchmetrics.functional.classification.multiclass_accuracy(average="micro", top_k=k)``.
  Softmax is monotonic, so logits and probabilities give the same result.

Scores must be finite: NaN or Inf raises :class:`ProbeInputError` (usually a diverged probe).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import Tensor

from difffeat_tune._errors import DataError
from difffeat_tune.data._base import IGNORE

logger = logging.getLogger(__name__)

#: Probability threshold for CP, CR, CF1, OP, OR, OF1.
DEFAULT_THRESHOLD = 0.5
#: k of the second single-label accuracy.
DEFAULT_TOP_K = 5
#: Metric keys (as in ``as_dict``) and their names as papers write them, in the order papers list
#: them: multi-label mAP, CP, CR, CF1, OP, OR, OF1, then single-label top-1, top-5.
METRIC_NAMES: tuple[tuple[str, str], ...] = (
    ("map", "mAP"), ("cp", "CP"), ("cr", "CR"), ("cf1", "CF1"), ("op", "OP"), ("or", "OR"), ("of1", "OF1"),
    ("top1", "top-1"), ("top5", "top-5"))
#: How many excluded class indices the WARNING names (the DEBUG record names all of them).
_MAX_INDICES_IN_WARNING = 40

#: Elements (rows x classes) per block of the vectorised AP computation (bounds peak memory).
AP_CHUNK_ELEMENTS = 1 << 22

# Sets of excluded class indices already reported at WARNING level (log once per distinct set).
_REPORTED_EXCLUSIONS: set[tuple[int, ...]] = set()


def ordered_metrics(metrics: Mapping[str, object]) -> list[tuple[str, str, float]]:
    """The metrics of ``metrics`` in :data:`METRIC_NAMES` order, as ``(key, name, value)``.

    Other keys (the class counts, anything unknown) are left out.

    Example:
        >>> ordered_metrics({"of1": 0.5, "map": 0.9, "n_classes_scored": 80})
        [('map', 'mAP', 0.9), ('of1', 'OF1', 0.5)]
    """
    return [(key, name, float(metrics[key])) for key, name in METRIC_NAMES  # type: ignore[arg-type]
            if metrics.get(key) is not None]


class ProbeInputError(DataError):
    """A probe input (features, scores or targets) is malformed: NaN/Inf, wrong shape, bad labels."""


@dataclass(frozen=True)
class MultiLabelMetrics:
    """Multi-label metrics of one split (fractions in [0, 1]; see the module docstring).

    Attributes:
        map: mean average precision over the scored classes.
        cp: per-class precision averaged over the scored classes.
        cr: per-class recall averaged over the scored classes.
        cf1: ``2 cp cr / (cp + cr)``.
        op: overall precision, pooled over all non-ignored entries.
        or_: overall recall, pooled over all non-ignored entries (``"or"`` in :meth:`as_dict`).
        of1: ``2 op or / (op + or)``.
        n_classes_scored: classes with at least one positive, the ones averaged over.
        n_classes_excluded: classes without any positive in the split (AP undefined).
    """

    map: float
    cp: float
    cr: float
    cf1: float
    op: float
    or_: float
    of1: float
    n_classes_scored: int
    n_classes_excluded: int = 0

    def as_dict(self) -> dict[str, float | int]:
        """Plain dict; the key of ``or_`` is ``"or"``."""
        out = asdict(self)
        out["or"] = out.pop("or_")
        return out

    def format(self) -> str:
        """One-line display in percent, e.g. ``mAP 98.60 CP 97.50 ... (80/80 classes)``."""
        names = (("mAP", self.map), ("CP", self.cp), ("CR", self.cr), ("CF1", self.cf1),
                 ("OP", self.op), ("OR", self.or_), ("OF1", self.of1))
        body = " ".join(f"{name} {100.0 * value:.2f}" for name, value in names)
        total = self.n_classes_scored + self.n_classes_excluded
        return f"{body} ({self.n_classes_scored}/{total} classes scored)"


@dataclass(frozen=True)
class SingleLabelMetrics:
    """Single-label metrics of one split (fractions in [0, 1]).

    Attributes:
        top1: top-1 accuracy.
        top5: top-k accuracy with k = min(5, number of classes).
    """

    top1: float
    top5: float

    def as_dict(self) -> dict[str, float]:
        """Plain dict ``{"top1": ..., "top5": ...}``."""
        return asdict(self)

    def format(self) -> str:
        """One-line display in percent."""
        return f"top-1 {100.0 * self.top1:.2f} top-5 {100.0 * self.top5:.2f}"


# --------------------------------------------------------------------------------------------
# validation


def finite_slices(x: Tensor) -> Tensor:
    """Bool ``[K]``: whether each ``x[k]`` is entirely finite (no NaN, no Inf).

    One sum per slice first (reads the data once, no temporary as large as the data): a sum is
    non-finite whenever an element is, and otherwise only when finite values overflow, so the
    exact element test runs only for the slices whose sum is not finite.
    """
    flat = x.detach().reshape(x.shape[0], -1)
    finite = torch.isfinite(flat.sum(dim=1))
    if not bool(finite.all()):
        suspects = torch.nonzero(~finite).flatten()
        finite[suspects] = torch.isfinite(flat[suspects]).all(dim=1)
    return finite


def all_finite(x: Tensor) -> bool:
    """Whether every element of ``x`` is finite (see :func:`finite_slices`)."""
    return bool(finite_slices(x.reshape(1, -1))[0]) if x.numel() else True


def _check_scores(scores: Tensor, *, from_logits: bool | None) -> None:
    if not isinstance(scores, Tensor):
        raise ProbeInputError(f"scores must be a torch.Tensor, got {type(scores).__name__}")
    if scores.ndim != 2 or scores.shape[0] == 0 or scores.shape[1] == 0:
        raise ProbeInputError(f"scores must be a non-empty [N, C] matrix, got shape {tuple(scores.shape)}")
    if not scores.is_floating_point():
        raise ProbeInputError(f"scores must be floating point, got {scores.dtype}")
    if not all_finite(scores):
        bad = int((~torch.isfinite(scores)).sum())
        raise ProbeInputError(
            f"scores contain {bad} NaN/Inf value(s) (shape {tuple(scores.shape)})",
            "the probe probably diverged: lower the learning rate or check the features",
        )
    if from_logits is False and bool(((scores < 0) | (scores > 1)).any()):
        raise ProbeInputError(
            "scores outside [0, 1] with from_logits=False",
            "pass from_logits=True for raw logits",
        )


def _check_multilabel_targets(targets: Tensor, shape: torch.Size) -> Tensor:
    if not isinstance(targets, Tensor):
        raise ProbeInputError(f"targets must be a torch.Tensor, got {type(targets).__name__}")
    if targets.shape != shape:
        raise ProbeInputError(f"targets shape {tuple(targets.shape)} does not match scores shape {tuple(shape)}")
    targets = targets.long()
    valid = (targets == 1) | (targets == 0) | (targets == IGNORE)
    if not bool(valid.all()):
        bad = torch.unique(targets[~valid])[:5].tolist()
        raise ProbeInputError(f"multi-label targets must be in {{-1, 0, 1}}, found {bad}")
    return targets


def _check_threshold(threshold: float) -> None:
    if not 0.0 < threshold < 1.0:
        raise ProbeInputError(f"threshold must be in (0, 1), got {threshold}")


def singlelabel_class_indices(targets: Tensor, n_classes: int | None = None) -> Tensor:
    """Class index per row from single-label targets.

    Args:
        targets: either class indices ``[N]`` (integer) or a one-hot matrix ``[N, C]`` with exactly
            one 1 per row (the data sets' int8 label matrix).
        n_classes: if given, indices must be below it and a matrix must have this many columns.

    Returns:
        Long tensor ``[N]``.

    Raises:
        ProbeInputError: wrong shape, a row that is not one-hot, or an index out of range.
    """
    if not isinstance(targets, Tensor):
        raise ProbeInputError(f"targets must be a torch.Tensor, got {type(targets).__name__}")
    if targets.ndim == 2:
        if n_classes is not None and targets.shape[1] != n_classes:
            raise ProbeInputError(f"targets have {targets.shape[1]} columns, scores have {n_classes}")
        binary = (targets == 0) | (targets == 1)
        if not bool(binary.all()) or not bool((targets.sum(dim=1) == 1).all()):
            bad_rows = torch.nonzero(~binary.all(dim=1) | (targets.sum(dim=1) != 1)).flatten()[:5].tolist()
            raise ProbeInputError(
                f"single-label targets must have exactly one 1 per row; rows {bad_rows} do not",
                "use task='multilabel' for multi-label data",
            )
        return targets.argmax(dim=1)
    if targets.ndim == 1:
        if targets.is_floating_point() or targets.dtype == torch.bool:
            raise ProbeInputError(f"class-index targets must be integer, got {targets.dtype}")
        indices = targets.long()
        upper = n_classes if n_classes is not None else int(indices.max()) + 1 if indices.numel() else 0
        if indices.numel() and (int(indices.min()) < 0 or int(indices.max()) >= upper):
            raise ProbeInputError(f"class indices must be in [0, {upper}), got range "
                                  f"[{int(indices.min())}, {int(indices.max())}]")
        return indices
    raise ProbeInputError(f"single-label targets must be [N] or [N, C], got shape {tuple(targets.shape)}")


# --------------------------------------------------------------------------------------------
# multi-label


def _average_precision_sorted(scores: Tensor, targets: Tensor) -> Tensor:
    """AP of every column of ``[N, C]`` scores; NaN where no positive (see :func:`_average_precision_rows`)."""
    return _average_precision_rows(scores.detach().T.contiguous(), targets.T.contiguous())


def _average_precision_rows(scores_t: Tensor, targets_t: Tensor) -> Tensor:
    """AP of every row of ``[M, N]`` scores against ``[M, N]`` targets; NaN where no positive."""
    codes_t = _target_codes(targets_t)
    return _average_precision_keys(_sorted_keys(scores_t, codes_t), has_ignored=bool((codes_t == 2).any()))


def _target_codes(targets_t: Tensor) -> Tensor:
    """int64 codes of targets for the sort keys' two low bits: 0 positive, 1 negative, 2 ignored."""
    return (targets_t != 1).to(torch.int64) + (targets_t == IGNORE).to(torch.int64)


def _descending_keys(scores_t: Tensor) -> Tensor:
    """int64 keys, two low bits free, whose ascending order is the scores' descending order.

    Equal scores get equal keys (``+ 0.0`` turns -0.0 into +0.0) and different scores different
    keys: the float32 bits of ``-score`` made monotone as integers (a negative float's magnitude
    bits are flipped). Exact for float32, bfloat16 and float16 scores.
    """
    bits = ((-scores_t.float()) + 0.0).view(torch.int32)
    return (bits ^ ((bits >> 31) & 0x7FFFFFFF)).to(torch.int64) << 2


def _sort_rows(keys: Tensor) -> Tensor:
    """Each row of an int64 matrix sorted ascending (values only).

    On the CPU numpy's sort of plain integers is an order of magnitude faster than torch's
    value-and-index sort (SIMD sorting networks on recent x86 CPUs), and sorting the scores with
    their targets packed into one key needs no index.
    """
    if keys.device.type == "cpu":
        return torch.from_numpy(np.sort(keys.numpy(), axis=1))
    return keys.sort(dim=1).values


def _sorted_keys(scores_t: Tensor, codes_t: Tensor) -> Tensor:
    """Each row's scores in decreasing order, with their target codes, as int64 keys ``score << 2 | code``.

    ``scores_t`` is ``[..., N]`` (leading dimensions are flattened into rows) and ``codes_t``
    (:func:`_target_codes`) broadcasts against it. For float64 scores (no spare bits) the score
    part is the rank of the distinct value instead.
    """
    n_rows = scores_t.shape[-1]
    if scores_t.dtype == torch.float64:
        sorted_scores, order = scores_t.reshape(-1, n_rows).sort(dim=1, descending=True)
        tie_group = torch.zeros_like(order)
        tie_group[:, 1:] = (sorted_scores[:, 1:] != sorted_scores[:, :-1]).cumsum(dim=1)
        return (tie_group << 2) | codes_t.expand_as(scores_t).reshape(-1, n_rows).gather(1, order)
    return _sort_rows((_descending_keys(scores_t) | codes_t).reshape(-1, n_rows))


def _average_precision_keys(keys: Tensor, *, has_ignored: bool) -> Tensor:
    """AP of every row of sorted keys (:func:`_sorted_keys`), vectorised; NaN where no positive.

    Along each row (decreasing score) true positives and counted entries (ignored entries count
    as neither) are accumulated; every positive contributes the precision measured at the end of
    its tie group (the last entry with the same score), and the sum is divided by the number of
    positives. This is sklearn's step-wise AP. Without ignored entries every entry is counted,
    so the counts are the positions themselves.
    """
    n_rows = keys.shape[1]
    codes = keys & 3
    positive = codes == 0
    tp = positive.cumsum(dim=1, dtype=torch.float64)
    if has_ignored:
        precision = tp / (codes != 2).cumsum(dim=1, dtype=torch.float64).clamp(min=1.0)
    else:
        precision = tp / torch.arange(1, n_rows + 1, dtype=torch.float64, device=keys.device)
    score_keys = keys >> 2
    tied_rows = torch.nonzero((score_keys[:, 1:] == score_keys[:, :-1]).any(dim=1)).flatten()
    if tied_rows.numel():
        # every positive of a tie group gets the precision at the group's end (its last entry):
        # index of that end = the smallest group-end index >= the entry's index. Only the rows
        # with ties pay for it (float logits rarely tie; probabilities of a saturated sigmoid do)
        tied = score_keys[tied_rows]
        group_end = torch.ones_like(tied, dtype=torch.bool)
        group_end[:, :-1] = tied[:, 1:] != tied[:, :-1]
        positions = torch.arange(n_rows, device=keys.device).expand_as(tied)
        end_index = torch.where(group_end, positions, n_rows - 1).flip(1).cummin(dim=1).values.flip(1)
        precision[tied_rows] = precision[tied_rows].gather(1, end_index)
    n_positive = tp[:, -1]
    ap = torch.where(positive, precision, 0.0).sum(dim=1) / n_positive.clamp(min=1.0)
    return torch.where(n_positive > 0, ap, torch.full_like(ap, float("nan")))


def _report_excluded(excluded: list[int], n_classes: int) -> None:
    if not excluded:
        return
    key = tuple(excluded)
    if key in _REPORTED_EXCLUSIONS:
        logger.debug("AP undefined for %d/%d classes without positives: %s", len(excluded), n_classes, excluded)
        return
    _REPORTED_EXCLUSIONS.add(key)
    shown = excluded[:_MAX_INDICES_IN_WARNING]
    more = "" if len(excluded) <= _MAX_INDICES_IN_WARNING else f" ... (+{len(excluded) - len(shown)} more)"
    logger.warning(
        "%d of %d classes have no positive label in this split (indices %s%s): AP undefined, "
        "excluded from mAP, CP, CR and CF1",
        len(excluded), n_classes, shown, more,
    )


def _scored_classes(targets: Tensor, *, required: str | None = None) -> Tensor:
    """Indices of the classes with a positive in checked ``[N, C]`` targets: the classes AP is defined for.

    The other classes are logged (:func:`_report_excluded`). With ``required`` (what is undefined
    otherwise, e.g. "mAP is"), a split without any scored class raises :class:`ProbeInputError`.
    """
    has_positive = (targets == 1).any(dim=0)
    _report_excluded(torch.nonzero(~has_positive).flatten().tolist(), targets.shape[1])
    scored = torch.nonzero(has_positive).flatten()
    if required is not None and scored.numel() == 0:
        raise ProbeInputError(
            f"no class has a positive label in this split ({targets.shape[1]} classes): {required} undefined",
            "check the split's labels",
        )
    return scored


def _class_ap(scores: Tensor, targets: Tensor, *, from_logits: bool,
              required: str | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """Checked targets, AP of every class (NaN where undefined) and the scored classes' indices.

    See :func:`average_precision_per_class`; ``required`` as for :func:`_scored_classes`.
    """
    _check_scores(scores, from_logits=from_logits)
    targets = _check_multilabel_targets(targets, scores.shape)
    scored = _scored_classes(targets, required=required)
    ap = torch.full((scores.shape[1],), float("nan"), dtype=torch.float64, device=scores.device)
    if scored.numel():
        columns_per_chunk = max(1, AP_CHUNK_ELEMENTS // scores.shape[0])
        for chunk in scored.split(columns_per_chunk):
            ap[chunk] = _average_precision_sorted(scores[:, chunk], targets[:, chunk])
    return targets, ap, scored


def average_precision_per_class(scores: Tensor, targets: Tensor, *, from_logits: bool) -> Tensor:
    """Average precision of every class (see the module docstring for the definition).

    Args:
        scores: ``[N, C]`` floating scores, finite.
        targets: ``[N, C]`` integer targets in {-1, 0, 1}; -1 entries are ignored.
        from_logits: True if ``scores`` are logits, False if probabilities in [0, 1]. AP is
            invariant to the monotonic sigmoid, so it only selects the validation of the range.

    Returns:
        Float64 tensor ``[C]`` on the scores' device; NaN for classes without any positive.

    Raises:
        ProbeInputError: non-finite scores, shape mismatch, labels outside {-1, 0, 1}.
    """
    return _class_ap(scores, targets, from_logits=from_logits)[1]


def mean_average_precision(scores: Tensor, targets: Tensor, *, from_logits: bool) -> float:
    """mAP over the scored classes (classes without positives are excluded; see module docstring).

    Raises:
        ProbeInputError: as :func:`average_precision_per_class`, or no class has any positive.
    """
    _, ap, scored = _class_ap(scores, targets, from_logits=from_logits, required="mAP is")
    return float(ap[scored].mean())


class MapScorer:
    """mAP of many score matrices against one target matrix: the targets are checked and laid out once.

    A probe is scored on the same validation targets after every epoch; checking them, finding the
    scored classes and transposing them once per training instead of once per epoch is most of
    what one epoch's mAP costs besides the sort. Calling the scorer on ``[K, N, C]`` scores ranks
    the K x C (probe, class) columns in blocks of one sort each. Probe k's value is what
    :func:`mean_average_precision` gives for ``scores[k]`` (same AP, ties, ignored entries and
    excluded classes, which are logged when the scorer is built).

    Args:
        targets: ``[N, C]`` integer targets in {-1, 0, 1}.

    Raises:
        ProbeInputError: labels outside {-1, 0, 1}, or no class with a positive label.

    Example:
        >>> scorer = MapScorer(torch.tensor([[1], [0]]))
        >>> scorer(torch.tensor([[[0.9], [0.1]], [[0.1], [0.9]]])).tolist()   # 2 probes, 2 rows, 1 class
        [1.0, 0.5]
    """

    def __init__(self, targets: Tensor) -> None:
        if not isinstance(targets, Tensor) or targets.ndim != 2:
            shape = tuple(targets.shape) if isinstance(targets, Tensor) else type(targets).__name__
            raise ProbeInputError(f"multi-label targets must be an [N, C] matrix, got {shape}")
        targets = _check_multilabel_targets(targets, targets.shape)
        self.shape = targets.shape
        self.scored = _scored_classes(targets, required="mAP is")
        self.codes_t = _target_codes(targets[:, self.scored].T)  # [scored classes, N], sort-key codes
        self.has_ignored = bool((self.codes_t == 2).any())

    def __call__(self, scores: Tensor) -> Tensor:
        """Float64 mAP ``[K]`` of ``[K, N, C]`` finite scores (logits or probabilities).

        Raises:
            ProbeInputError: a shape that does not match the targets, or NaN/Inf (naming the probes).
        """
        if not isinstance(scores, Tensor) or scores.ndim != 3 or scores.shape[0] == 0 or not scores.is_floating_point():
            shape = tuple(scores.shape) if isinstance(scores, Tensor) else type(scores).__name__
            raise ProbeInputError(f"batched scores must be a non-empty floating [K, N, C] tensor, got {shape}")
        if scores.shape[1:] != self.shape:
            raise ProbeInputError(f"scores shape {tuple(scores.shape[1:])} does not match targets shape "
                                  f"{tuple(self.shape)}")
        finite = finite_slices(scores)
        if not bool(finite.all()):
            raise ProbeInputError(
                f"scores of probes {torch.nonzero(~finite).flatten().tolist()} contain NaN/Inf",
                "the probe probably diverged: lower the learning rate or check the features",
            )
        n_probes, n_rows = scores.shape[:2]
        n_scored = self.scored.numel()
        # one row per (probe, scored class), probe-major
        scores = scores.detach() if n_scored == self.shape[1] else scores.detach()[:, :, self.scored]
        scores_t = scores.transpose(1, 2).reshape(n_probes, n_scored, n_rows)
        ap = torch.empty(n_probes, n_scored, dtype=torch.float64, device=scores.device)
        probes_per_chunk = max(1, AP_CHUNK_ELEMENTS // (n_rows * n_scored))
        for start in range(0, n_probes, probes_per_chunk):
            chunk = scores_t[start:start + probes_per_chunk]
            keys = _sorted_keys(chunk, self.codes_t)  # the class codes broadcast over the probes
            ap[start:start + probes_per_chunk] = _average_precision_keys(
                keys, has_ignored=self.has_ignored).view(-1, n_scored)
        return ap.mean(dim=1)


def batched_mean_average_precision(scores: Tensor, targets: Tensor) -> Tensor:
    """mAP of K probes scored against the same targets: ``MapScorer(targets)(scores)``.

    Args:
        scores: ``[K, N, C]`` finite scores (logits or probabilities: AP depends only on the order).
        targets: ``[N, C]`` integer targets in {-1, 0, 1}, shared by the K probes.

    Returns:
        Float64 tensor ``[K]``; entry k equals ``mean_average_precision(scores[k], targets, ...)``.

    Raises:
        ProbeInputError: as :class:`MapScorer`.
    """
    if isinstance(targets, Tensor) and isinstance(scores, Tensor) and scores.ndim == 3 and targets.shape != scores.shape[1:]:
        raise ProbeInputError(f"targets shape {tuple(targets.shape)} does not match scores shape {tuple(scores.shape[1:])}")
    return MapScorer(targets)(scores)


def batched_top1_accuracy(scores: Tensor, targets: Tensor) -> Tensor:
    """Top-1 accuracy of K probes against the same class indices, as :func:`top_k_accuracy` with k = 1.

    Args:
        scores: ``[K, N, C]`` finite scores (C >= 2).
        targets: class indices ``[N]`` (see :func:`singlelabel_class_indices`).

    Returns:
        Float32 tensor ``[K]`` (the fraction computed as torchmetrics does, in float32).
    """
    if scores.ndim != 3 or scores.shape[2] < 2:
        raise ProbeInputError(f"batched single-label scores must be [K, N, C>=2], got {tuple(scores.shape)}")
    indices = singlelabel_class_indices(targets, scores.shape[2])
    if indices.shape[0] != scores.shape[1]:
        raise ProbeInputError(f"targets have {indices.shape[0]} rows, scores have {scores.shape[1]}")
    correct = (scores.argmax(dim=2) == indices).sum(dim=1)
    return correct.float() / float(indices.shape[0])


def _ratio(num: Tensor, den: Tensor) -> Tensor:
    """``num / den`` with 0 where ``den == 0``."""
    num = num.double()
    den = den.double()
    return torch.where(den > 0, num / den.clamp(min=1.0), torch.zeros_like(num))


def _harmonic(p: float, r: float) -> float:
    return 0.0 if p + r == 0.0 else 2.0 * p * r / (p + r)


def multilabel_metrics(
    scores: Tensor,
    targets: Tensor,
    *,
    from_logits: bool,
    threshold: float = DEFAULT_THRESHOLD,
) -> MultiLabelMetrics:
    """mAP, CP, CR, CF1, OP, OR, OF1 of one split.

    Args:
        scores: ``[N, C]`` finite scores: logits (``from_logits=True``) or probabilities.
        targets: ``[N, C]`` integer targets in {-1, 0, 1}; -1 entries are ignored everywhere.
        from_logits: whether ``scores`` are logits (thresholded at ``logit(threshold)``) or
            probabilities in [0, 1] (thresholded at ``threshold``). No default: say which.
        threshold: probability threshold for the count-based metrics, in (0, 1).

    Returns:
        :class:`MultiLabelMetrics`; class-averaged values are over the classes with at least one
        positive, whose number is ``n_classes_scored``.

    Raises:
        ProbeInputError: non-finite scores, probabilities outside [0, 1], shape mismatch, labels
            outside {-1, 0, 1}, or no class with a positive label.
    """
    _check_threshold(threshold)
    targets, ap, scored = _class_ap(scores, targets, from_logits=from_logits, required="metrics are")
    n_scored = scored.numel()
    cut = math.log(threshold / (1.0 - threshold)) if from_logits else threshold
    valid = targets != IGNORE
    positive = targets == 1
    predicted = (scores >= cut) & valid
    tp = (predicted & positive).sum(dim=0)
    n_predicted = predicted.sum(dim=0)
    n_positive = positive.sum(dim=0)

    class_precision = _ratio(tp, n_predicted)[scored]
    class_recall = _ratio(tp, n_positive)[scored]
    cp = float(class_precision.mean())
    cr = float(class_recall.mean())
    op = float(_ratio(tp.sum(), n_predicted.sum()))
    or_ = float(_ratio(tp.sum(), n_positive.sum()))
    return MultiLabelMetrics(
        map=float(ap[scored].mean()),
        cp=cp,
        cr=cr,
        cf1=_harmonic(cp, cr),
        op=op,
        or_=or_,
        of1=_harmonic(op, or_),
        n_classes_scored=n_scored,
        n_classes_excluded=int(ap.numel()) - n_scored,
    )


# --------------------------------------------------------------------------------------------
# single-label


def top_k_accuracy(scores: Tensor, targets: Tensor, k: int) -> float:
    """Fraction of rows whose true class is among the ``min(k, C)`` highest scores.

    Args:
        scores: ``[N, C]`` finite logits or probabilities (C >= 2).
        targets: class indices ``[N]`` or one-hot ``[N, C]``.
        k: requested k (>= 1), clipped to C.

    Raises:
        ProbeInputError: non-finite scores, bad targets, C < 2 or k < 1.
    """
    _check_scores(scores, from_logits=None)
    n_classes = scores.shape[1]
    if n_classes < 2:
        raise ProbeInputError(f"single-label scores need at least 2 classes, got {n_classes}")
    if k < 1:
        raise ProbeInputError(f"top-k accuracy needs k >= 1, got {k}")
    indices = singlelabel_class_indices(targets, n_classes)
    if indices.shape[0] != scores.shape[0]:
        raise ProbeInputError(f"targets have {indices.shape[0]} rows, scores have {scores.shape[0]}")
    # Imported here: torchmetrics loads its whole functional API (2.5 s), needed only by single-label tasks.
    from torchmetrics.functional.classification import multiclass_accuracy

    value = multiclass_accuracy(
        scores.detach(), indices, num_classes=n_classes, top_k=min(k, n_classes), average="micro"
    )
    return float(value)


def singlelabel_metrics(scores: Tensor, targets: Tensor, *, top_k: int = DEFAULT_TOP_K) -> SingleLabelMetrics:
    """Top-1 and top-k (k = ``top_k`` clipped to the number of classes) accuracy.

    Args:
        scores: ``[N, C]`` finite logits or probabilities (softmax does not change the ranking).
        targets: class indices ``[N]`` or one-hot ``[N, C]``.
        top_k: k of the second accuracy (stored in the ``top5`` field).

    Raises:
        ProbeInputError: as :func:`top_k_accuracy`.
    """
    return SingleLabelMetrics(top1=top_k_accuracy(scores, targets, 1), top5=top_k_accuracy(scores, targets, top_k))
