"""HeuristicSampler (Algorithm 1) and suggest_config on real Optuna storages with a synthetic objective.

Run as a script (``python test_heuristic.py worker URL STUDY SPACE MODE DIR``) the module is the
worker process of the multi-process tests.
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import optuna
import sqlalchemy
import pytest
from optuna.distributions import CategoricalDistribution
from optuna.trial import TrialState

from difffeat_tune._errors import ConfigError
from difffeat_tune.config import TrialConfig
from difffeat_tune.search._heuristic import (
    CLAIM_ATTR, HeuristicSampler, PlanStatus, grid_neighbourhood, next_config, plan_status,
)
from difffeat_tune.search._suggest import suggest_config
from difffeat_tune.space import Axes, SearchSpace, load_space

optuna.logging.set_verbosity(optuna.logging.WARNING)
pytestmark = pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")  # heartbeat

MEDIUM_TOML = """
description = "3 x 3 image, 2 x 3 text"
[image]
t = [10, 30, 50]
b = [4, 8, 12]
[text]
t = [0, 10]
b = [16, 20, 24]
[fusion]
methods = ["linear_add", "cross_attention"]
d_alg = 64
"""
TINY_TOML = """
[image]
t = [10, 30]
b = [4, 8]
[text]
t = [0, 10]
b = [20, 24]
[fusion]
methods = ["linear_add"]
"""
#: The synthetic objective's unimodal optima per space (by the space's file stem).
PEAKS = {"paper": ((50, 12), (0, 24)), "medium": ((30, 8), (0, 24)), "tiny": ((30, 8), (0, 24))}
METHOD_BONUS = {"linear_add": 0.02, "cross_attention": 0.01}
MEDIUM_PLAN = 9 + 6 + 5 * 3  # image centre optimum: cross of 5; text corner optimum: cross of 3
TINY_PLAN = 4 + 4 + 3 * 3


# ---------------------------------------------------------------------------------------- helpers

def _space(tmp_path: Path, name: str) -> SearchSpace:
    if name == "paper":
        return load_space("paper")
    path = tmp_path / f"{name}.toml"
    path.write_text({"medium": MEDIUM_TOML, "tiny": TINY_TOML}[name])
    return load_space(path)


def _unimodal(axes: Axes, point: tuple[int, int], peak: tuple[int, int], base: float) -> float:
    dt = abs(axes.t.index(point[0]) - axes.t.index(peak[0]))
    db = abs(axes.b.index(point[1]) - axes.b.index(peak[1]))
    return base - 0.05 * dt - 0.03 * db


def score(space: SearchSpace, config: TrialConfig) -> float:
    """Deterministic: image peaked at PEAKS[...][0], text at [1], fusion = image + text + method bonus."""
    image_peak, text_peak = PEAKS[space.name]
    value = 0.0
    if config.image is not None:
        value += _unimodal(space.image, config.image, image_peak, 0.6)
    if config.text is not None:
        value += _unimodal(space.text, config.text, text_peak, 0.9)
    return value + METHOD_BONUS.get(config.fusion or "", 0.0)


def make_objective(space: SearchSpace, *, sleep: float = 0.0, fail: dict[TrialConfig, int] | None = None):
    """The synthetic objective; ``fail[config] = n`` raises on the first n attempts of ``config``."""
    attempts: Counter[TrialConfig] = Counter()

    def objective(trial: optuna.Trial) -> float:
        config = suggest_config(trial, space)
        trial.set_user_attr("t_start", time.time())
        attempts[config] += 1
        if fail and attempts[config] <= fail.get(config, 0):
            raise RuntimeError(f"synthetic failure of {config.label()}")
        if sleep:
            time.sleep(sleep)
        trial.set_user_attr("t_end", time.time())
        return score(space, config)

    return objective


def _sqlite(tmp_path: Path, heartbeat: bool = False) -> optuna.storages.RDBStorage:
    url = f"sqlite:///{tmp_path}/s.db"
    kwargs = {"heartbeat_interval": 1, "grace_period": 2} if heartbeat else {}
    return optuna.storages.RDBStorage(url, engine_kwargs={"connect_args": {"timeout": 30}}, **kwargs)


def _study(sampler: HeuristicSampler, storage=None, name: str = "s") -> optuna.Study:
    return optuna.create_study(direction="maximize", sampler=sampler, storage=storage, study_name=name,
                               load_if_exists=True)


def _config(trial: optuna.trial.FrozenTrial, space: SearchSpace) -> TrialConfig:
    return TrialConfig.from_params(trial.params, d_alg=space.d_alg)


def _completed(study: optuna.Study, space: SearchSpace) -> list[TrialConfig]:
    return [_config(t, space) for t in study.get_trials(states=(TrialState.COMPLETE,))]


def _expected_plan(space: SearchSpace, image: list, text: list, methods=("linear_add",)) -> set[TrialConfig]:
    fusion = {TrialConfig("fusion", image=i, text=x, fusion=m, d_alg=space.d_alg)
              for i in image for x in text for m in methods}
    return set(space.unimodal_configs("image")) | set(space.unimodal_configs("text")) | fusion


def _add_done(study: optuna.Study, space: SearchSpace, config: TrialConfig, value: float) -> None:
    """Record a finished trial of ``config`` (as if run by another sampler: params, no claim)."""
    choices = {"modality": ["image", "text", "fusion"], "image_t": list(space.image.t), "image_b": list(space.image.b),
               "text_t": list(space.text.t), "text_b": list(space.text.b), "fusion": list(space.fusion_methods)}
    params = config.to_params()
    study.add_trial(optuna.trial.create_trial(
        params=params, distributions={k: CategoricalDistribution(choices[k]) for k in params}, value=value))


def _add_unimodal_results(study: optuna.Study, space: SearchSpace, image_peak, text_peak) -> None:
    saved = PEAKS.get(space.name)
    PEAKS[space.name] = (image_peak, text_peak)
    try:
        for config in space.unimodal_configs("image") + space.unimodal_configs("text"):
            _add_done(study, space, config, score(space, config))
    finally:
        if saved is not None:
            PEAKS[space.name] = saved


def _spawn_worker(tmp_path: Path, space: SearchSpace, mode: str, heartbeat: bool = False) -> subprocess.Popen:
    url = f"sqlite:///{tmp_path}/s.db"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    return subprocess.Popen([sys.executable, __file__, "worker", url, "s", space.source, mode, str(tmp_path),
                             "1" if heartbeat else "0"], env=env)


# ---------------------------------------------------------------------------------------- the plan

def test_paper_space_plan_has_65_trials_and_the_papers_15_fusion_configs() -> None:
    space = load_space("paper")
    study = _study(HeuristicSampler(space, seed=0))
    study.optimize(make_objective(space), timeout=60)

    trials = study.get_trials()
    assert len(trials) == 65 and all(t.state == TrialState.COMPLETE for t in trials)
    fusion = {_config(t, space) for t in trials if t.params["modality"] == "fusion"}
    image = {(50, 8), (30, 12), (50, 12), (50, 16), (100, 12)}
    text = {(0, 20), (0, 24), (10, 24)}
    assert fusion == {TrialConfig("fusion", image=i, text=x, fusion="linear_add") for i in image for x in text}
    assert Counter(t.params["modality"] for t in trials) == {"image": 30, "text": 20, "fusion": 15}


def test_plan_status_reports_optima_candidates_and_best_fusion_when_done() -> None:
    space = load_space("paper")
    study = _study(HeuristicSampler(space))
    study.optimize(make_objective(space), timeout=60)

    status = plan_status(study)
    assert isinstance(status, PlanStatus)
    assert status.exhausted and status.phase == "done" and not status.waiting
    assert status.best_image == TrialConfig("image", image=(50, 12))
    assert status.best_text == TrialConfig("text", text=(0, 24))
    assert status.best_fusion == TrialConfig("fusion", image=(50, 12), text=(0, 24), fusion="linear_add")
    assert status.image_candidates == ((30, 12), (50, 8), (50, 12), (50, 16), (100, 12))
    assert status.text_candidates == ((0, 20), (0, 24), (10, 24))
    assert status.planned == {"image": 30, "text": 20, "fusion": 15} and status.total_planned == 65
    assert status.completed == {"image": 30, "text": 20, "fusion": 15}
    assert next_config(study) is None


def test_study_stops_by_itself_when_the_plan_is_exhausted(tmp_path: Path) -> None:
    space = _space(tmp_path, "medium")
    study = _study(HeuristicSampler(space))
    study.optimize(make_objective(space), n_trials=500)

    assert len(study.trials) == MEDIUM_PLAN
    assert set(_completed(study, space)) == _expected_plan(space, [(10, 8), (30, 4), (30, 8), (30, 12), (50, 8)],
                                                           [(0, 20), (0, 24), (10, 24)])


def test_every_trial_records_phase_modality_and_config_user_attrs(tmp_path: Path) -> None:
    space = _space(tmp_path, "medium")
    study = _study(HeuristicSampler(space))
    study.optimize(make_objective(space))

    for trial in study.trials:
        config = _config(trial, space)
        assert trial.user_attrs["phase"] == trial.user_attrs["modality"] == config.modality
        assert trial.user_attrs["config"] == config.label()
        assert trial.system_attrs[CLAIM_ATTR] == config.to_params()


def test_unimodal_trials_run_in_grid_order_image_then_text_with_one_worker(tmp_path: Path) -> None:
    space = _space(tmp_path, "medium")
    study = _study(HeuristicSampler(space))
    study.optimize(make_objective(space))

    order = [_config(t, space) for t in study.trials[:15]]
    assert order == space.unimodal_configs("image") + space.unimodal_configs("text")


def test_fusion_trials_start_after_the_last_unimodal_trial_completes_with_two_threads(tmp_path: Path) -> None:
    space = _space(tmp_path, "medium")
    study = _study(HeuristicSampler(space, poll_interval=0.02))
    study.optimize(make_objective(space, sleep=0.01), n_jobs=2)

    done = study.get_trials(states=(TrialState.COMPLETE,))
    last_unimodal_end = max(t.user_attrs["t_end"] for t in done if t.params["modality"] != "fusion")
    fusion_starts = [t.user_attrs["t_start"] for t in done if t.params["modality"] == "fusion"]
    assert len(fusion_starts) == 15
    assert min(fusion_starts) >= last_unimodal_end


def test_tie_between_best_values_goes_to_the_lowest_trial_number(tmp_path: Path) -> None:
    space = _space(tmp_path, "medium")
    study = _study(HeuristicSampler(space))
    for config in space.unimodal_configs("image") + space.unimodal_configs("text"):
        _add_done(study, space, config, 0.5)  # all equal: the first of each grid wins

    status = plan_status(study)
    assert status.best_image == space.unimodal_configs("image")[0]
    assert status.best_text == space.unimodal_configs("text")[0]
    assert status.image_candidates == ((10, 4), (10, 8), (30, 4))  # the (10, 4) corner


# ---------------------------------------------------------------------------------------- neighbourhoods

def test_cross_neighbourhood_is_the_papers_five_point_cross_inside_the_grid() -> None:
    axes = load_space("paper").image
    assert grid_neighbourhood(axes, (50, 12)) == [(30, 12), (50, 8), (50, 12), (50, 16), (100, 12)]


def test_cross_neighbourhood_is_clipped_to_three_points_at_a_corner_and_four_on_an_edge() -> None:
    axes = load_space("paper").text
    assert grid_neighbourhood(axes, (0, 24), "cross") == [(0, 20), (0, 24), (10, 24)]
    assert grid_neighbourhood(axes, (30, 8), "cross") == [(20, 8), (30, 8), (30, 12)]
    assert grid_neighbourhood(axes, (10, 24), "cross") == [(0, 24), (10, 20), (10, 24), (20, 24)]


def test_cross_neighbourhood_with_radius_two_has_arms_of_two_steps() -> None:
    axes = load_space("paper").image
    assert grid_neighbourhood(axes, (10, 16), "cross", radius=2) == [
        (10, 8), (10, 12), (10, 16), (10, 20), (10, 24), (20, 16), (30, 16)]


def test_box_neighbourhood_is_the_square_clipped_at_corners_and_edges() -> None:
    axes = load_space("paper").image
    assert len(grid_neighbourhood(axes, (50, 12), "box")) == 9
    assert grid_neighbourhood(axes, (150, 24), "box") == [(100, 20), (100, 24), (150, 20), (150, 24)]
    assert len(grid_neighbourhood(axes, (10, 16), "box")) == 6  # on the t = 10 edge
    assert len(grid_neighbourhood(axes, (50, 16), "box", radius=2)) == 25


def test_radius_neighbourhood_is_a_manhattan_diamond_clipped_at_the_edges() -> None:
    axes = load_space("paper").image
    assert grid_neighbourhood(axes, (50, 12), "radius") == grid_neighbourhood(axes, (50, 12), "cross")
    assert len(grid_neighbourhood(axes, (50, 16), "radius", radius=2)) == 13
    assert grid_neighbourhood(axes, (10, 8), "radius", radius=2) == [
        (10, 8), (10, 12), (10, 16), (20, 8), (20, 12), (30, 8)]


def test_neighbourhood_option_shapes_the_fusion_plan_at_a_grid_corner(tmp_path: Path) -> None:
    space = _space(tmp_path, "medium")
    sizes = {}
    for kind in ("cross", "box", "radius"):
        study = _study(HeuristicSampler(space, neighbourhood=kind, radius=2 if kind == "radius" else 1))
        _add_unimodal_results(study, space, image_peak=(50, 12), text_peak=(10, 16))
        status = plan_status(study)
        assert status.phase == "fusion" and status.best_image == TrialConfig("image", image=(50, 12), d_alg=64)
        sizes[kind] = (len(status.image_candidates), len(status.text_candidates), len(status.pending))
    assert sizes == {"cross": (3, 3, 9), "box": (4, 4, 16), "radius": (6, 5, 30)}


def test_all_fusion_methods_option_crosses_every_method(tmp_path: Path) -> None:
    space = load_space("paper")
    study = _study(HeuristicSampler(space, fusion_methods=space.fusion_methods))
    _add_unimodal_results(study, space, image_peak=(50, 12), text_peak=(0, 24))

    status = plan_status(study)
    assert status.planned["fusion"] == 60 and status.total_planned == 110
    assert Counter(c.fusion for c in status.pending) == {m: 15 for m in space.fusion_methods}


# ---------------------------------------------------------------------------------------- resumption & workers

def test_resumed_study_finishes_the_plan_without_rerunning_configs(tmp_path: Path) -> None:
    space = _space(tmp_path, "tiny")
    first = _study(HeuristicSampler(space), _sqlite(tmp_path))
    first.optimize(make_objective(space), n_trials=6)
    assert len(first.trials) == 6 and not plan_status(first).exhausted

    resumed = _study(HeuristicSampler(space), _sqlite(tmp_path))  # a new process would do the same
    resumed.optimize(make_objective(space))

    completed = _completed(resumed, space)
    assert len(resumed.trials) == TINY_PLAN
    assert len(completed) == len(set(completed)) == TINY_PLAN


def test_two_threads_share_one_sampler_without_duplicates(tmp_path: Path) -> None:
    space = _space(tmp_path, "medium")
    study = _study(HeuristicSampler(space, poll_interval=0.05, seed=1), _sqlite(tmp_path))
    study.optimize(make_objective(space, sleep=0.02), n_jobs=2)

    completed = _completed(study, space)
    assert len(completed) == len(set(completed)) == MEDIUM_PLAN
    others = [t for t in study.trials if t.state != TrialState.COMPLETE]
    assert all(t.state == TrialState.PRUNED and t.user_attrs["surplus"] for t in others)
    assert plan_status(study).exhausted


@pytest.mark.slow
def test_two_worker_processes_on_one_sqlite_file_complete_the_plan_once(tmp_path: Path) -> None:
    space = _space(tmp_path, "medium")
    _study(HeuristicSampler(space), _sqlite(tmp_path))  # create it once, the workers load it
    workers = [_spawn_worker(tmp_path, space, f"run{i}") for i in range(2)]
    deadline = time.time() + 30
    while not all((tmp_path / f"ready-run{i}").exists() for i in range(2)) and time.time() < deadline:
        time.sleep(0.05)
    (tmp_path / "go").touch()  # both workers start together
    assert [w.wait(timeout=60) for w in workers] == [0, 0]

    study = optuna.load_study(study_name="s", storage=_sqlite(tmp_path), sampler=HeuristicSampler(space))
    completed = _completed(study, space)
    assert len(completed) == len(set(completed)) == MEDIUM_PLAN
    assert {t.user_attrs["worker"] for t in study.get_trials(states=(TrialState.COMPLETE,))} == {"run0", "run1"}
    assert plan_status(study).exhausted


@pytest.mark.slow
def test_dead_workers_trial_is_failed_by_the_heartbeat_and_its_config_retried(tmp_path: Path) -> None:
    space = _space(tmp_path, "tiny")
    _study(HeuristicSampler(space), _sqlite(tmp_path, heartbeat=True))
    (tmp_path / "go").touch()
    victim = _spawn_worker(tmp_path, space, "die", heartbeat=True)
    assert victim.wait(timeout=60) == 17  # claimed the first config, then died mid-trial

    study = _study(HeuristicSampler(space, poll_interval=0.1, wait_timeout=30), _sqlite(tmp_path, heartbeat=True))
    killed = study.trials[0]
    assert killed.state == TrialState.RUNNING and killed.user_attrs["phase"] == "image"
    study.optimize(make_objective(space))

    trials = study.get_trials()
    assert trials[0].state == TrialState.FAIL
    killed_config = _config(trials[0], space)
    completed = _completed(study, space)
    retried = [t for t in trials if t.state == TrialState.COMPLETE and _config(t, space) == killed_config]
    assert len(retried) == 1 and retried[0].number > 0  # retried by the surviving worker
    assert len(completed) == len(set(completed)) == TINY_PLAN
    assert plan_status(study).exhausted


class _JitteryStorage(optuna.storages.InMemoryStorage):
    """In-memory storage whose claim reads and writes take a random few milliseconds: races happen."""

    def __init__(self, seed: int) -> None:
        super().__init__()
        self._jitter = random.Random(seed)

    def _sleep(self) -> None:
        time.sleep(self._jitter.random() * 0.004)

    def get_all_trials(self, *args, **kwargs):
        self._sleep()
        trials = super().get_all_trials(*args, **kwargs)
        self._sleep()
        return trials

    def set_trial_system_attr(self, *args, **kwargs) -> None:
        self._sleep()
        super().set_trial_system_attr(*args, **kwargs)
        self._sleep()


def test_racing_claims_never_keep_the_same_config(tmp_path: Path) -> None:
    space = _space(tmp_path, "medium")
    for seed in range(3):
        study = _study(HeuristicSampler(space, poll_interval=0.01, seed=seed), _JitteryStorage(seed))
        study.optimize(make_objective(space, sleep=0.002), n_jobs=6)

        completed = _completed(study, space)
        assert len(completed) == len(set(completed)) == MEDIUM_PLAN


def test_racing_proxy_claims_score_each_config_once_then_train_the_top_ones(tmp_path: Path) -> None:
    space = _space(tmp_path, "medium")
    for seed in range(2):
        sampler = HeuristicSampler(space, proxy="logme", proxy_top=2, poll_interval=0.01, seed=seed)
        study = _study(sampler, _JitteryStorage(seed))
        study.optimize(make_objective(space, sleep=0.002), n_jobs=6)

        done = [(_config(t, space), t.user_attrs.get("proxy")) for t in study.get_trials(states=(TrialState.COMPLETE,))]
        assert len(done) == len(set(done))
        proxied = {c for c, proxy in done if proxy}
        assert all(proxy in (None, "logme") for _, proxy in done)
        assert proxied == set(space.unimodal_configs("image")) | set(space.unimodal_configs("text"))
        status = plan_status(study)
        assert status.exhausted and status.planned["image"] == status.planned["text"] == 2
        trained = [c for c, proxy in done if not proxy]
        # The trained unimodal ones are the proxy's top two per modality, and the peaks among them.
        assert len([c for c in trained if c.modality != "fusion"]) == 4
        assert status.best_image == TrialConfig("image", image=PEAKS["medium"][0], d_alg=space.d_alg)
        assert len(trained) == 4 + status.planned["fusion"]


def test_trials_asked_while_only_proxy_trials_run_wait_for_them(tmp_path: Path) -> None:
    # One modality: nothing is pending from the last proxy claim until every score is in.
    space = SearchSpace("medium", image=_space(tmp_path, "medium").image, text=None, fusion_methods=())
    study = _study(HeuristicSampler(space, proxy="ridge", proxy_top=2, poll_interval=0.01, seed=0))
    study.optimize(make_objective(space, sleep=0.02), n_jobs=4)
    assert plan_status(study).exhausted and len(_completed(study, space)) == 9 + 2
    # Only the threads finding the plan exhausted at the end get a surplus trial.
    assert sum(1 for t in study.trials if t.user_attrs.get("surplus")) <= 3


def test_failing_config_is_retried_up_to_max_failures_then_skipped(tmp_path: Path) -> None:
    space = _space(tmp_path, "medium")
    broken = TrialConfig("image", image=(10, 4), d_alg=64)
    study = _study(HeuristicSampler(space, max_failures=3))
    study.optimize(make_objective(space, fail={broken: 99}), catch=(RuntimeError,))

    failed = [_config(t, space) for t in study.get_trials(states=(TrialState.FAIL,))]
    assert failed == [broken] * 3
    status = plan_status(study)
    assert status.given_up == (broken,) and status.failures == 3 and status.exhausted
    assert len(_completed(study, space)) == MEDIUM_PLAN - 1


def test_a_given_up_neighbour_of_the_optimum_is_left_out_of_the_fusion_phase(tmp_path: Path) -> None:
    space = _space(tmp_path, "medium")
    broken = TrialConfig("image", image=(30, 4), d_alg=64)  # in the cross around the image peak (30, 8)
    study = _study(HeuristicSampler(space))
    study.optimize(make_objective(space, fail={broken: 99}), catch=(RuntimeError,))

    assert [_config(t, space) for t in study.get_trials(states=(TrialState.FAIL,))] == [broken] * 2
    status = plan_status(study)
    assert status.given_up == (broken,) and status.exhausted
    assert (30, 4) not in status.image_candidates and len(status.image_candidates) == 4
    fusions = [c for c in _completed(study, space) if c.modality == "fusion"]
    assert fusions and all(c.image != (30, 4) for c in fusions)
    assert len(fusions) == 4 * 3  # 4 image neighbours x the 3 of the text corner optimum


def test_beat_claims_records_the_heartbeat_of_a_claim_in_ask_and_tell(tmp_path: Path) -> None:
    space = _space(tmp_path, "tiny")
    storage = _sqlite(tmp_path, heartbeat=True)
    for beat in (False, True):
        study = _study(HeuristicSampler(space, beat_claims=beat), storage, name=f"beat-{beat}")
        trial = study.ask()
        assert storage.get_trial(trial._trial_id).user_attrs["config"]  # claimed
        with storage.scoped_session() as session:  # a trial without a heartbeat row never goes stale
            rows = session.execute(sqlalchemy.text("SELECT COUNT(*) FROM trial_heartbeats WHERE trial_id = :id"),
                                   {"id": trial._trial_id}).scalar_one()
        assert rows == int(beat)


def test_config_that_fails_once_is_retried_and_completes(tmp_path: Path) -> None:
    space = _space(tmp_path, "tiny")
    flaky = TrialConfig("text", text=(10, 20))
    study = _study(HeuristicSampler(space))
    study.optimize(make_objective(space, fail={flaky: 1}), catch=(RuntimeError,))

    assert [_config(t, space) for t in study.get_trials(states=(TrialState.FAIL,))] == [flaky]
    completed = _completed(study, space)
    assert flaky in completed and len(completed) == len(set(completed)) == TINY_PLAN
    assert plan_status(study).given_up == ()


# ---------------------------------------------------------------------------------------- edges of the life cycle

def test_trial_asked_after_exhaustion_is_a_pruned_surplus_trial(tmp_path: Path) -> None:
    space = _space(tmp_path, "tiny")
    study = _study(HeuristicSampler(space))
    study.optimize(make_objective(space))
    study.optimize(make_objective(space), n_trials=1)

    extra = study.trials[-1]
    assert len(study.trials) == TINY_PLAN + 1
    assert extra.state == TrialState.PRUNED and extra.user_attrs["surplus"] is True and extra.params == {}


def test_ask_and_tell_waits_at_the_phase_barrier_and_ends_without_error(tmp_path: Path) -> None:
    space = _space(tmp_path, "tiny")
    study = _study(HeuristicSampler(space))
    asked = [study.ask() for _ in range(8)]
    configs = [suggest_config(t, space) for t in asked]
    assert {c.modality for c in configs} == {"image", "text"} and len(set(configs)) == 8

    status = plan_status(study)
    assert status.waiting and status.phase == "image" and len(status.running) == 8 and next_config(study) is None
    for trial, config in zip(asked, configs):
        study.tell(trial, score(space, config))
    assert next_config(study) == TrialConfig("fusion", image=(10, 8), text=(0, 20), fusion="linear_add")

    while not plan_status(study).exhausted:  # after_trial's study.stop() must not raise outside optimize()
        trial = study.ask()
        study.tell(trial, score(space, suggest_config(trial, space)))
    assert len(study.trials) == TINY_PLAN


def test_wait_timeout_fails_the_waiting_trial_and_raises(tmp_path: Path) -> None:
    space = _space(tmp_path, "tiny")
    study = _study(HeuristicSampler(space, poll_interval=0.05, wait_timeout=0.3))
    for _ in range(8):  # every unimodal config claimed, none told
        suggest_config(study.ask(), space)

    started = time.monotonic()
    with pytest.raises(TimeoutError, match="waited"):
        study.ask()
    assert 0.3 <= time.monotonic() - started < 5
    assert study.trials[-1].state == TrialState.FAIL


def test_minimize_study_is_rejected_and_its_trial_not_left_running() -> None:
    space = load_space("paper")
    study = optuna.create_study(direction="minimize", sampler=HeuristicSampler(space))
    with pytest.raises(ConfigError, match="maximize"):
        study.optimize(make_objective(space), n_trials=1)
    assert [t.state for t in study.trials] == [TrialState.FAIL]


def test_enqueued_configs_count_as_trials_of_the_plan(tmp_path: Path) -> None:
    space = _space(tmp_path, "tiny")
    study = _study(HeuristicSampler(space))
    extra = TrialConfig("fusion", image=(10, 4), text=(10, 20), fusion="linear_add")
    study.enqueue_trial(TrialConfig("image", image=(30, 8)).to_params())
    study.enqueue_trial(extra.to_params())
    study.optimize(make_objective(space))

    completed = _completed(study, space)
    assert completed[:2] == [TrialConfig("image", image=(30, 8)), extra]
    assert len(completed) == len(set(completed)) == TINY_PLAN + 1  # the extra fusion pair is off the plan


def test_enqueued_partial_params_get_a_pending_config_that_matches_them(tmp_path: Path) -> None:
    space = _space(tmp_path, "tiny")
    study = _study(HeuristicSampler(space))
    study.enqueue_trial({"modality": "text", "text_t": 10})
    study.optimize(make_objective(space), n_trials=1)

    assert _config(study.trials[0], space) == TrialConfig("text", text=(10, 20))


def test_suggest_config_works_with_optunas_grid_sampler(tmp_path: Path) -> None:
    space = _space(tmp_path, "tiny")
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.GridSampler(space.grid_axes()))
    study.optimize(make_objective(space))

    completed = _completed(study, space)
    assert set(completed) == set(space.fusion_configs()) and len(completed) == 16


def test_worker_with_another_search_space_on_the_same_study_is_rejected(tmp_path: Path) -> None:
    storage = _sqlite(tmp_path)
    tiny = _space(tmp_path, "tiny")
    _study(HeuristicSampler(tiny), storage).optimize(make_objective(tiny), n_trials=1)

    medium = _space(tmp_path, "medium")
    study = _study(HeuristicSampler(medium), storage)
    with pytest.raises(ConfigError, match="grids"):
        study.optimize(make_objective(medium), n_trials=1)


@pytest.mark.parametrize("kwargs", [{"neighbourhood": "star"}, {"fusion_methods": ["gating"]}, {"fusion_methods": []},
                                    {"max_failures": 0}, {"radius": -1}, {"poll_interval": 0}])
def test_invalid_sampler_options_raise_config_error(kwargs: dict) -> None:
    with pytest.raises(ConfigError):
        HeuristicSampler(load_space("paper"), **kwargs)


def test_plan_status_needs_a_heuristic_sampler() -> None:
    with pytest.raises(ConfigError, match="HeuristicSampler"):
        plan_status(optuna.create_study(direction="maximize"))


# ---------------------------------------------------------------------------------------- worker process

def _worker_main(url: str, study_name: str, space_path: str, mode: str, folder: str, heartbeat: str) -> None:
    space = load_space(space_path)
    kwargs = {"heartbeat_interval": 1, "grace_period": 2} if heartbeat == "1" else {}
    storage = optuna.storages.RDBStorage(url, engine_kwargs={"connect_args": {"timeout": 30}}, **kwargs)
    study = optuna.load_study(study_name=study_name, storage=storage,
                              sampler=HeuristicSampler(space, poll_interval=0.05, wait_timeout=60, seed=0))
    objective = make_objective(space, sleep=0.03)

    def worker_objective(trial: optuna.Trial) -> float:
        trial.set_user_attr("worker", mode)
        if mode == "die":
            suggest_config(trial, space)
            time.sleep(0.3)  # the heartbeat thread has beaten
            os._exit(17)
        return objective(trial)

    (Path(folder) / f"ready-{mode}").touch()
    while not (Path(folder) / "go").exists():
        time.sleep(0.02)
    study.optimize(worker_objective)


if __name__ == "__main__" and len(sys.argv) == 8 and sys.argv[1] == "worker":
    _worker_main(*sys.argv[2:])
