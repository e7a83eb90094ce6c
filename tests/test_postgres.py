"""Many workers on one study in a real PostgreSQL server: `difffeat-tune run heuristic` processes and the Ray engine.

The server is the session's ``postgres`` fixture (tests/_postgres.py); every test gets a new,
empty database, so the workers also race to create Optuna's tables.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from datetime import datetime
from pathlib import Path

import optuna
import pytest
import sqlalchemy
from optuna.trial import TrialState

from difffeat_tune.config import TrialConfig
from difffeat_tune.features import StoreSettings, ensure_features
from difffeat_tune.search._heuristic import HeuristicSampler, plan_status
from difffeat_tune.search._storage import GRACE_PERIOD_ENV, HEARTBEAT_INTERVAL_ENV, open_storage
from difffeat_tune.settings import Settings
from difffeat_tune.space import load_space
from tests.test_cli import project, run_cli  # noqa: F401 - the CLI tests' manifest data set and space

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")]

STUDY = "shared"
#: The killed worker's heartbeat: a beat every second, dead after 6 s of silence (a loaded 2-core
#: machine can stall a live worker for a few seconds; a false death would retry a live trial).
INTERVAL, GRACE = 1, 6
SHORT_HEARTBEAT = {HEARTBEAT_INTERVAL_ENV: str(INTERVAL), GRACE_PERIOD_ENV: str(GRACE)}
WORKER_TIMEOUT = 240


@pytest.fixture(scope="module")
def features(project: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The manifest's features with the CLI's default settings, extracted once: the workers only search."""
    folder = tmp_path_factory.mktemp("pg-features")
    from difffeat_tune.features import DataSettings

    settings = Settings.create(space=project / "space.toml", data=DataSettings(dataset=str(project / "metadata.jsonl")),
                               store=StoreSettings(features=folder), device="cpu")
    ensure_features(settings.features)
    return folder


def _data_args(project: Path, features: Path) -> list[str]:
    return ["--dataset", str(project / "metadata.jsonl"), "--space", str(project / "space.toml"),
            "--features", str(features), "--device", "cpu"]


class _Workers:
    """`difffeat-tune run heuristic` worker processes on the shared study of one database."""

    def __init__(self, project: Path, features: Path, url: str, folder: Path) -> None:
        self.url, self.folder = url, folder
        self.args = [*_data_args(project, features), "--storage", url, "--study-name", STUDY,
                     "--runs", str(folder / "runs"), "--no-report", "--json"]
        self.started: dict[str, subprocess.Popen[str]] = {}

    def spawn(self, name: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
        """Start worker ``name``; its output goes to <folder>/<name>.out and .err."""
        environment = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", **(env or {})}
        with (self.folder / f"{name}.out").open("w") as out, (self.folder / f"{name}.err").open("w") as err:
            worker = subprocess.Popen([sys.executable, "-m", "difffeat_tune.cli", "run", "heuristic", *self.args],
                                      stdout=out, stderr=err, env=environment, text=True)
        self.started[name] = worker
        return worker

    def wait(self, name: str) -> dict[str, object]:
        """Wait for worker ``name`` to succeed; return its JSON summary."""
        code = self.started[name].wait(timeout=WORKER_TIMEOUT)
        assert code == 0, self.stderr(name)
        return json.loads((self.folder / f"{name}.out").read_text())

    def stderr(self, name: str) -> str:
        return (self.folder / f"{name}.err").read_text()[-3000:]

    def kill_all(self) -> None:
        for worker in self.started.values():
            if worker.poll() is None:
                worker.kill()  # also ends a worker left frozen by SIGSTOP
                worker.wait()


@pytest.fixture
def workers(project: Path, features: Path, pg_url: str, tmp_path: Path):  # type: ignore[no-untyped-def]
    """Workers on a new database; none is left running after the test, whatever happened."""
    started = _Workers(project, features, pg_url, tmp_path)
    yield started
    started.kill_all()


def _study(url: str, project: Path) -> optuna.Study:
    space = load_space(project / "space.toml")
    return optuna.load_study(study_name=STUDY, storage=open_storage(url, heartbeat=False),
                             sampler=HeuristicSampler(space))


def _config(trial: optuna.trial.FrozenTrial) -> TrialConfig:
    return TrialConfig.from_params(trial.params)


def _assert_plan_done_once(study: optuna.Study) -> list[TrialConfig]:
    """The heuristic's plan is exhausted and no configuration was completed twice; returns them."""
    completed = [_config(t) for t in study.get_trials(states=(TrialState.COMPLETE,))]
    assert [c for c, n in Counter(completed).items() if n > 1] == []
    status = plan_status(study)
    assert status.exhausted and status.given_up == ()
    assert len(completed) == status.total_planned
    return completed


def test_three_worker_processes_share_one_study_and_complete_the_plan_once(workers: _Workers, project: Path) -> None:
    started = time.perf_counter()
    names = [f"w{i}" for i in range(3)]
    for name in names:
        workers.spawn(name)
    summaries = [workers.wait(name) for name in names]
    elapsed = time.perf_counter() - started

    study = _study(workers.url, project)
    completed = _assert_plan_done_once(study)
    assert {c.modality for c in completed} == {"image", "text", "fusion"}
    assert all(s["best_config"] == study.best_trial.params for s in summaries)
    print(f"3 workers, {len(completed)} configurations, {len(study.trials)} trials: {elapsed:.1f} s")


def test_worker_killed_mid_trial_is_failed_after_the_grace_and_its_config_retried(workers: _Workers,
                                                                                  project: Path) -> None:
    victim = workers.spawn("victim", env=SHORT_HEARTBEAT)
    killed = _stop_mid_trial(workers, "victim")  # the batch of trials the victim was training
    victim.send_signal(signal.SIGKILL)
    assert victim.wait(timeout=30) == -signal.SIGKILL
    killed_at = time.monotonic()

    for name in ("s0", "s1"):  # the survivors
        workers.spawn(name, env=SHORT_HEARTBEAT)
    for name in ("s0", "s1"):
        workers.wait(name)

    study = _study(workers.url, project)
    trials = study.get_trials()
    table = [(t.number, t.state.name, t.user_attrs.get("config"), t.user_attrs.get("error")) for t in trials]
    for trial in killed:
        dead = trials[trial.number]
        assert dead.state == TrialState.FAIL and dead.datetime_complete is not None
        silence = (dead.datetime_complete - _last_heartbeat(workers.url, trial._trial_id)).total_seconds()
        assert silence >= GRACE  # failed once its heartbeat had been silent for the grace, not before
        # By label: the victim may have died before its trial's parameters were set (the claim was)
        label = trial.user_attrs["config"]
        retried = [t for t in trials if t.number > trial.number and t.user_attrs.get("config") == label]
        assert [t.state for t in retried] == [TrialState.COMPLETE], table  # retried once, by a survivor
    assert [t.number for t in trials if t.state == TrialState.FAIL] == [t.number for t in killed], table
    completed = _assert_plan_done_once(study)
    assert {t.user_attrs["config"] for t in killed} <= {c.label() for c in completed}
    print(f"killed trials {[t.user_attrs['config'] for t in killed]} failed after the grace and were retried; "
          f"{len(completed)} configurations, {len(trials)} trials, "
          f"survivors done {time.monotonic() - killed_at:.1f} s after the kill")


def _last_heartbeat(url: str, trial_id: int) -> datetime:
    engine = sqlalchemy.create_engine(url)
    try:
        with engine.connect() as conn:
            return conn.execute(sqlalchemy.text("SELECT heartbeat FROM trial_heartbeats WHERE trial_id = :id"),
                                {"id": trial_id}).scalar_one()
    finally:
        engine.dispose()


def _stop_mid_trial(workers: _Workers, name: str) -> list[optuna.trial.FrozenTrial]:
    """Freeze worker ``name`` (SIGSTOP) at a moment it is training trials; return those trials.

    The worker is the study's only process, so the RUNNING trials are its own: a trial that has
    its configuration recorded is being trained (all of them, in one batch). Frozen, the
    worker cannot finish them between our look and the kill.
    """
    worker = workers.started[name]
    storage = open_storage(workers.url, heartbeat=False)  # the worker may still be creating the tables: safe
    deadline = time.monotonic() + WORKER_TIMEOUT
    while worker.poll() is None and time.monotonic() < deadline:
        worker.send_signal(signal.SIGSTOP)
        studies = storage.get_all_studies()
        running = storage.get_all_trials(studies[0]._study_id, states=(TrialState.RUNNING,)) if studies else []
        if running and all("config" in t.user_attrs for t in running):  # asked and claimed: training
            return running
        worker.send_signal(signal.SIGCONT)
        time.sleep(0.05)
    raise AssertionError(f"worker {name} never started a trial: {workers.stderr(name)}")


def test_ray_engine_runs_the_search_against_postgresql(project: Path, features: Path, pg_url: str, tmp_path: Path,
                                                       capsys, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    args = ["run", "heuristic", *_data_args(project, features), "--no-report", "--storage", pg_url, "--study-name", STUDY,
            "--runs", str(tmp_path / "runs"), "--engine", "ray", "--json"]
    started = time.perf_counter()
    code, out, err = run_cli(args, capsys, monkeypatch)
    elapsed = time.perf_counter() - started
    assert code == 0, err
    summary = json.loads(out)

    study = _study(pg_url, project)
    completed = _assert_plan_done_once(study)
    assert study.user_attrs["engine"] == "ray" and summary["best_config"] == study.best_trial.params
    assert summary["eval_split"] == "test" and summary["eval_metrics"]
    print(f"Ray engine: {len(completed)} configurations in {elapsed:.1f} s")
