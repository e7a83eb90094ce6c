"""The Ray Tune engine: a real local Ray runs the searches; the searcher's logic is also tested without workers."""

from __future__ import annotations

import math
import pickle
import shutil
import sqlite3
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

pytest.importorskip("ray.tune")

import ray  # noqa: E402
from ray.tune.search import Searcher  # noqa: E402

from difffeat_tune._errors import ConfigError  # noqa: E402
from difffeat_tune.config import TrialConfig  # noqa: E402
from difffeat_tune.search._heuristic import grid_neighbourhood, plan_status  # noqa: E402
from difffeat_tune.search._options import SearchOptions  # noqa: E402
from difffeat_tune.search.ray_engine import DiffFeatSearch, ViewLocation, WorkerSpec  # noqa: E402
from difffeat_tune.search.runner import open_storage, open_study  # noqa: E402
from difffeat_tune.settings import Settings  # noqa: E402
from difffeat_tune.space import load_space  # noqa: E402
from tests.conftest import IMAGE_PEAK, TEXT_PEAK, run_study, write_nan_block, write_synthetic_store  # noqa: E402

#: Few epochs at a higher learning rate: the probes still peak at IMAGE_PEAK and TEXT_PEAK.
RECIPE = {"epochs": 4, "batch_size": 32, "lr": 1e-2}


def _searcher(space, db_url: str, name: str, *, storage=None, poll_interval: float = 0.5,  # type: ignore[no-untyped-def]
              batched: bool = False, **overrides: object) -> DiffFeatSearch:
    """A searcher over a new (or resumed) study, as the Ray engine builds it."""
    settings = Settings.create(space=space, search=SearchOptions(storage=db_url, study_name=name), device="cpu",
                               cpu_threads=1, **{**RECIPE, **overrides})
    study = open_study(settings, name, storage=storage)
    return DiffFeatSearch(settings.space, settings.search, study=study, poll_interval=poll_interval, batched=batched)


#: A 2x2 image grid and a 1x2 text grid of the synthetic store: 4 + 2 unimodal trials, 3 x 2 fusion.
TINY_SPACE = """
[image]
t = [10, 30]
b = [4, 8]
[text]
t = [0]
b = [8, 12]
[fusion]
methods = ["linear_add"]
d_alg = 16
"""


@pytest.fixture(scope="module")
def ray_local() -> Iterator[None]:
    """One real Ray instance for the module (start-up takes ~15 s)."""
    # address="local": always a new instance, never a cluster some `ray start` left on this machine
    ray.init(address="local", num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1", log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture
def db_url(tmp_path: Path) -> Iterator[str]:
    """A SQLite storage in memory-backed /dev/shm when there is one (commits are ~10 ms on disk)."""
    shm = Path("/dev/shm")
    folder = Path(tempfile.mkdtemp(dir=shm)) if shm.is_dir() else tmp_path
    yield f"sqlite:///{folder}/studies.db"
    if folder != tmp_path:
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def tiny_space(tmp_path: Path):  # type: ignore[no-untyped-def]
    path = tmp_path / "tiny.toml"
    path.write_text(TINY_SPACE)
    return load_space(path)


def _tune_configs(folder: Path) -> list[dict[str, object]]:
    """The configs of the Tune trials of a run's results folder."""
    import json

    return [json.loads(path.read_text()) for path in sorted(folder.glob("*/params.json"))]


def _plan(study: optuna.Study) -> dict[str, set[str]]:
    plan: dict[str, set[str]] = {}
    for t in study.get_trials(states=(TrialState.COMPLETE,)):
        plan.setdefault(t.user_attrs["phase"], set()).add(t.user_attrs["config"])
    return plan


# ------------------------------------------------------------------------------- real Ray runs

@pytest.mark.slow
def test_ray_heuristic_runs_the_local_plan_and_finds_the_same_best(
        ray_local, tmp_path: Path, db_url: str, small_space) -> None:  # type: ignore[no-untyped-def]
    view = write_synthetic_store(tmp_path / "features")
    local = run_study(view, small_space, db_url, "local", evaluate_best=False, **RECIPE)
    summary = run_study(view, small_space, db_url, "ray", engine="ray", runs=tmp_path / "runs", **RECIPE)
    assert summary.trials == {"complete": 28}
    assert summary.phases == local.phases == {"image": 9, "text": 4, "fusion": 15}
    assert summary.best_config == local.best_config and summary.best_config["modality"] == "fusion"
    assert summary.best_score == pytest.approx(local.best_score, abs=1e-6)
    assert summary.probe_epochs == local.probe_epochs == 28 * 4
    assert summary.selection_split == "val" and summary.eval_split == "test"
    assert set(summary.eval_metrics) >= {"map", "of1"}  # evaluate_best ran on the driver
    storage = open_storage(db_url, heartbeat=False)
    ray_study = optuna.load_study(study_name="ray", storage=storage)
    local_study = optuna.load_study(study_name="local", storage=storage)
    assert _plan(ray_study) == _plan(local_study)
    local_trials = {t.user_attrs["config"]: t for t in local_study.trials}
    for trial in ray_study.trials:
        assert {"phase", "modality", "config", "epochs_run", "seconds", "split", "map", "of1", "history"} <= set(
            trial.user_attrs)
        assert trial.user_attrs["split"] == "val" and trial.user_attrs["epochs_run"] == 4
        assert trial.user_attrs["map"] == pytest.approx(trial.value)
        local_trial = local_trials[trial.user_attrs["config"]]
        assert trial.value == pytest.approx(local_trial.value, abs=1e-6)
        # batched as locally: no per-epoch report, every epoch's score in the trial's history
        assert not trial.intermediate_values
        assert trial.user_attrs["history"] == pytest.approx(local_trial.user_attrs["history"], abs=1e-6)
    # Tune ran a few batches (one per phase and free slot), not one Tune trial per configuration
    batches = [config.get("batch") for config in _tune_configs(tmp_path / "runs" / "ray" / "ray")]
    assert 3 <= len(batches) <= 8 and all(batches)
    assert sum(len(batch) for batch in batches) == 28
    assert ray_study.user_attrs["engine"] == "ray" and ray_study.user_attrs["sampler"] == "heuristic"
    assert (tmp_path / "runs" / "ray" / "ray").is_dir()  # Tune's results folder
    assert ray.is_initialized()  # the run used the test's Ray and left it running


@pytest.mark.slow
def test_ray_proxy_guided_heuristic_scores_on_the_workers_and_trains_the_top_ones(
        ray_local, tmp_path: Path, db_url: str, tiny_space) -> None:  # type: ignore[no-untyped-def]
    view = write_synthetic_store(tmp_path / "features")
    options = {"unimodal_proxy": "ridge", "proxy_top": 2, "evaluate_best": False, **RECIPE}
    local = run_study(view, tiny_space, db_url, "local", **options)
    summary = run_study(view, tiny_space, db_url, "ray", engine="ray", runs=tmp_path / "runs", **options)
    assert summary.phases == local.phases and summary.phases["proxy"] == 4 + 2
    assert summary.phases["image"] == summary.phases["text"] == 2
    storage = open_storage(db_url, heartbeat=False)
    ray_study = optuna.load_study(study_name="ray", storage=storage)
    assert _plan(ray_study) == _plan(optuna.load_study(study_name="local", storage=storage))
    for trial in ray_study.trials:
        proxied = trial.user_attrs.get("proxy") == "ridge"
        assert trial.state == TrialState.COMPLETE and proxied == (trial.user_attrs["phase"] == "proxy")
        assert trial.user_attrs["epochs_run"] == (0 if proxied else 4)
        assert ("history" in trial.user_attrs) != proxied  # a proxy trial trains no epoch
    again = run_study(view, tiny_space, db_url, "ray", engine="ray", runs=tmp_path / "runs", **options)
    assert again.trials == summary.trials  # a finished proxy-guided study runs nothing more


def _kill_a_busy_trainer(study_name: str, db_url: str, killed: list[int], stop: threading.Event) -> None:
    """Once the study has running trials, kill -9 one Ray Tune trainer process (a worker dying mid-batch)."""
    import psutil

    storage = open_storage(db_url, heartbeat=False)
    while not stop.is_set() and not killed:
        try:
            study = optuna.load_study(study_name=study_name, storage=storage)
            running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
        except KeyError:  # the study is not created yet
            running = []
        trainers = [p for p in psutil.process_iter(["cmdline"])
                    if "ImplicitFunc.train" in " ".join(p.info["cmdline"] or ())] if running else []
        if trainers:
            trainers[0].kill()
            killed.append(trainers[0].pid)
        stop.wait(0.05)


@pytest.mark.slow
def test_a_dead_batch_fails_and_retries_only_its_own_configurations(
        ray_local, tmp_path: Path, db_url: str, tiny_space) -> None:  # type: ignore[no-untyped-def]
    view = write_synthetic_store(tmp_path / "features")
    killed: list[int] = []
    stop = threading.Event()
    killer = threading.Thread(target=_kill_a_busy_trainer, args=("dead", db_url, killed, stop), daemon=True)
    killer.start()
    try:  # Tune gives up at once (max_failures=0): the heuristic retries the dead batch's configurations
        summary = run_study(view, tiny_space, db_url, "dead", engine="ray", evaluate_best=False, runs=tmp_path,
                            engine_options={"max_failures": 0}, **{**RECIPE, "epochs": 300})
    finally:
        stop.set()
        killer.join()
    assert len(killed) == 1
    study = optuna.load_study(study_name="dead", storage=db_url)
    failed = [t for t in study.trials if t.state == TrialState.FAIL]
    assert all(t.user_attrs["error"].startswith("Ray Tune gave up on the trial") for t in failed)
    # the 6 unimodal configurations ran as two batches of 3 (2 trial slots); only the dead one failed
    assert len(failed) == 3 and all(t.number < 6 for t in failed)
    complete = {t.user_attrs["config"] for t in study.trials if t.state == TrialState.COMPLETE}
    assert {t.user_attrs["config"] for t in failed} <= complete  # each retried once, and completed
    assert summary.trials == {"complete": 6 + 6, "fail": 3} and summary.phases == {"image": 4, "text": 2, "fusion": 6}


def _poison_block(view, modality: str, t: int, block: int, split: str) -> Path:  # type: ignore[no-untyped-def]
    """NaN in one block's column of a stored shard (a faulty shard for one configuration)."""
    return write_nan_block(view.extraction(modality).part_path(t, split, 0), block)


@pytest.mark.slow
def test_a_failing_configuration_is_recorded_fail_with_its_error_and_the_search_goes_on(
        ray_local, tmp_path: Path, db_url: str, tiny_space) -> None:  # type: ignore[no-untyped-def]
    view = write_synthetic_store(tmp_path / "features")
    _poison_block(view, "image", 10, 4, "train")  # image t=10 b=4: not in the cross around the image peak
    summary = run_study(view, tiny_space, db_url, "broken", engine="ray", evaluate_best=False, runs=tmp_path,
                        **RECIPE)
    # The heuristic retries a failed configuration once (max_failures=2), then gives it up.
    assert summary.trials == {"complete": 3 + 2 + 6, "fail": 2}
    assert summary.phases == {"image": 3, "text": 2, "fusion": 6}
    study = optuna.load_study(study_name="broken", storage=open_storage(db_url, heartbeat=False))
    failed = [t for t in study.trials if t.state == TrialState.FAIL]
    assert {t.user_attrs["config"] for t in failed} == {"image t=10 b=4"}
    for trial in failed:
        assert trial.user_attrs["error"].startswith("StoreError: ") and "NaN" in trial.user_attrs["error"]
    status = plan_status(_searcher(tiny_space, db_url, "broken").study)
    assert status.exhausted and status.given_up == (TrialConfig("image", image=(10, 4), d_alg=16),)
    assert status.best_image == TrialConfig("image", image=IMAGE_PEAK, d_alg=16)
    assert status.best_text == TrialConfig("text", text=TEXT_PEAK, d_alg=16)


@pytest.mark.slow
def test_ray_grid_covers_the_grid_once(ray_local, tmp_path: Path, db_url: str, tiny_space) -> None:  # type: ignore[no-untyped-def]
    view = write_synthetic_store(tmp_path / "features")
    options = {"sampler": "grid", "evaluate_best": False, "engine": "ray", "runs": tmp_path, "epochs": 2,
               "batch_size": 32, "batch_trials": 3}
    seen: list[int] = []
    summary = run_study(view, tiny_space, db_url, "grid", **options,
                        callbacks=[lambda study, trial: seen.append(trial.number)])  # a closure, as the CLI's
    grid = {c.label() for c in tiny_space.fusion_configs(("linear_add",))}
    assert len(grid) == 8 and sorted(seen) == list(range(8))
    assert summary.trials == {"complete": 8} and summary.phases == {"fusion": 8}
    study = optuna.load_study(study_name="grid", storage=db_url)
    assert sorted(t.user_attrs["config"] for t in study.trials) == sorted(grid)
    sizes = sorted(len(c.get("batch") or [c]) for c in _tune_configs(tmp_path / "ray" / "grid"))  # type: ignore[arg-type]
    assert sum(sizes) == 8 and max(sizes) == 3  # --batch-trials bounds a Tune trial's batch
    start = time.perf_counter()
    again = run_study(view, tiny_space, db_url, "grid", **options)
    assert again.trials == {"complete": 8}
    assert time.perf_counter() - start < 10  # nothing left to do: Tune is not even started


# ------------------------------------------------------------------------- the searcher alone

def _final(score: float) -> dict[str, object]:
    """A trial's final result as Tune hands it to the searcher (nested dicts flattened)."""
    return {"score": score, "epoch": 4, "final": True, "metrics/map": score, "metrics/of1": score / 2,
            "split": "val", "seconds": 0.01, "epochs_run": 4, "training_iteration": 5}


def _fake_score(params: dict[str, object]) -> float:
    score = 0.5 + 0.25 * (params["image_t"] is not None) + 0.25 * (params["text_t"] is not None)
    if params["image_t"] is not None:
        score -= abs(int(params["image_t"]) - IMAGE_PEAK[0]) / 100 + abs(int(params["image_b"]) - IMAGE_PEAK[1]) / 40
    if params["text_t"] is not None:
        score -= abs(int(params["text_t"]) - TEXT_PEAK[0]) / 100 + abs(int(params["text_b"]) - TEXT_PEAK[1]) / 40
    return score


def test_suggest_never_blocks_waits_at_the_phase_barrier_and_finishes(db_url: str, small_space) -> None:  # type: ignore[no-untyped-def]
    searcher = _searcher(small_space, db_url, "s", poll_interval=0.01)
    assert searcher.set_search_properties(None, None, small_space.to_tune())
    suggested: dict[str, dict[str, object]] = {}
    for i in range(13):  # every unimodal configuration is pending at once
        suggested[f"u{i}"] = searcher.suggest(f"u{i}")  # type: ignore[assignment]
    assert {p["modality"] for p in suggested.values()} == {"image", "text"}
    assert all(p is not None and set(p) == set(small_space.to_tune()) for p in suggested.values())
    image = next(p for p in suggested.values() if p["modality"] == "image")
    assert image["text_t"] is None and image["fusion"] is None  # absent axes are None in the Tune config
    start = time.perf_counter()
    assert searcher.suggest("barrier") is None  # nothing pending: the fusion plan needs every result
    assert time.perf_counter() - start < 1.0
    for trial_id in list(suggested)[:-1]:
        searcher.on_trial_complete(trial_id, result=_final(_fake_score(suggested[trial_id])))
        time.sleep(0.011)
        assert searcher.suggest(f"still-{trial_id}") is None
    last = list(suggested)[-1]
    searcher.on_trial_complete(last, result=_final(_fake_score(suggested[last])))
    fusion = {f"f{i}": searcher.suggest(f"f{i}") for i in range(15)}
    assert all(p is not None and p["modality"] == "fusion" for p in fusion.values())
    crosses = {(p["image_t"], p["image_b"], p["text_t"], p["text_b"]) for p in fusion.values()}  # type: ignore[index]
    assert crosses == {(i + x) for i in grid_neighbourhood(small_space.image, IMAGE_PEAK)
                       for x in grid_neighbourhood(small_space.text, TEXT_PEAK)}
    time.sleep(0.011)
    assert searcher.suggest("barrier-2") is None
    for trial_id, params in fusion.items():
        searcher.on_trial_complete(trial_id, result=_final(_fake_score(params)))  # type: ignore[arg-type]
    assert searcher.suggest("after") == Searcher.FINISHED
    study = searcher.study
    assert len(study.trials) == 28 and all(t.state == TrialState.COMPLETE for t in study.trials)
    best = study.best_trial
    assert best.user_attrs["phase"] == "fusion" and best.user_attrs["of1"] == best.value / 2
    assert best.user_attrs["map"] == best.value and best.user_attrs["epochs_run"] == 4
    searcher.close()


def test_failures_reported_by_tune_are_recorded_fail_with_their_error(db_url: str, small_space) -> None:  # type: ignore[no-untyped-def]
    searcher = _searcher(small_space, db_url, "f")
    for trial_id in ("raised", "died", "interrupted", "left-running"):
        assert searcher.suggest(trial_id) is not None
    with sqlite3.connect(db_url.removeprefix("sqlite:///")) as db:  # the driver beats for its running trials
        assert db.execute("SELECT COUNT(*) FROM trial_heartbeats").fetchone() == (4,)
    searcher.on_trial_complete("raised", result={"score": math.nan, "error": "StoreError: shard x is corrupt"})
    searcher.on_trial_complete("died", error=True)  # Tune gave up after FailureConfig's retries
    searcher.on_trial_complete("interrupted", result={"score": 0.5, "epoch": 2})  # stopped mid-way, not pruned
    searcher.close()  # the driver ends with a trial still running
    errors = [t.user_attrs.get("error", "") for t in searcher.study.trials]
    assert all(t.state == TrialState.FAIL for t in searcher.study.trials)
    assert errors[0] == "StoreError: shard x is corrupt"
    assert errors[1].startswith("Ray Tune gave up on the trial")
    assert errors[2].startswith("stopped before it finished")
    assert errors[3] == "the Ray driver stopped before the trial finished"
    # FAILED configurations are pending again: the heuristic retries them (max_failures=2).
    assert len(plan_status(searcher.study).pending) == 13


def _batch_result(configs: list[dict[str, object]], errors: dict[int, str]) -> dict[str, object]:
    """A batched trial's final result as :func:`run_trial` reports it (one entry per configuration)."""
    entries: list[dict[str, object]] = []
    for k, params in enumerate(configs):
        score = _fake_score(params)
        entries.append({"score": math.nan, "error": errors[k]} if k in errors else {
            "score": score, "metrics": {"map": score, "of1": score / 2}, "split": "val", "seconds": 0.01,
            "epochs_run": 4, "history": [score - 0.03, score - 0.02, score - 0.01, score]})
    return {"score": max(e["score"] for e in entries if "error" not in e), "final": True, "results": entries,
            "training_iteration": 1}


def test_a_batched_searcher_spreads_a_phase_over_the_free_slots_and_tells_each_configuration(  # type: ignore[no-untyped-def]
        db_url: str, small_space) -> None:
    searcher = _searcher(small_space, db_url, "batched", poll_interval=0.01, batched=True)
    assert searcher.max_batch == 32  # the local engine's automatic batch (no pruner)
    assert searcher.set_max_concurrency(2) is False  # Tune's limiter still enforces the limit
    first, second = searcher.suggest("a"), searcher.suggest("b")  # 13 unimodal configurations, 2 slots
    assert isinstance(first, dict) and isinstance(second, dict)
    assert (len(first["batch"]), len(second["batch"])) == (7, 6)
    assert set(first) == set(small_space.to_tune()) | {"batch"} and first["modality"] is None
    assert all(set(c) == set(small_space.to_tune()) for c in first["batch"] + second["batch"])
    assert searcher.suggest("c") is None  # the whole phase is taken
    searcher.on_trial_complete("a", result=_batch_result(first["batch"], {2: "StoreError: shard x is corrupt"}))
    searcher.on_trial_complete("b", error=True)  # Tune gave up on the second batch
    trials = searcher.study.trials
    assert [t.state for t in trials[:7]] == [TrialState.COMPLETE] * 2 + [TrialState.FAIL] + [TrialState.COMPLETE] * 4
    told = trials[0]
    assert told.value == pytest.approx(_fake_score(first["batch"][0])) and told.user_attrs["of1"] == told.value / 2
    assert told.user_attrs["history"] == pytest.approx([told.value - 0.03, told.value - 0.02, told.value - 0.01,
                                                         told.value])
    assert not told.intermediate_values and told.user_attrs["epochs_run"] == 4
    assert trials[2].user_attrs["error"] == "StoreError: shard x is corrupt"
    assert all(t.state == TrialState.FAIL and t.user_attrs["error"].startswith("Ray Tune gave up")
               for t in trials[7:])  # only the dead batch's own configurations
    time.sleep(0.02)
    retry = searcher.suggest("d")  # the 7 failed configurations are pending again: 4 + 3 over 2 slots
    assert isinstance(retry, dict) and len(retry["batch"]) == 4
    failed = [c for k, c in enumerate(first["batch"]) if k == 2] + second["batch"]
    assert all(c in failed for c in retry["batch"])
    searcher.close()


def test_with_a_pruner_a_batched_searcher_gives_one_configuration_per_tune_trial(  # type: ignore[no-untyped-def]
        db_url: str, tiny_space) -> None:
    searcher = _searcher(tiny_space, db_url, "pruned", batched=True, pruner="median")
    searcher.set_max_concurrency(2)
    assert searcher.max_batch == 1
    config = searcher.suggest("a")
    assert isinstance(config, dict) and "batch" not in config and config["modality"] in ("image", "text")
    assert searcher.report("a", {"score": 0.5, "epoch": 1}) is False  # its epochs reach the study
    assert searcher.study.trials[0].intermediate_values == {1: 0.5}
    searcher.close()


def test_the_trials_of_a_dead_driver_go_stale_and_are_retried(db_url: str, tiny_space) -> None:  # type: ignore[no-untyped-def]
    with pytest.warns(optuna.exceptions.ExperimentalWarning):
        storage = optuna.storages.RDBStorage(db_url, heartbeat_interval=1, grace_period=1)
    dead = _searcher(tiny_space, db_url, "d", storage=storage, poll_interval=0.01)
    first = {f"a{i}": dead.suggest(f"a{i}") for i in range(6)}  # every unimodal configuration
    assert all(first.values()) and dead.suggest("a6") is None
    dead.protocol.close()  # the driver dies: no more heartbeats, nothing told
    time.sleep(2.5)
    alive = _searcher(tiny_space, db_url, "d", storage=storage, poll_interval=0.01)
    assert alive.suggest("b0") is None  # the first look fails the stale trials...
    time.sleep(0.02)
    retried = alive.suggest("b1")  # ...whose configurations are pending again
    assert retried is not None and retried == first["a0"]
    states = [t.state for t in alive.study.trials]
    assert states[:6] == [TrialState.FAIL] * 6 and states[6] == TrialState.RUNNING
    alive.close()


def test_the_study_pruner_stops_trials_through_the_scheduler(db_url: str, tiny_space) -> None:  # type: ignore[no-untyped-def]
    searcher = _searcher(tiny_space, db_url, "p", pruner="median", epochs=8)
    for i in range(6):
        trial_id = f"t{i}"
        assert searcher.suggest(trial_id) is not None
        score = 0.9 if i < 5 else 0.1
        stopped_at = None
        for epoch in range(1, 9):  # what the scheduler does with each epoch's result
            if searcher.report(trial_id, {"score": score, "epoch": epoch}):
                stopped_at = epoch
                break
        if i < 5:
            assert stopped_at is None
            searcher.on_trial_complete(trial_id, result=_final(score))
        else:
            assert stopped_at == 2  # the median pruner's warm-up is epochs // 4 = 2 steps
            searcher.on_trial_complete(trial_id, result={"score": score, "epoch": 2, "time_total_s": 0.5})
    pruned = searcher.study.trials[-1]
    assert pruned.state == TrialState.PRUNED and pruned.user_attrs["epochs_run"] == 2
    assert sorted(pruned.intermediate_values) == [1, 2]
    searcher.close()


def test_n_trials_budget_and_pickling(db_url: str, tmp_path: Path, small_space) -> None:  # type: ignore[no-untyped-def]
    searcher = _searcher(small_space, db_url, "b", n_trials=2)
    assert searcher.suggest("a") is not None and searcher.suggest("b") is not None
    assert searcher.suggest("c") == Searcher.FINISHED
    copy = pickle.loads(pickle.dumps(searcher))  # Tune pickles its searcher with the Tuner's state
    assert copy.study.study_name == "b" and len(copy.study.trials) == 2
    searcher.close()
    view = write_synthetic_store(tmp_path / "features")
    location = ViewLocation.of(view)
    assert Path(location.root).is_absolute() and location.open().folder == view.folder
    probe = Settings.create(space=small_space, **RECIPE).probe
    spec = pickle.loads(pickle.dumps(WorkerSpec(location, probe, "cpu", 32)))
    assert spec.location == location and hash(spec) == hash(WorkerSpec(location, probe, "cpu", 32))
    # a bucket travels as its URI without the secret (each node reads its own credentials)
    bucket = ViewLocation("s3://key:secret@bucket/features?endpoint_override=127.0.0.1:9&scheme=http", "synthetic")
    assert "secret" not in bucket.root and bucket.root.startswith("s3://bucket/features")
    assert pickle.loads(pickle.dumps(bucket)) == bucket


def test_the_searcher_is_a_plain_tune_searcher_whose_checkpoint_names_its_study(  # type: ignore[no-untyped-def]
        db_url: str, tmp_path: Path, tiny_space) -> None:
    from ray.tune.search.optuna import OptunaSearch

    searcher = _searcher(tiny_space, db_url, "c")
    assert isinstance(searcher, Searcher) and not isinstance(searcher, OptunaSearch)
    assert searcher.metric == "score" and searcher.mode == "max"
    assert searcher.suggest("a") is not None
    checkpoint = tmp_path / "searcher.pkl"
    searcher.save(str(checkpoint))
    assert pickle.loads(checkpoint.read_bytes()) == {"study_name": "c"}  # everything else is in the study
    again = _searcher(tiny_space, db_url, "c")
    again.restore(str(checkpoint))  # the same study: resumes from storage
    other = _searcher(tiny_space, db_url, "other")
    with pytest.raises(ConfigError, match="of study 'c', not of 'other'"):
        other.restore(str(checkpoint))
    with pytest.raises(ConfigError, match="param_space"):
        searcher.set_search_properties(None, None, {"modality": ray.tune.choice(["image"])})
    for s in (searcher, again, other):
        s.close()


@pytest.mark.parametrize(("options", "message"), [
    ({"max_concurrent": 0}, "max_concurrent must be an integer of at least 1, got 0"),
    ({"max_failures": -1}, "max_failures must be an integer of at least 0, got -1"),
    ({"verbose": 7}, "verbose must be an integer from 0 to 3, got 7"),
    ({"resources_per_trial": {"cpu": -1}}, "resources_per_trial: 'cpu' must be a non-negative amount"),
    ({"resources_per_trial": 2}, "resources_per_trial must be a mapping"),
    ({"workers": 2}, "the ray engine takes no option 'workers'"),
])
def test_ray_engine_options_are_checked_before_ray_starts(  # type: ignore[no-untyped-def]
        options: dict[str, object], message: str, tmp_path: Path, db_url: str, tiny_space) -> None:
    view = write_synthetic_store(tmp_path / "features")
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        run_study(view, tiny_space, db_url, "o", engine="ray", engine_options=options, runs=tmp_path, **RECIPE)
    assert not (tmp_path / "ray").exists()  # Tune never started
    assert optuna.load_study(study_name="o", storage=db_url).trials == []  # nothing was asked
