"""Closed-form proxies of a trained linear probe: rank (t, b) configurations before training them.

Two scores need no gradient steps, only second moments of the features accumulated over row
chunks (``D x D`` accumulators: memory does not grow with the number of rows) and one
eigendecomposition in float64, on the device of the input:

* :func:`logme`: the LogME score (You et al., "LogME: Practical Assessment of Pre-trained Models
  for Transfer Learning", ICML 2021), the maximum log evidence per row of a Bayesian linear
  regression from the features to each label column, with the prior and noise precisions
  (alpha, beta) found by the fixed-point iteration of the authors' later formulation ("Ranking
  and Tuning Pre-trained Models", arXiv 2110.10545). No hyper-parameters, no validation rows.
* :func:`ridge_score`: a ridge regression probe on the 0/1 targets whose ridge strength is
  chosen by generalised cross-validation (GCV) from the same kind of eigendecomposition, scored
  with the search's selection metric (mAP, or top-1 for single-label data) on validation rows.

Both are proxies: they model the labels by least squares, not by the probe's logistic loss and
optimiser, so they rank configurations, they do not predict the trained probe's score.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from difffeat_tune.data._base import IGNORE
from difffeat_tune.probe.metrics import (
    ProbeInputError, mean_average_precision, singlelabel_class_indices, top_k_accuracy,
)

logger = logging.getLogger(__name__)

#: Rows widened to float64 at a time while the moments are accumulated (bounds the working copy).
CHUNK_ROWS = 4096
#: Iterations and relative tolerance on alpha / beta of the LogME fixed point (the authors' values).
_LOGME_ITERATIONS = 11
_LOGME_TOLERANCE = 1e-3
#: Added to the squared norms the fixed point divides by (the authors' value): keeps a column
#: that the features fit exactly (or an all-zero column) finite.
_LOGME_EPSILON = 1e-5
#: Default ridge candidates, as multiples of the mean eigenvalue of the centred Gram matrix.
_RIDGE_GRID = tuple(float(r) for r in np.logspace(-6, 3, 46))


# --------------------------------------------------------------------------------------------
# inputs


def _as_tensor(values: np.ndarray | Tensor, device: torch.device | None = None) -> Tensor:
    """A tensor view of ``values`` (numpy arrays become CPU tensors), on ``device`` when given."""
    tensor = values if isinstance(values, Tensor) else torch.from_numpy(np.asarray(values))
    return tensor if device is None else tensor.to(device)


def _check_features(features: Tensor, name: str) -> None:
    if features.ndim != 2 or features.shape[0] == 0 or features.shape[1] == 0:
        raise ProbeInputError(f"{name} must be a non-empty [N, D] matrix, got shape {tuple(features.shape)}")
    if not features.is_floating_point():
        raise ProbeInputError(f"{name} must be floating point, got {features.dtype}")


def _label_columns(labels: Tensor, n_rows: int, name: str) -> tuple[Tensor, Tensor]:
    """``(targets, known)``: float64 0/1 targets ``[N, C]`` and a bool mask of the non-ignored entries.

    ``[N]`` integer labels are class ids (one column per class id up to the largest); ``[N, C]``
    labels are 0/1 columns with -1 = ignore.
    """
    if labels.shape[:1] != (n_rows,) or labels.ndim not in (1, 2):
        raise ProbeInputError(f"{name} must be [N] class ids or an [N, C] matrix with N = {n_rows} rows, "
                              f"got shape {tuple(labels.shape)}")
    if labels.ndim == 1:
        if labels.is_floating_point() or labels.dtype == torch.bool:
            raise ProbeInputError(f"{name}: [N] labels must be integer class ids, got {labels.dtype}")
        ids = labels.long()
        if bool((ids < 0).any()):
            raise ProbeInputError(f"{name}: class ids must be >= 0")
        targets = torch.nn.functional.one_hot(ids, int(ids.max()) + 1).double()
        return targets, torch.ones_like(targets, dtype=torch.bool)
    values = labels.long() if not labels.is_floating_point() else labels
    valid = (values == 0) | (values == 1) | (values == IGNORE)
    if not bool(valid.all()):
        raise ProbeInputError(f"{name}: [N, C] labels must be in {{-1, 0, 1}} (-1 = ignore)")
    known = values != IGNORE
    return (values == 1).double(), known


@dataclass(frozen=True)
class _Moments:
    """Float64 second moments of features ``F`` and targets ``Y``, accumulated over row chunks.

    Attributes:
        gram: ``[D, D]`` ``F^T F``.
        cross: ``[D, C]`` ``F^T Y``.
        feature_sum: ``[D]`` column sums of ``F``.
        dropped_gram: ``[P, D, D]`` ``F_p^T F_p`` over the rows each of P masks drops.
    """

    gram: Tensor
    cross: Tensor
    feature_sum: Tensor
    dropped_gram: Tensor

    @classmethod
    def of(cls, features: Tensor, targets: Tensor, chunk_rows: int, name: str,
           dropped: Tensor | None = None) -> _Moments:
        """Accumulate over chunks of ``chunk_rows`` rows; ``dropped``: ``[P, N]`` bool masks of rows."""
        if not isinstance(chunk_rows, int) or chunk_rows < 1:
            raise ProbeInputError(f"chunk_rows must be a positive integer, got {chunk_rows!r}")
        n_rows, dim = features.shape
        dev = features.device
        masks = dropped if dropped is not None else torch.zeros(0, n_rows, dtype=torch.bool, device=dev)
        gram = torch.zeros(dim, dim, dtype=torch.float64, device=dev)
        cross = torch.zeros(dim, targets.shape[1], dtype=torch.float64, device=dev)
        feature_sum = torch.zeros(dim, dtype=torch.float64, device=dev)
        dropped_gram = torch.zeros(masks.shape[0], dim, dim, dtype=torch.float64, device=dev)
        for start in range(0, n_rows, chunk_rows):
            chunk = features[start:start + chunk_rows].double()
            if not bool(torch.isfinite(chunk).all()):
                raise ProbeInputError(f"{name} contain NaN/Inf", "check the feature store (`extract --verify`)")
            gram += chunk.T @ chunk
            cross += chunk.T @ targets[start:start + chunk_rows]
            feature_sum += chunk.sum(dim=0)
            for p in range(masks.shape[0]):  # the few ignored rows are subtracted later, not the many known added
                rows = chunk[masks[p, start:start + chunk_rows]]
                if rows.shape[0]:
                    dropped_gram[p] += rows.T @ rows
        return cls(gram, cross, feature_sum, dropped_gram)


# --------------------------------------------------------------------------------------------
# LogME


def logme(features: np.ndarray | Tensor, labels: np.ndarray | Tensor, *, chunk_rows: int = CHUNK_ROWS) -> float:
    """LogME score of ``features`` for ``labels``: the mean per-row maximum log evidence over label columns.

    Each label column is a 0/1 regression target of a Bayesian linear model
    ``y = F w + noise`` with prior ``w ~ N(0, I / alpha)`` and noise precision ``beta``; alpha and
    beta are found by the fixed-point iteration of the LogME authors (at most 11 steps, stopping
    when alpha / beta changes by at most 0.1 %), and the column's score is its log evidence at
    that point divided by its number of rows. The value equals the authors' regression mode on
    the same 0/1 matrix. Higher is better; as in the paper, scores of features of different
    widths on the same rows and labels are compared directly.

    Computed from the Gram matrix ``F^T F`` and ``F^T Y`` accumulated in float64 over chunks of
    ``chunk_rows`` rows, then one symmetric eigendecomposition per distinct pattern of ignored
    rows, on the features' device. Wide (N <= D) and tall (N > D) features follow the two forms
    of the reference: wide ones count all N singular values (the zero ones too), tall ones only
    the non-zero ones (the numerical rank, relative tolerance; the reference's absolute
    threshold usually keeps rounding-level values of rank-deficient tall features, which changes
    the score by ``(D - rank) log(alpha) / 2N``).

    Args:
        features: ``[N, D]`` floating features (numpy or torch; CPU or CUDA).
        labels: ``[N, C]`` 0/1 multi-label targets where -1 entries are ignored (a column with
            ignored entries uses only its known rows; a column without any positive is left
            out), or ``[N]`` integer class ids (one-hot columns; absent ids are left out).
        chunk_rows: rows widened to float64 at a time.

    Returns:
        The mean over the scored columns of each column's log evidence per row.

    Raises:
        ProbeInputError: malformed features or labels, non-finite features, or no column with a
            positive label.

    Example:
        >>> rng = np.random.default_rng(0)
        >>> x = rng.normal(size=(200, 8))
        >>> y = (x[:, :1] > 0).astype(np.int8)
        >>> logme(x, y) > logme(rng.normal(size=(200, 8)), y)
        True
    """
    feats = _as_tensor(features)
    _check_features(feats, "features")
    targets, known = _label_columns(_as_tensor(labels, feats.device), feats.shape[0], "labels")
    scored = ((targets == 1) & known).any(dim=0)
    if not bool(scored.any()):
        raise ProbeInputError("no label column has a positive entry: LogME is undefined", "check the labels")
    if not bool(scored.all()):
        logger.debug("LogME leaves out %d label columns without positives", int((~scored).sum()))
    targets, known = targets[:, scored] * known[:, scored], known[:, scored]  # ignored entries -> 0

    # Columns that ignore the same rows share one Gram matrix: group them by their mask.
    ignoring = ~known.all(dim=0)
    patterns, pattern_of = (torch.unique(known[:, ignoring].T, dim=0, return_inverse=True)
                            if bool(ignoring.any()) else (known.new_zeros(0, known.shape[0]), None))
    moments = _Moments.of(feats, targets, chunk_rows, "features", dropped=~patterns)
    gram, cross, ignored_gram = moments.gram, moments.cross, moments.dropped_gram
    squares = targets.square().sum(dim=0)  # y^T y per column (known rows only: ignored entries are 0)

    evidence = torch.empty(targets.shape[1], dtype=torch.float64, device=feats.device)
    groups: list[tuple[Tensor, Tensor]] = []
    full = torch.nonzero(~ignoring).flatten()
    if full.numel():
        groups.append((full, gram))
    ignoring_cols = torch.nonzero(ignoring).flatten()
    for p in range(patterns.shape[0]):
        assert pattern_of is not None
        groups.append((ignoring_cols[pattern_of == p], gram - ignored_gram[p]))
    for columns, group_gram in groups:
        n = int(known[:, columns[0]].sum())
        evidence[columns] = _fixed_point_evidence(group_gram, cross[:, columns], squares[columns], n)
    return float(evidence.mean())


def _spectrum(gram: Tensor, n_rows: int) -> tuple[Tensor, Tensor, int]:
    """``(sigma, vectors, k)``: the non-zero eigenvalues of ``gram`` with their eigenvectors, and
    how many singular values the evidence counts (all ``n_rows`` of a wide matrix, the rank of a
    tall one)."""
    values, vectors = torch.linalg.eigh(gram)
    dim = gram.shape[0]
    top = float(values[-1]) if values.numel() else 0.0
    # rounding in a float64 Gram matrix leaves |eigenvalue| ~ eps * ||G||: treat those as zero
    tol = max(top, 0.0) * max(n_rows, dim) * torch.finfo(torch.float64).eps * 10
    keep = values > tol
    keep[: max(0, dim - min(n_rows, dim))] = False  # at most min(N, D) non-zero values
    rank = int(keep.sum())
    return values[keep], vectors[:, keep], (n_rows if n_rows <= dim else rank)


def _fixed_point_evidence(gram: Tensor, cross: Tensor, squares: Tensor, n_rows: int) -> Tensor:
    """Per-row log evidence ``[C]`` of each column of ``Y`` from ``G = F^T F``, ``F^T Y`` and ``diag(Y^T Y)``."""
    dim = gram.shape[0]
    sigma, vectors, counted = _spectrum(gram, n_rows)
    zeros = counted - sigma.numel()  # counted zero singular values: log(alpha + 0) each
    sigma = sigma[:, None]
    # x = U^T y on the non-zero singular directions, from V^T F^T y = S U^T y
    x2 = (vectors.T @ cross).square() / sigma
    residual_x2 = squares - x2.sum(dim=0)  # what lies outside the span of the features
    alpha = torch.ones_like(squares)
    beta = torch.ones_like(squares)
    m2 = torch.zeros_like(squares)
    res2 = torch.zeros_like(squares)
    active = torch.ones_like(squares, dtype=torch.bool)
    for _ in range(_LOGME_ITERATIONS):
        # every column runs the same steps; a converged column keeps its last values
        t = alpha / beta
        gamma = (sigma / (sigma + t)).sum(dim=0)
        step_m2 = (sigma * x2 / (t + sigma).square()).sum(dim=0)
        step_res2 = (x2 / (1 + sigma / t).square()).sum(dim=0) + residual_x2
        new_alpha = gamma / (step_m2 + _LOGME_EPSILON)
        new_beta = (n_rows - gamma) / (step_res2 + _LOGME_EPSILON)
        m2 = torch.where(active, step_m2, m2)
        res2 = torch.where(active, step_res2, res2)
        alpha = torch.where(active, new_alpha, alpha)
        beta = torch.where(active, new_beta, beta)
        active = active & ((new_alpha / new_beta - t).abs() / t > _LOGME_TOLERANCE)
        if not bool(active.any()):
            break
    log_det = torch.log(alpha + beta * sigma).sum(dim=0) + zeros * torch.log(alpha)
    evidence = (dim / 2.0 * torch.log(alpha) + n_rows / 2.0 * torch.log(beta) - 0.5 * log_det
                - beta / 2.0 * res2 - alpha / 2.0 * m2 - n_rows / 2.0 * math.log(2 * math.pi))
    return evidence / n_rows


# --------------------------------------------------------------------------------------------
# ridge with generalised cross-validation


@dataclass(frozen=True)
class RidgeProxy:
    """A closed-form ridge probe and its validation score (see :func:`ridge_score`).

    Attributes:
        score: the selection metric on the validation rows (mAP, or top-1 for single-label).
        metric: its name ("map" or "top1").
        ridge: ``[C]`` float64 ridge strength of each label column (one shared value unless
            ``per_class``), on the CPU.
        gcv: the GCV criterion at the chosen ridge (summed over columns).
        weights: ``[D, C]`` float64 weights on the features' device.
        bias: ``[C]`` float64 intercepts.
    """

    score: float
    metric: str
    ridge: Tensor
    gcv: float
    weights: Tensor
    bias: Tensor

    def predict(self, features: np.ndarray | Tensor) -> Tensor:
        """Float64 scores ``[N, C]`` of ``features`` (on the weights' device)."""
        feats = _as_tensor(features, self.weights.device)
        return torch.cat([chunk.double() @ self.weights + self.bias for chunk in feats.split(CHUNK_ROWS)])


def ridge_score(train_features: np.ndarray | Tensor, train_labels: np.ndarray | Tensor,
                val_features: np.ndarray | Tensor, val_labels: np.ndarray | Tensor, task: str = "multilabel", *,
                ridges: tuple[float, ...] = _RIDGE_GRID, per_class: bool = False,
                chunk_rows: int = CHUNK_ROWS) -> RidgeProxy:
    """Fit a ridge regression probe on 0/1 targets in closed form and score it on validation rows.

    The weights solve ``(Fc^T Fc + lambda I) W = Fc^T Yc`` on centred features and targets (an
    unpenalised intercept), from ``F^T F``, ``F^T Y`` and the column sums accumulated in float64
    over row chunks. One eigendecomposition of the centred Gram matrix gives, for every candidate
    lambda at once, the residual sum of squares and the effective degrees of freedom
    ``df = 1 + sum sigma / (sigma + lambda)``, hence the GCV criterion
    ``N * RSS / (N - df)^2``; the minimiser is kept. A multi-label training entry of -1
    (ignore) is set to its column's mean over the known rows, so it pulls the fit towards
    neither class; on the validation rows it is ignored by mAP as everywhere in the package.

    Args:
        train_features: ``[N, D]`` features the probe is fitted on (numpy or torch).
        train_labels: ``[N, C]`` targets in {-1, 0, 1}, or single-label class ids ``[N]`` / one-hot.
        val_features: ``[M, D]`` features it is scored on.
        val_labels: ``[M, C]`` targets of the same form.
        task: "multilabel" (score = mAP) or "singlelabel" (score = top-1 accuracy).
        ridges: candidate strengths, as multiples of the mean eigenvalue of the centred Gram
            matrix (so the grid does not depend on the features' scale).
        per_class: choose lambda per label column (each column's own GCV) instead of one shared value.
        chunk_rows: rows widened to float64 at a time.

    Returns:
        A :class:`RidgeProxy`.

    Raises:
        ProbeInputError: malformed inputs, or validation labels mAP cannot score.

    Example:
        >>> rng = np.random.default_rng(0)
        >>> x, v = rng.normal(size=(300, 6)), rng.normal(size=(100, 6))
        >>> proxy = ridge_score(x, (x[:, :2] > 0).astype(np.int8), v, (v[:, :2] > 0).astype(np.int8))
        >>> proxy.score > 0.9
        True
    """
    if task not in ("multilabel", "singlelabel"):
        raise ProbeInputError(f"unknown task {task!r}", "use 'multilabel' or 'singlelabel'")
    train_x = _as_tensor(train_features)
    val_x = _as_tensor(val_features, train_x.device)
    _check_features(train_x, "train_features")
    _check_features(val_x, "val_features")
    if val_x.shape[1] != train_x.shape[1]:
        raise ProbeInputError(f"train width {train_x.shape[1]} != val width {val_x.shape[1]}")
    train_y = _as_tensor(train_labels, train_x.device)
    val_y = _as_tensor(val_labels, train_x.device)
    if task == "singlelabel":
        train_ids, val_ids = singlelabel_class_indices(train_y), singlelabel_class_indices(val_y)
        n_classes = max(int(train_ids.max()), int(val_ids.max())) + 1
        if train_y.ndim == 2:
            n_classes = max(n_classes, train_y.shape[1])
        targets = torch.nn.functional.one_hot(train_ids, n_classes).double()
    else:
        if train_y.ndim != 2 or val_y.ndim != 2 or train_y.shape[1] != val_y.shape[1]:
            raise ProbeInputError(f"multi-label labels must be [N, C] with the same C, got "
                                  f"{tuple(train_y.shape)} and {tuple(val_y.shape)}")
        targets, known = _label_columns(train_y, train_x.shape[0], "train_labels")
        # an ignored entry gets its column's mean over the known rows: no pull either way
        mean_known = (targets * known).sum(dim=0) / known.sum(dim=0).clamp(min=1)
        targets = torch.where(known, targets, mean_known)
    if targets.shape[0] != train_x.shape[0]:
        raise ProbeInputError(f"train labels have {targets.shape[0]} rows, train features {train_x.shape[0]}")

    n_rows = train_x.shape[0]
    moments = _Moments.of(train_x, targets, chunk_rows, "train_features")
    mean_x, mean_y = moments.feature_sum / n_rows, targets.mean(dim=0)
    # centring from the accumulated sums: the intercept is fitted, not penalised
    gram = moments.gram - n_rows * torch.outer(mean_x, mean_x)
    cross = moments.cross - n_rows * torch.outer(mean_x, mean_y)
    squares = (targets - mean_y).square().sum(dim=0)

    sigma, vectors = torch.linalg.eigh(gram)
    sigma = sigma.clamp(min=0.0)
    projected = vectors.T @ cross  # [D, C]
    scale = float(sigma.mean()) or 1.0
    grid = torch.tensor(ridges, dtype=torch.float64, device=sigma.device) * scale  # [L]
    denom = sigma[None, :] + grid[:, None]  # [L, D]
    # RSS(lambda) = y^T y - sum_i b_i^2 (sigma_i + 2 lambda) / (sigma_i + lambda)^2
    shrink = (sigma[None, :] + 2 * grid[:, None]) / denom.square()
    rss = (squares[None, :] - shrink @ projected.square()).clamp(min=0.0)  # [L, C]
    dof = 1.0 + (sigma[None, :] / denom).sum(dim=1)  # [L], the intercept counts as one
    room = n_rows - dof
    gcv = torch.where(room[:, None] > 1e-9 * n_rows, n_rows * rss / room[:, None].square().clamp(min=1e-300),
                      torch.full_like(rss, float("inf")))
    if per_class:
        best = gcv.argmin(dim=0)  # [C]
        gcv_value = float(gcv.gather(0, best[None, :]).sum())
    else:
        best = gcv.sum(dim=1).argmin().expand(targets.shape[1])
        gcv_value = float(gcv[best[0]].sum())
    lam = grid[best]  # [C]
    weights = vectors @ (projected / (sigma[:, None] + lam[None, :]))
    bias = mean_y - mean_x @ weights
    logger.debug("ridge proxy: lambda %s (x mean eigenvalue %.3g), GCV %.4g",
                 (lam / scale).unique().tolist(), scale, gcv_value)

    proxy = RidgeProxy(score=float("nan"), metric="map" if task == "multilabel" else "top1",
                       ridge=lam.cpu(), gcv=gcv_value, weights=weights, bias=bias)
    scores = proxy.predict(val_x)
    if task == "multilabel":
        value = mean_average_precision(scores, val_y.long(), from_logits=True)
    else:
        value = top_k_accuracy(scores, val_y, 1)
    return RidgeProxy(score=value, metric=proxy.metric, ridge=proxy.ridge, gcv=gcv_value, weights=weights, bias=bias)


__all__ = ["CHUNK_ROWS", "RidgeProxy", "logme", "ridge_score"]
