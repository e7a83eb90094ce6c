"""The objective's proxy scoring path: closed-form scores of a unimodal configuration, no probe trained."""

from __future__ import annotations

import pytest

from difffeat_tune._errors import ConfigError
from difffeat_tune.config import TrialConfig
from difffeat_tune.probe import logme, ridge_score
from difffeat_tune.probe.objective import Objective, ObjectiveSettings
from difffeat_tune.probe.train import TrainRecipe
from tests.conftest import IMAGE_PEAK

FAST = ObjectiveSettings(recipe=TrainRecipe(epochs=2, batch_size=32, cpu_threads=1))
PEAK = TrialConfig("image", image=IMAGE_PEAK)
FAR = TrialConfig("image", image=(50, 12))


@pytest.mark.parametrize("proxy", ["logme", "ridge"])
def test_a_proxy_ranks_the_informative_configuration_first_without_training(synthetic_view, proxy: str) -> None:
    objective = Objective(synthetic_view, FAST, device="cpu")
    peak, far = objective.proxy_score(PEAK, proxy), objective.proxy_score(FAR, proxy)
    assert peak.score > far.score
    assert peak.epochs_run == 0 and peak.history == [] and peak.metrics == {proxy: peak.score}
    assert peak.split == ("train" if proxy == "logme" else "val")


def test_proxy_scores_are_the_proxies_of_the_objectives_own_inputs(synthetic_view) -> None:
    objective = Objective(synthetic_view, FAST, device="cpu")
    (train_x,) = objective._inputs(PEAK, objective._train)
    (select_x,) = objective._inputs(PEAK, objective._select)
    train_y, select_y = objective._targets(objective._train), objective._targets(objective._select)
    assert objective.proxy_score(PEAK, "logme").score == pytest.approx(logme(train_x, train_y))
    assert objective.proxy_score(PEAK, "ridge").score == pytest.approx(
        ridge_score(train_x, train_y, select_x, select_y, task=synthetic_view.task).score)


@pytest.mark.parametrize(("config", "proxy"), [
    (TrialConfig("fusion", image=IMAGE_PEAK, text=(0, 24), fusion="linear_add"), "logme"),
    (PEAK, "svm"),
])
def test_a_fusion_configuration_or_an_unknown_proxy_is_rejected(synthetic_view, config, proxy) -> None:
    with pytest.raises(ConfigError, match="proxy"):
        Objective(synthetic_view, FAST, device="cpu").proxy_score(config, proxy)
