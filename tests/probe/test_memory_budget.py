"""The objective's memory budget: bytes, not tensors; the cache and the batches share it."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from difffeat_tune._errors import ConfigError
from difffeat_tune.config import TrialConfig
from difffeat_tune.probe._cache import FeatureCache
from difffeat_tune.probe.objective import Objective, ObjectiveSettings
from difffeat_tune.probe.train import TrainRecipe
from tests.conftest import IMAGE_PEAK, TEXT_PEAK, write_synthetic_store

RECIPE = TrainRecipe(epochs=3, batch_size=32, cpu_threads=1)
CONFIGS = [*(TrialConfig("image", image=(t, b)) for t in (10, 30, 50) for b in (4, 8, 12)),
           *(TrialConfig("text", text=(t, b)) for t in (0, 10) for b in (8, 12)),
           TrialConfig("fusion", image=IMAGE_PEAK, text=TEXT_PEAK, fusion="linear_add", d_alg=8)]


def test_a_tiny_budget_gives_the_results_of_an_unbounded_one_and_is_honoured(synthetic_view) -> None:  # type: ignore[no-untyped-def]
    unbounded = Objective(synthetic_view, ObjectiveSettings(recipe=RECIPE, memory_budget=2**40), "cpu")
    expected = unbounded.run_many(CONFIGS)
    # Room for a batch of two fusion configurations: the phases' batches are split to fit.
    small = unbounded.batch_bytes([CONFIGS[-1]] * 2)
    tiny = Objective(synthetic_view, ObjectiveSettings(recipe=RECIPE, memory_budget=small), "cpu")
    got = tiny.run_many(CONFIGS)
    for a, b in zip(expected, got):
        assert not isinstance(a, Exception) and not isinstance(b, Exception)
        assert b.score == pytest.approx(a.score, abs=1e-5)
        assert b.history == pytest.approx(a.history, abs=1e-5)
    assert tiny.cache.peak_bytes <= small  # the cache's own accounting, reservations included
    assert len(tiny.cache) < 2 * len(CONFIGS)  # it evicted: not every input stayed


def test_an_input_larger_than_the_budget_is_a_clear_error(synthetic_view) -> None:  # type: ignore[no-untyped-def]
    objective = Objective(synthetic_view, ObjectiveSettings(recipe=RECIPE, memory_budget=4096), "cpu")
    with pytest.raises(ConfigError) as excinfo:
        objective(TrialConfig("image", image=IMAGE_PEAK))
    message = str(excinfo.value)
    assert f"image features t={IMAGE_PEAK[0]} b={IMAGE_PEAK[1]} of split 'train' need" in message
    assert "--memory-budget" in message and "ObjectiveSettings.memory_budget" in message
    results = objective.run_many([TrialConfig("image", image=IMAGE_PEAK)])  # the search records it per trial
    assert isinstance(results[0], ConfigError)


def test_features_stay_in_the_stored_float16_and_train_like_float32(tmp_path: Path) -> None:
    half = write_synthetic_store(tmp_path / "f16", dtype="float16")
    full = write_synthetic_store(tmp_path / "f32", dtype="float32")
    config = TrialConfig("fusion", image=IMAGE_PEAK, text=TEXT_PEAK, fusion="linear_concat", d_alg=8)
    a = Objective(half, ObjectiveSettings(recipe=RECIPE), "cpu")
    b = Objective(full, ObjectiveSettings(recipe=RECIPE), "cpu")
    score_half, score_full = a(config).score, b(config).score
    cached = a.cache.get(("image", IMAGE_PEAK, "train"))
    assert cached is not None and cached.dtype == torch.float16
    assert b.cache.get(("image", IMAGE_PEAK, "train")).dtype == torch.float32  # type: ignore[union-attr]
    assert score_half == pytest.approx(score_full, abs=0.02)  # the same data, rounded to float16


def test_a_budget_that_is_not_a_positive_number_of_bytes_is_refused() -> None:
    for bad in (0, -5, 1.5, True):
        with pytest.raises(ConfigError, match="ObjectiveSettings.memory_budget must be a positive number of bytes"):
            ObjectiveSettings(memory_budget=bad)  # type: ignore[arg-type]


def test_the_cache_evicts_least_recently_used_first_and_makes_room_for_a_reservation() -> None:
    cache = FeatureCache(budget=1200)
    for key in "abc":
        cache.put(key, torch.zeros(100))  # 400 bytes each
    assert cache.keys() == ["a", "b", "c"] and cache.bytes_used == 1200
    cache.get("a")  # now the most recent
    with cache.reserve(400):
        assert cache.keys() == ["c", "a"] and cache.bytes_used == 800  # "b" went first
        cache.put("d", torch.zeros(100))
        assert cache.bytes_used + 400 <= 1200
    assert cache.peak_bytes <= 1200
    cache.put("huge", torch.zeros(1000))  # larger than the whole budget: not kept
    assert "huge" not in cache


@pytest.mark.parametrize("value", ["lots", "-1GB", "0", "8XB"])
def test_a_memory_budget_that_is_no_size_is_one_line_naming_the_option(value: str, tmp_path: Path, capsys,
                                                                        monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from tests.test_cli import run_cli

    code, out, err = run_cli(["run", "heuristic", "--runs", str(tmp_path), "--memory-budget", value], capsys, monkeypatch)
    text = " ".join(err.split())
    assert code == 2 and "--memory-budget" in text and "is not a size" in text and "Traceback" not in err


def test_memory_budget_sizes_read_decimal_and_binary_units() -> None:
    from difffeat_tune.cli import _bytes

    assert _bytes("8GiB", "--memory-budget") == 8 * 2**30 == _bytes("8G", "--memory-budget")
    assert _bytes("6GB", "--memory-budget") == 6 * 10**9
    assert _bytes("512 MiB", "--memory-budget") == 512 * 2**20
    assert _bytes("1000000", "--memory-budget") == 10**6
