"""The closed-form proxies: LogME against a direct SVD formulation, ridge with GCV against a direct solve."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from difffeat_tune.probe import RidgeProxy, logme, ridge_score
from difffeat_tune.probe.metrics import ProbeInputError

pytestmark = pytest.mark.usefixtures("one_thread")


def _direct_logme_column(f: np.ndarray, y: np.ndarray) -> float:
    """The fixed-point LogME evidence per row of one 0/1 column, from the thin SVD of the whole matrix.

    Written out step by step: at most 11 updates of (alpha, beta) from t = alpha / beta, stopping
    when the new t is within 0.1 % of the old; the evidence uses the last (alpha, beta) with the
    squared norms computed at the t they came from. A wide matrix (N <= D) counts all N singular
    values; a tall one its non-zero ones.
    """
    n, d = f.shape
    u, s, _ = np.linalg.svd(f, full_matrices=False)
    if n > d:
        keep = s > 1e-10 * s[0]
        u, s = u[:, keep], s[keep]
    sigma = s**2
    x2 = (u.T @ y) ** 2
    outside = float(y @ y - x2.sum())
    alpha, beta = 1.0, 1.0
    for _ in range(11):
        t = alpha / beta
        gamma = float(np.sum(sigma / (sigma + t)))
        m2 = float(np.sum(sigma * x2 / (t + sigma) ** 2))
        res2 = float(np.sum(x2 / (1 + sigma / t) ** 2)) + outside
        alpha = gamma / (m2 + 1e-5)
        beta = (n - gamma) / (res2 + 1e-5)
        if abs(alpha / beta - t) / t <= 1e-3:
            break
    evidence = (d / 2 * math.log(alpha) + n / 2 * math.log(beta) - 0.5 * float(np.sum(np.log(alpha + beta * sigma)))
                - beta / 2 * res2 - alpha / 2 * m2 - n / 2 * math.log(2 * math.pi))
    return evidence / n


def _direct_logme(f: np.ndarray, labels: np.ndarray) -> float:
    """Mean over the columns with a positive, each on its known rows (label != -1)."""
    values = []
    for j in range(labels.shape[1]):
        known = labels[:, j] != -1
        y = (labels[known, j] == 1).astype(np.float64)
        if y.any():
            values.append(_direct_logme_column(f[known], y))
    return float(np.mean(values))


def _data(n: int, d: int, c: int, seed: int, noise: float = 2.0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d)) * rng.uniform(0.3, 3.0, size=d) + rng.normal(size=d)
    y = (x @ rng.normal(size=(d, c)) + rng.normal(scale=noise, size=(n, c)) > 0.3).astype(np.int8)
    return x, y


def _close(a: float, b: float, rel: float = 1e-6) -> bool:
    return abs(a - b) <= rel * abs(b)


@pytest.mark.parametrize(("n", "d"), [(400, 24), (900, 64), (40, 90), (25, 25)],
                         ids=["tall", "tall64", "wide", "square"])
def test_logme_equals_the_direct_svd_fixed_point(n: int, d: int) -> None:
    x, y = _data(n, d, 4, seed=n + d)
    assert _close(logme(x, y), _direct_logme(x, y))


def test_logme_chunks_do_not_change_the_score() -> None:
    x, y = _data(500, 16, 3, seed=1)
    whole = logme(x, y, chunk_rows=10_000)
    assert _close(logme(x, y, chunk_rows=7), whole, 1e-10)
    assert _close(logme(x, y, chunk_rows=128), whole, 1e-10)


def test_logme_ignored_entries_use_only_the_known_rows() -> None:
    x, y = _data(300, 12, 3, seed=2)
    rng = np.random.default_rng(3)
    y[rng.random(y.shape) < 0.2] = -1
    y[:, 2] = y[:, 0]  # two columns with the same ignored rows share a decomposition
    assert _close(logme(x, y, chunk_rows=50), _direct_logme(x, y))
    for j in range(3):  # each column is the evidence of its own known rows
        known = y[:, j] != -1
        assert _close(logme(x, y[:, j:j + 1]), _direct_logme_column(x[known], y[known, j].astype(np.float64)))


def test_logme_leaves_out_columns_without_positives() -> None:
    x, y = _data(200, 10, 2, seed=4)
    no_positive = np.zeros((200, 1), dtype=np.int8)
    no_positive[::5] = -1  # ignored and negative entries only
    assert _close(logme(x, np.hstack([y, no_positive])), logme(x, y), 1e-12)
    with pytest.raises(ProbeInputError, match="no label column"):
        logme(x, np.zeros((200, 2), dtype=np.int8))


def test_logme_class_ids_are_one_hot_columns() -> None:
    rng = np.random.default_rng(5)
    x = rng.normal(size=(150, 8))
    ids = rng.integers(0, 4, size=150)
    one_hot = np.eye(4, dtype=np.int8)[ids]
    assert _close(logme(x, ids), logme(x, one_hot), 1e-12)
    assert _close(logme(x, ids), _direct_logme(x, one_hot))


def test_logme_torch_and_numpy_inputs_agree() -> None:
    x, y = _data(120, 6, 2, seed=6)
    assert _close(logme(torch.from_numpy(x), torch.from_numpy(y)), logme(x, y), 1e-12)
    # float32 tensors are widened to float64 before anything is accumulated
    x32 = x.astype(np.float32)
    assert _close(logme(torch.from_numpy(x32), torch.from_numpy(y)), logme(x32.astype(np.float64), y), 1e-12)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_logme_runs_on_cuda_as_on_the_cpu() -> None:
    x, y = _data(300, 20, 3, seed=7)
    gpu = torch.from_numpy(x).cuda()
    assert _close(logme(gpu, torch.from_numpy(y).cuda()), logme(x, y), 1e-9)


def test_logme_ranks_an_informative_feature_above_noise() -> None:
    rng = np.random.default_rng(8)
    latent = rng.normal(size=(600, 4))
    labels = (latent @ rng.normal(size=(4, 5)) + 0.5 * rng.normal(size=(600, 5)) > 0).astype(np.int8)
    informative = np.hstack([latent, rng.normal(size=(600, 12))]) @ rng.normal(size=(16, 16))
    noise = rng.normal(size=(600, 16))
    assert logme(informative, labels) > logme(noise, labels)


def _ridge_data(noise: float, seed: int = 9) -> tuple[np.ndarray, ...]:
    rng = np.random.default_rng(seed)
    w = rng.normal(size=(20, 3))
    x, v = rng.normal(size=(300, 20)), rng.normal(size=(300, 20))
    y = (x @ w + noise * rng.normal(size=(300, 3)) > 0).astype(np.int8)
    y_val = (v @ w > 0).astype(np.int8)
    return x, y, v, y_val


def test_ridge_gcv_picks_a_larger_ridge_for_noisier_data() -> None:
    clean = ridge_score(*_ridge_data(0.5))
    noisy = ridge_score(*_ridge_data(20.0))
    assert float(noisy.ridge[0]) > float(clean.ridge[0])
    assert torch.equal(clean.ridge, clean.ridge[:1].expand(3))  # one shared value by default


def test_ridge_weights_solve_the_normal_equations_at_the_chosen_ridge() -> None:
    x, y, v, y_val = _ridge_data(3.0)
    y[::17, 1] = -1  # an ignored entry becomes its column's known mean
    for per_class in (False, True):
        proxy = ridge_score(x, y, v, y_val, per_class=per_class, chunk_rows=64)
        xt, yt = torch.from_numpy(x), torch.from_numpy(y).double()
        known = yt != -1
        yt = torch.where(known, yt, (yt * known).sum(0) / known.sum(0))
        xc, yc = xt - xt.mean(0), yt - yt.mean(0)
        for j in range(3):
            direct = torch.linalg.solve(xc.T @ xc + float(proxy.ridge[j]) * torch.eye(20, dtype=torch.float64),
                                        xc.T @ yc[:, j])
            torch.testing.assert_close(proxy.weights[:, j], direct, rtol=1e-8, atol=1e-10)
        bias = yt.mean(0) - xt.mean(0) @ proxy.weights
        torch.testing.assert_close(proxy.bias, bias, rtol=1e-8, atol=1e-10)


def test_ridge_map_of_a_planted_signal_beats_noise() -> None:
    x, y, v, y_val = _ridge_data(1.0)
    rng = np.random.default_rng(10)
    signal = ridge_score(x, y, v, y_val)
    noise = ridge_score(rng.normal(size=x.shape), y, rng.normal(size=v.shape), y_val)
    assert isinstance(signal, RidgeProxy) and signal.metric == "map"
    assert signal.score > noise.score + 0.2
    torch.testing.assert_close(signal.predict(v), torch.from_numpy(v) @ signal.weights + signal.bias)


def test_ridge_single_label_scores_top1() -> None:
    rng = np.random.default_rng(11)
    centres = 3 * rng.normal(size=(4, 8))
    ids, val_ids = rng.integers(0, 4, 200), rng.integers(0, 4, 100)
    x, v = centres[ids] + rng.normal(size=(200, 8)), centres[val_ids] + rng.normal(size=(100, 8))
    proxy = ridge_score(x, ids, v, val_ids, task="singlelabel")
    assert proxy.metric == "top1" and proxy.score > 0.8
    assert proxy.weights.shape == (8, 4)
