"""The plan of Algorithm 1 (``derive_plan``) as a pure function of trial records: no storage, no study."""

from __future__ import annotations

import random

import optuna
import pytest
from optuna.distributions import CategoricalDistribution
from optuna.trial import TrialState

from difffeat_tune._errors import ConfigError
from difffeat_tune.config import TrialConfig
from difffeat_tune.search._plan import (
    CLAIM_ATTR,
    PlanRules,
    TrialRecord,
    derive_plan,
    rank,
    records_of,
)
from difffeat_tune.search._options import SearchOptions
from difffeat_tune.space import Axes, SearchSpace, load_space

#: 3 x 3 image grid, 2 x 3 text grid, two fusion methods.
SMALL = SearchSpace("small", image=Axes((10, 30, 50), (4, 8, 12)), text=Axes((0, 10), (16, 20, 24)),
                    fusion_methods=("linear_add", "cross_attention"), d_alg=64)
IMAGE_ONLY = SearchSpace("image-only", image=Axes((10, 30), (4, 8)), text=None, fusion_methods=())
RULES = PlanRules.for_space(SMALL)
IMAGE, TEXT = SMALL.unimodal_configs("image"), SMALL.unimodal_configs("text")
C, F, P, R, W = TrialState.COMPLETE, TrialState.FAIL, TrialState.PRUNED, TrialState.RUNNING, TrialState.WAITING


def img(t: int, b: int) -> TrialConfig:
    return TrialConfig("image", image=(t, b), d_alg=64)


def txt(t: int, b: int) -> TrialConfig:
    return TrialConfig("text", text=(t, b), d_alg=64)


def fus(i: tuple[int, int], x: tuple[int, int], method: str = "linear_add") -> TrialConfig:
    return TrialConfig("fusion", image=i, text=x, fusion=method, d_alg=64)


def value(config: TrialConfig, image_peak: tuple[int, int] = (30, 8), text_peak: tuple[int, int] = (0, 24)) -> float:
    """A score peaked at ``image_peak`` / ``text_peak`` (grid-index distance), fusion adding both."""
    def one(axes: Axes, point: tuple[int, int], peak: tuple[int, int], base: float) -> float:
        return base - 0.05 * abs(axes.t.index(point[0]) - axes.t.index(peak[0])) \
            - 0.03 * abs(axes.b.index(point[1]) - axes.b.index(peak[1]))
    total = 0.0
    if config.image is not None:
        total += one(SMALL.image, config.image, image_peak, 0.6)  # type: ignore[arg-type]
    if config.text is not None:
        total += one(SMALL.text, config.text, text_peak, 0.9)  # type: ignore[arg-type]
    return total


def finished(configs: list[TrialConfig], start: int = 0, **peaks: tuple[int, int]) -> list[TrialRecord]:
    """COMPLETE records of ``configs``, numbered from ``start``, valued by :func:`value`."""
    return [TrialRecord(start + k, C, c, value(c, **peaks)) for k, c in enumerate(configs)]


UNIMODAL_DONE = finished(IMAGE + TEXT)
#: The fusion plan around the optima (30, 8) (grid centre: cross of 5) and (0, 24) (corner: 3).
FUSION = [fus(i, x) for i in [(10, 8), (30, 4), (30, 8), (30, 12), (50, 8)] for x in [(0, 20), (0, 24), (10, 24)]]


# ---------------------------------------------------------------------------------------- phases

@pytest.mark.parametrize(("records", "phase", "pending", "planned_fusion"), [
    ([], "image", IMAGE + TEXT, None),
    (finished(IMAGE), "text", TEXT, None),
    (finished(TEXT), "image", IMAGE, None),  # text first is fine: the phase is the earliest unfinished
    (UNIMODAL_DONE, "fusion", FUSION, 15),
    (UNIMODAL_DONE + finished(FUSION, start=15), "done", [], 15),
])
def test_phase_pending_and_fusion_plan_follow_the_finished_trials(records, phase, pending, planned_fusion) -> None:
    status = derive_plan(SMALL, RULES, records)
    assert status.phase == phase
    assert list(status.pending) == pending
    assert status.planned == {"image": 9, "text": 6, "fusion": planned_fusion}
    assert status.exhausted == (phase == "done") and status.waiting is False


def test_papers_plan_has_the_15_fusion_configs_of_its_optima() -> None:
    space = load_space("paper")
    records = [TrialRecord(k, C, c, 1.0 if c.image == (50, 12) or c.text == (0, 24) else 0.5)
               for k, c in enumerate(space.unimodal_configs("image") + space.unimodal_configs("text"))]
    status = derive_plan(space, PlanRules.for_space(space), records)
    assert status.image_candidates == ((30, 12), (50, 8), (50, 12), (50, 16), (100, 12))
    assert status.text_candidates == ((0, 20), (0, 24), (10, 24))
    assert status.total_planned == 65 and len(status.pending) == 15


# ---------------------------------------------------------------------------------------- one configuration's trials

@pytest.mark.parametrize(("states", "where"), [
    ([], "pending"),
    ([F], "pending"),  # retried: max_failures is 2
    ([F, F], "given_up"),
    ([F, C], "done"),
    ([P], "done"),
    ([C], "done"),
    ([R], "running"),
    ([F, R], "running"),
    ([W], "queued"),
    ([C, R], "done"),  # a surplus copy still running does not hold a finished configuration
])
def test_trials_of_one_configuration_decide_where_it_stands(states, where) -> None:
    config = IMAGE[4]
    records = [TrialRecord(k, s, config, 0.5 if s == C else None) for k, s in enumerate(states)]
    status = derive_plan(SMALL, RULES, records)
    places = {"pending": status.pending, "running": status.running, "queued": status.queued,
              "given_up": status.given_up}
    assert {name for name, configs in places.items() if config in configs} == ({where} - {"done"})
    assert status.completed["image"] == int(where == "done")
    assert status.failures == states.count(F)
    assert status.enqueued == states.count(W)
    if where == "running":
        assert status.holders == {config: (len(states) - 1,)}


@pytest.mark.parametrize("max_failures", [1, 2, 3])
def test_a_configuration_is_given_up_after_max_failures_failed_trials(max_failures: int) -> None:
    rules = PlanRules.for_space(SMALL, max_failures=max_failures)
    records = [TrialRecord(k, F, IMAGE[0]) for k in range(max_failures)]
    assert derive_plan(SMALL, rules, records[:-1]).given_up == ()
    assert derive_plan(SMALL, rules, records).given_up == (IMAGE[0],)


def test_records_off_the_plan_count_only_as_enqueued() -> None:
    off_plan = fus((10, 4), (0, 16))
    status = derive_plan(SMALL, RULES, [TrialRecord(0, C, off_plan, 9.0), TrialRecord(1, W, None)])
    assert status.enqueued == 1 and status.failures == 0 and all(v is None for v in status.optima.values())
    assert len(status.pending) == 15


# ---------------------------------------------------------------------------------------- optima and the tie rule

@pytest.mark.parametrize(("results", "winner"), [
    ([(0.5, 3), (0.5, 1), (0.4, 0)], 1),
    ([(0.6, 5), (0.5, 1)], 5),
    ([(0.5, 2), (0.5, 7), (0.5, 4)], 2),
    ([(-1.0, 0), (-0.5, 9)], 9),
])
def test_rank_prefers_the_higher_value_then_the_lower_trial_number(results, winner) -> None:
    assert max(results, key=lambda r: rank(*r))[1] == winner


def test_equal_values_make_the_lowest_numbered_trial_the_optimum_whatever_the_order() -> None:
    records = [TrialRecord(k, C, c, 0.5) for k, c in enumerate(IMAGE + TEXT)]
    shuffled = records[:]
    random.Random(0).shuffle(shuffled)
    status = derive_plan(SMALL, RULES, shuffled)
    assert status == derive_plan(SMALL, RULES, records)
    assert status.best_image == IMAGE[0] and status.best_text == TEXT[0]
    assert status.image_candidates == ((10, 4), (10, 8), (30, 4))


def test_the_fusion_optimum_is_the_best_planned_fusion_only() -> None:
    off_plan = fus((10, 4), (0, 16))
    records = UNIMODAL_DONE + finished(FUSION, start=15) + [TrialRecord(99, C, off_plan, 10.0)]
    status = derive_plan(SMALL, RULES, records)
    assert status.best_fusion == fus((30, 8), (0, 24))
    assert status.best_fusion_value == pytest.approx(value(fus((30, 8), (0, 24))))
    assert status.best_image == img(30, 8) and status.best_text == txt(0, 24)


def test_pruned_trials_finish_a_configuration_but_are_no_optimum() -> None:
    records = [TrialRecord(k, P, c) for k, c in enumerate(IMAGE + TEXT)]
    status = derive_plan(SMALL, RULES, records)
    assert status.best_image is None and status.planned["fusion"] == 0 and status.exhausted


# ---------------------------------------------------------------------------------------- the fusion neighbourhoods

@pytest.mark.parametrize(("neighbourhood", "radius", "image", "text"), [
    ("cross", 1, 3, 3),
    ("box", 1, 4, 4),
    ("radius", 2, 6, 5),
    ("cross", 0, 1, 1),
])
def test_neighbourhood_rules_shape_the_fusion_plan_at_grid_corners(neighbourhood, radius, image, text) -> None:
    rules = PlanRules.for_space(SMALL, neighbourhood=neighbourhood, radius=radius)
    records = finished(IMAGE + TEXT, image_peak=(50, 12), text_peak=(10, 16))
    status = derive_plan(SMALL, rules, records)
    assert (len(status.image_candidates), len(status.text_candidates)) == (image, text)
    assert len(status.pending) == image * text


def test_every_fusion_method_of_the_rules_is_crossed() -> None:
    rules = PlanRules.for_space(SMALL, fusion_methods=SMALL.fusion_methods)
    status = derive_plan(SMALL, rules, UNIMODAL_DONE)
    assert status.planned["fusion"] == 30
    assert {c.fusion for c in status.pending} == {"linear_add", "cross_attention"}


def test_a_given_up_neighbour_of_an_optimum_is_left_out_of_the_fusion_plan() -> None:
    broken = img(30, 4)
    records = [r for r in UNIMODAL_DONE if r.config != broken] + [TrialRecord(50, F, broken), TrialRecord(51, F, broken)]
    status = derive_plan(SMALL, RULES, records)
    assert status.given_up == (broken,) and (30, 4) not in status.image_candidates
    assert len(status.pending) == 4 * 3 and all(c.image != (30, 4) for c in status.pending)


def test_a_one_modality_space_is_done_after_its_grid() -> None:
    rules = PlanRules.for_space(IMAGE_ONLY)
    configs = IMAGE_ONLY.unimodal_configs("image")
    assert derive_plan(IMAGE_ONLY, rules, []).phase == "image"
    status = derive_plan(IMAGE_ONLY, rules, [TrialRecord(k, C, c, float(k)) for k, c in enumerate(configs)])
    assert status.phase == "done" and status.exhausted and status.planned["fusion"] == 0
    assert status.best_image == configs[-1] and status.total_planned == 4


def test_running_fusion_trials_make_the_plan_wait() -> None:
    records = UNIMODAL_DONE + [TrialRecord(15 + k, R, c) for k, c in enumerate(FUSION)]
    status = derive_plan(SMALL, RULES, records)
    assert status.waiting and status.phase == "fusion" and status.pending == () and len(status.running) == 15


# ---------------------------------------------------------------------------------------- rules and records

@pytest.mark.parametrize("kwargs", [{"neighbourhood": "star"}, {"radius": -1}, {"radius": 1.5}, {"max_failures": 0},
                                    {"max_failures": True}, {"fusion_methods": []}, {"fusion_methods": ["gating"]},
                                    {"fusion_methods": ["linear_add", "linear_add"]}])
def test_invalid_rules_raise_config_error(kwargs: dict) -> None:
    with pytest.raises(ConfigError):
        PlanRules.for_space(SMALL, **kwargs)


def test_default_fusion_method_is_linear_add_and_a_one_modality_space_has_none() -> None:
    assert PlanRules.for_space(SMALL).fusion_methods == ("linear_add",)
    assert PlanRules.for_space(IMAGE_ONLY).fusion_methods == ()


def _frozen(number: int, state: TrialState, *, params: dict | None = None, system_attrs: dict | None = None,
            value: float | None = None) -> optuna.trial.FrozenTrial:
    params = params or {}
    trial = optuna.trial.create_trial(
        state=state, value=value, params=params, system_attrs=system_attrs or {},
        distributions={k: CategoricalDistribution([v]) for k, v in params.items()})
    trial.number = number
    return trial


def test_records_of_reads_the_claim_then_the_fixed_then_the_finished_params() -> None:
    claimed, fixed, told = img(10, 4), txt(0, 16), img(50, 12)
    trials = [
        _frozen(0, R, system_attrs={CLAIM_ATTR: claimed.to_params()}),
        _frozen(1, W, system_attrs={"fixed_params": fixed.to_params()}),
        _frozen(2, C, params=told.to_params(), value=0.7),
        _frozen(3, R, system_attrs={CLAIM_ATTR: None}),  # choosing again: holds nothing
        _frozen(4, R, params={"modality": "image"}),  # partial params of a running trial: nothing
    ]
    records = records_of(trials, d_alg=64)
    assert [r.config for r in records] == [claimed, fixed, told, None, None]
    assert records[2].value == 0.7
    assert [r.number for r in records_of(trials, 64, skip=1)] == [0, 2, 3, 4]
    told_now = records_of(trials, 64, override=(0, C, [0.9]))[0]
    assert (told_now.state, told_now.value) == (C, 0.9)


# ---------------------------------------------------------------------------------------- the proxy stage

PROXY_RULES = PlanRules.for_space(SMALL, proxy="logme", proxy_top=2)


def scored(configs: list[TrialConfig], start: int = 100, **peaks: tuple[int, int]) -> list[TrialRecord]:
    """COMPLETE proxy records of ``configs`` whose scores rank like :func:`value`."""
    return [TrialRecord(start + k, C, c, value(c, **peaks), proxy=True) for k, c in enumerate(configs)]


@pytest.mark.parametrize(("records", "phase", "proxy_pending", "pending", "planned"), [
    ([], "image", IMAGE + TEXT, [], (None, None, None)),
    (scored(IMAGE), "image", TEXT, [img(30, 4), img(30, 8)], (2, None, None)),
    (scored(IMAGE + TEXT), "image", [], [img(30, 4), img(30, 8), txt(0, 20), txt(0, 24)], (2, 2, None)),
    (scored(IMAGE + TEXT) + finished([img(30, 4), img(30, 8)]), "text", [], [txt(0, 20), txt(0, 24)], (2, 2, None)),
])
def test_a_proxy_scores_every_unimodal_configuration_then_the_top_ones_are_trained(
        records, phase, proxy_pending, pending, planned) -> None:
    status = derive_plan(SMALL, PROXY_RULES, records)
    assert status.phase == phase
    assert list(status.proxy_pending) == proxy_pending and list(status.pending) == pending
    assert tuple(status.planned[p] for p in ("image", "text", "fusion")) == planned
    assert not status.exhausted and not status.waiting


def test_the_modality_optimum_is_the_best_trained_configuration_not_the_best_proxy_score() -> None:
    # The proxy ranks (30, 8) and (30, 4) first; training finds (30, 4) better than (30, 8).
    trained = [TrialRecord(200, C, img(30, 4), 0.9), TrialRecord(201, C, img(30, 8), 0.5),
               TrialRecord(202, C, txt(0, 20), 0.4), TrialRecord(203, C, txt(0, 24), 0.8)]
    status = derive_plan(SMALL, PROXY_RULES, scored(IMAGE + TEXT) + trained)
    assert status.phase == "fusion" and status.best_image == img(30, 4) and status.best_text == txt(0, 24)
    assert status.image_candidates == ((10, 4), (30, 4), (30, 8), (50, 4))
    assert status.planned == {"image": 2, "text": 2, "fusion": 4 * 3} and status.total_planned == 16
    done = derive_plan(SMALL, PROXY_RULES, scored(IMAGE + TEXT) + trained + finished(list(status.pending), 300))
    assert done.exhausted and done.phase == "done"


def test_running_and_failed_proxy_trials() -> None:
    records = [TrialRecord(0, R, IMAGE[0], proxy=True), TrialRecord(1, F, IMAGE[1], proxy=True),
               TrialRecord(2, F, IMAGE[1], proxy=True)]
    status = derive_plan(SMALL, PROXY_RULES, records)
    assert status.proxy_running == (IMAGE[0],) and IMAGE[1] not in status.proxy_pending
    assert len(status.proxy_pending) == 15 - 2 and status.pending == ()
    # A given-up proxy trial is never trained: the top two come from the scored rest.
    rest = scored([c for c in IMAGE if c not in IMAGE[:2]]) + [TrialRecord(0, C, IMAGE[0], 0.0, proxy=True)]
    status = derive_plan(SMALL, PROXY_RULES, records[1:] + rest)
    assert status.planned["image"] == 2 and IMAGE[1] not in status.pending


def test_a_proxy_trial_does_not_count_as_a_trained_one() -> None:
    status = derive_plan(SMALL, RULES, scored(IMAGE + TEXT))
    assert status.completed["image"] == 0 and len(status.pending) == 15 and status.proxy_pending == ()


@pytest.mark.parametrize("kwargs", [{"proxy": "svm"}, {"proxy": "logme", "proxy_top": 0},
                                    {"proxy": "ridge", "proxy_top": 2.5}])
def test_invalid_proxy_rules_raise_config_error(kwargs: dict) -> None:
    with pytest.raises(ConfigError, match="proxy"):
        PlanRules.for_space(SMALL, **kwargs)


@pytest.mark.parametrize(("kwargs", "field"), [({"unimodal_proxy": "svm"}, "unimodal_proxy"),
                                               ({"proxy_top": 0}, "proxy_top"),
                                               ({"unimodal_proxy": "logme", "sampler": "grid"}, "unimodal_proxy")])
def test_invalid_proxy_search_options_name_their_field(kwargs: dict, field: str) -> None:
    with pytest.raises(ConfigError) as info:
        SearchOptions(**kwargs)
    assert info.value.field == f"SearchOptions.{field}"
