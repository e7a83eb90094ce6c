"""The Ray Tune engine: the same search as :func:`~difffeat_tune.search.runner.run_search`, on a Ray cluster.

The driver holds the Optuna study (the same :class:`~optuna.storages.RDBStorage` and study name a
local run uses) and the same sampler: the :class:`~difffeat_tune.search._heuristic.HeuristicSampler`
or Optuna's ``GridSampler`` over the fusion grid. A Tune searcher built on
:class:`ray.tune.search.optuna.OptunaSearch` (:class:`DiffFeatSearch`) asks the study for a trial
only when the plan has something pending, so its ``suggest`` never blocks Tune's driver loop; it
returns ``None`` while the heuristic's phase barrier holds and ``Searcher.FINISHED`` once the plan
(or the grid) is exhausted. Ray workers only train: each builds one
:class:`~difffeat_tune.probe.objective.Objective` per process from plain data (the feature store's
folder, the data set's folder name, the extraction folder names and the objective settings),
reports every epoch's selection score with ``tune.report`` and a final result with the metrics.
The driver writes everything to the study, with the same user attributes as a local trial, so
:func:`~difffeat_tune.search.runner.summarize`, ``compare`` and the dashboard see Ray runs exactly
like local ones. Workers never open the Optuna storage.

Failures: a trial whose configuration raises (a missing or corrupt shard, a diverged probe...)
reports the error and ends normally; the driver records the Optuna trial FAIL with the user
attribute ``error`` and the search goes on (the heuristic retries a failed configuration up to
``SearchOptions.max_failures`` times in new trials). A worker that dies (killed, out of memory,
node lost) is retried by Tune on the same Optuna trial (``FailureConfig(max_failures)``), so no
completed work is repeated; when Tune gives up the trial is recorded FAIL with Tune's error.
While the driver runs it records Optuna heartbeats for its running trials; if the driver dies,
they go stale and the next run (local or Ray) fails them and retries their configurations.
"""

from __future__ import annotations

import logging
import math
import os
import pickle
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import optuna
from optuna.trial import TrialState
from ray.tune.schedulers import FIFOScheduler, TrialScheduler
from ray.tune.search import Searcher
from ray.tune.search.optuna import OptunaSearch

from difffeat_tune._errors import ConfigError
from difffeat_tune.config import P_FUSION, P_IMAGE_B, P_IMAGE_T, P_MODALITY, P_TEXT_B, P_TEXT_T, TrialConfig
from difffeat_tune.probe.objective import Objective, ObjectiveSettings
from difffeat_tune.search import _attrs as A
from difffeat_tune.search._heartbeat import Heartbeat, fail_stale
from difffeat_tune.search._options import SearchOptions
from difffeat_tune.search._records import ask, deferred_writes, finish
from difffeat_tune.search._samplers import plan_state
from difffeat_tune.search._suggest import suggest_config
from difffeat_tune.search._run import SearchRun, record_config
from difffeat_tune.space import SearchSpace
from difffeat_tune.store import FeatureStore, FeatureView

if TYPE_CHECKING:
    from ray.tune.experiment import Trial

logger = logging.getLogger(__name__)

#: The Tune metric (the selection score) and its mode.
METRIC, MODE = "score", "max"
#: GPU share of one trial when the cluster has GPUs (a linear probe uses a small part of one).
DEFAULT_GPU_FRACTION = 0.25
#: Keys of the results a trial reports to Tune.
R_EPOCH, R_FINAL, R_ERROR, R_METRICS, R_SPLIT, R_SECONDS, R_EPOCHS = (
    "epoch", "final", "error", "metrics", "split", "seconds", "epochs_run")
_PARAMS = (P_MODALITY, P_IMAGE_T, P_IMAGE_B, P_TEXT_T, P_TEXT_B, P_FUSION)
OptunaCallback = Callable[[optuna.Study, optuna.trial.FrozenTrial], None]


# ---------------------------------------------------------------------------------------- workers

@dataclass(frozen=True)
class ViewLocation:
    """Where a data set's features are, as plain picklable data every Ray worker can open.

    Attributes:
        root: the feature store's folder, an absolute path that is the same on every node (a
            shared folder). ``file://`` URIs are accepted; other URIs (``s3://``...) are not yet
            (the store reads through local paths).
        dataset: the data set's folder name in the store (``<name>-<fingerprint>``).
        image: the image extraction's folder name, or ``None`` for none.
        text: the text extraction's folder name, or ``None`` for none.
    """

    root: str
    dataset: str
    image: str | None = None
    text: str | None = None

    def __post_init__(self) -> None:
        root = self.root.removeprefix("file://") if self.root.startswith("file://") else self.root
        if re.match(r"^[A-Za-z][A-Za-z0-9+.-]*://", root):
            raise ConfigError(f"feature store {self.root!r}: only local or shared folder paths are supported",
                              "put the feature store on a folder every node mounts at the same path")
        object.__setattr__(self, "root", str(Path(root).expanduser().absolute()))

    @classmethod
    def of(cls, view: FeatureView) -> ViewLocation:
        """The location of an open view (its folder made absolute)."""
        folder = Path(view.folder).absolute()
        return cls(root=str(folder.parent), dataset=folder.name,
                   image=view.image.folder.name if view.image is not None else None,
                   text=view.text.folder.name if view.text is not None else None)

    @classmethod
    def coerce(cls, location: ViewLocation | FeatureView) -> ViewLocation:
        return location if isinstance(location, ViewLocation) else cls.of(location)

    def open(self) -> FeatureView:
        """Open the view (reads ``dataset.json`` and the extractions' descriptions)."""
        return FeatureStore(Path(self.root)).view(self.dataset, image=self.image, text=self.text)


@dataclass(frozen=True)
class WorkerSpec:
    """Everything a Ray worker needs to build the objective: plain, picklable, hashable data."""

    location: ViewLocation
    settings: ObjectiveSettings
    device: str
    d_alg: int


#: One objective per worker process, spec and device: trials a worker runs share its feature cache.
_OBJECTIVES: dict[tuple[WorkerSpec, str], Objective] = {}


def _trial_device(device: str) -> str:
    """The device of a trial: ``"auto"`` means CUDA only if Ray gave this trial a GPU share.

    (Ray leaves ``CUDA_VISIBLE_DEVICES`` alone for a worker without GPUs, so torch alone would
    see every GPU of the node.)
    """
    if device != "auto":
        return device
    import ray

    return "cuda" if ray.get_gpu_ids() else "cpu"


def _objective_for(spec: WorkerSpec) -> Objective:
    key = (spec, _trial_device(spec.device))
    objective = _OBJECTIVES.get(key)
    if objective is None:
        objective = Objective(spec.location.open(), spec.settings, device=key[1])
        _OBJECTIVES.clear()  # a worker serves one search at a time: drop other searches' caches
        _OBJECTIVES[key] = objective
    return objective


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def run_trial(config: Mapping[str, Any], spec: WorkerSpec) -> None:
    """The Tune function trainable: train the configuration of ``config`` and report to Tune.

    Reports ``{"score", "epoch"}`` after every epoch, then a final result with ``"final": True``,
    the metrics, the split, the epochs run and the seconds. An exception is reported as
    ``{"error": "<type>: <message>"}`` and the function returns normally: the driver records the
    Optuna trial FAIL, and Tune does not re-run a deterministic failure.
    """
    from ray import tune

    try:
        params = {k: config[k] for k in _PARAMS if config.get(k) is not None}
        trial_config = TrialConfig.from_params(params, d_alg=spec.d_alg)
        objective = _objective_for(spec)

        def on_epoch(epoch: int, score: float) -> bool:
            tune.report({METRIC: float(score), R_EPOCH: int(epoch)})
            return False  # Tune's scheduler stops the trial itself

        result = objective(trial_config, on_epoch)
    except Exception as exc:  # noqa: BLE001 - every error of a configuration is recorded, not raised
        logger.warning("trial %s failed: %s", dict(config), exc)
        tune.report({METRIC: float("nan"), R_ERROR: _describe(exc)})
        return
    tune.report({METRIC: float(result.score), R_EPOCH: int(result.epochs_run), R_FINAL: True,
                 R_METRICS: dict(result.metrics), R_SPLIT: result.split, R_SECONDS: float(result.seconds),
                 R_EPOCHS: int(result.epochs_run)})


# ---------------------------------------------------------------------------------------- driver

class DiffFeatSearch(OptunaSearch):
    """Tune searcher over the study of a :class:`~difffeat_tune.search.runner.SearchRun`.

    ``suggest`` reads the plan from storage first (:func:`~difffeat_tune.search._samplers.plan_state`)
    and asks the study only when something is pending: it returns ``None`` while the plan waits
    for running trials (the heuristic's phase barrier; Tune asks again later), and
    ``Searcher.FINISHED`` once the plan is finished or ``n_trials`` trials were asked. Reads while
    waiting are spaced ``poll_interval`` seconds apart (a trial completing triggers an immediate
    re-read), and stale trials of dead workers are failed then.

    Every trial gets the user attributes a local trial gets (``phase``, ``modality``, ``config``,
    then one attribute per metric, ``epochs_run``, ``seconds``, ``split``); failed trials get
    ``error``. Per-epoch scores are the trial's intermediate values, so the study's pruner (see
    :class:`OptunaPruningScheduler`) acts on them as it does locally.

    Args:
        space: the search space.
        options: the search options (sampler, fusion methods, neighbourhood, pruner, n_trials...).
        study: the open study (its sampler and pruner are used).
        callbacks: Optuna-style ``callback(study, frozen_trial)`` run on the driver after each trial.
        poll_interval: seconds between storage reads while nothing is pending.
    """

    def __init__(self, space: SearchSpace, options: SearchOptions, *, study: optuna.Study,
                 callbacks: Sequence[OptunaCallback] = (), poll_interval: float = 0.5) -> None:
        super().__init__(space=None, metric=METRIC, mode=MODE, sampler=study.sampler,
                         study_name=study.study_name, storage=study._storage)
        self._search_space = space
        self._options = options
        self._pruner = study.pruner
        self._budget = options.n_trials
        self._callbacks = list(callbacks)
        self._poll_interval = float(poll_interval)
        self._init_runtime()
        self._space = self._define_by_run  # suggestions go through suggest_config (conditional space)
        self._ot_study = study

    # -- state that never leaves the driver ---------------------------------------------------

    def _init_runtime(self) -> None:
        self._asked = 0
        self._next_read = 0.0
        self._tune_trials: dict[str, Trial] = {}
        self._reported: dict[str, int] = {}
        self._pruned: set[str] = set()
        self._heartbeat: Heartbeat | None = None  # the driver records its running trials' heartbeats
        self._enqueued = True  # WAITING trials in the study at the last read of the plan (ask pops one first)

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        # Tune pickles the searcher with the Tuner's state: leave out the live study, the threads
        # and the callbacks (e.g. closures over a progress display), which stay on the driver.
        for key in ("_ot_study", "_ot_trials", "_tune_trials", "_heartbeat", "_callbacks"):
            state.pop(key, None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._init_runtime()
        self._ot_trials = {}
        self._callbacks = []
        self._setup_study(MODE)

    def save(self, checkpoint_path: str) -> None:
        """The study in storage is the search's state: save only what identifies it."""
        with open(checkpoint_path, "wb") as handle:
            pickle.dump({"study_name": self._study_name, "asked": self._asked}, handle)

    def restore(self, checkpoint_path: str) -> None:
        logger.info("DiffFeatSearch resumes from the Optuna study %r, not from %s", self._study_name, checkpoint_path)

    # -- the study ----------------------------------------------------------------------------

    def _setup_study(self, mode: str | list[str]) -> None:
        self._ot_study = optuna.create_study(storage=self._storage, sampler=self._sampler, pruner=self._pruner,
                                             study_name=self._study_name, direction="maximize", load_if_exists=True)

    @property
    def study(self) -> optuna.Study:
        """The Optuna study the search writes to."""
        return self._ot_study

    def set_search_properties(self, metric: str | None, mode: str | None, config: dict, **spec: Any) -> bool:
        """Accept Tune's ``param_space`` if it is the search space's :meth:`SearchSpace.to_tune`."""
        if metric not in (None, METRIC) or mode not in (None, MODE):
            raise ConfigError(f"DiffFeatSearch optimises {METRIC!r} ({MODE}), not {metric!r} ({mode})")
        if config:
            expected = self.convert_search_space(self._search_space.to_tune())
            given = self.convert_search_space(config)
            if given != expected:
                raise ConfigError("Tune's param_space is not the search space's to_tune()",
                                  "pass param_space=space.to_tune() for the space given to DiffFeatSearch")
        return True

    def _define_by_run(self, trial: optuna.Trial) -> None:
        suggest_config(trial, self._search_space)

    def availability(self) -> str:
        """``"ask"`` (something is pending), ``"wait"`` (running trials must end first) or ``"finished"``."""
        state = plan_state(self._ot_study, self._search_space, self._options)
        self._enqueued = state.enqueued > 0
        return "finished" if state.finished else "ask" if state.can_ask else "wait"

    # -- Tune's searcher interface ------------------------------------------------------------

    def suggest(self, trial_id: str) -> dict[str, Any] | str | None:
        if self._budget is not None and self._asked >= self._budget:
            return Searcher.FINISHED
        now = time.monotonic()
        if now < self._next_read:
            return None
        availability = self.availability()
        if availability == "finished":
            return Searcher.FINISHED
        if availability == "wait":
            self._next_read = now + self._poll_interval
            fail_stale(self._ot_study)
            return None
        try:
            ot_trial = ask(self._ot_study, enqueued=self._enqueued)  # the driver records the heartbeats (Heartbeat)
        except TimeoutError:  # another process took the last pending configuration: wait
            self._next_read = now + self._poll_interval
            return None
        # At once: a driver dying from here on leaves a stale trial (the samplers beat it before it holds a configuration).
        self._beating().add(ot_trial._trial_id, beat=not getattr(self._ot_study.sampler, "beats_claims", False))
        try:
            with deferred_writes(ot_trial):  # the parameters and the configuration's attributes in one write
                config = suggest_config(ot_trial, self._search_space)
                record_config(ot_trial, config)
        except optuna.TrialPruned:  # a surplus trial (nothing left for it): close it, check again
            self._beating().discard(ot_trial._trial_id)
            self._tell(ot_trial, None, TrialState.PRUNED)
            return None
        self._ot_trials[trial_id] = ot_trial
        self._asked += 1
        params = config.to_params()
        return {k: params.get(k) for k in _PARAMS}  # absent axes are None in the Tune config

    def report(self, trial_id: str, result: Mapping[str, Any]) -> bool:
        """Record a per-epoch score as the trial's intermediate value; return whether to prune it."""
        ot_trial = self._ot_trials.get(trial_id)
        epoch = result.get(R_EPOCH)
        if ot_trial is None or result.get(R_FINAL) or result.get(R_ERROR) or epoch is None:
            return False
        score = result.get(METRIC)
        if epoch <= self._reported.get(trial_id, 0) or score is None or not math.isfinite(score):
            return trial_id in self._pruned
        self._reported[trial_id] = int(epoch)
        ot_trial.report(float(score), int(epoch))
        if isinstance(self._pruner, optuna.pruners.NopPruner) or not ot_trial.should_prune():
            return False
        self._pruned.add(trial_id)
        return True

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        self.report(trial_id, result)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        ot_trial = self._ot_trials.pop(trial_id, None)
        if ot_trial is None:
            return
        result = result or {}
        attrs: dict[str, Any] = {}
        value: float | None = None
        if error:
            state, attrs[A.ERROR] = TrialState.FAIL, self._tune_error(trial_id)
        elif result.get(R_ERROR):
            state, attrs[A.ERROR] = TrialState.FAIL, A.first_line(str(result[R_ERROR]))
        elif result.get(R_FINAL):
            attrs.update(A.result_attrs(_metrics_of(result), int(result.get(R_EPOCHS, result.get(R_EPOCH, 0))),
                                        float(result.get(R_SECONDS, 0.0)), result.get(R_SPLIT)))
            value = float(result[METRIC])
            state = TrialState.COMPLETE
            if not math.isfinite(value):
                state, value, attrs[A.ERROR] = TrialState.FAIL, None, f"the score is not finite ({value})"
        elif trial_id in self._pruned:
            state = TrialState.PRUNED
            attrs[A.EPOCHS] = self._reported.get(trial_id, 0)
            attrs[A.SECONDS] = round(float(result.get("time_total_s", 0.0)), 4)
            attrs[A.SPLIT] = self._ot_study.user_attrs.get(A.SELECTION_SPLIT)
        else:
            state = TrialState.FAIL
            attrs[A.ERROR] = "stopped before it finished (the Ray Tune run ended or was interrupted)"
        self._tell(ot_trial, value, state, attrs)
        self._reported.pop(trial_id, None)
        self._pruned.discard(trial_id)
        self._tune_trials.pop(trial_id, None)
        self._next_read = 0.0  # the plan may have moved on: read it at the next suggest

    def _tell(self, ot_trial: optuna.Trial, value: float | None, state: TrialState,
              attrs: Mapping[str, Any] | None = None) -> None:
        """The result's user attributes, the state and the value in one write (see :func:`finish`)."""
        self._beating().discard(ot_trial._trial_id)
        try:
            frozen = finish(self._ot_study, ot_trial, state, value, attrs)
        except optuna.exceptions.UpdateFinishedTrialError:  # failed as stale meanwhile (driver paused too long)
            logger.warning("trial %d was already finished in storage; its result is not recorded", ot_trial.number)
            return
        except Exception:  # noqa: BLE001
            logger.warning("could not record trial %d as %s", ot_trial.number, state.name, exc_info=True)
            return
        for callback in self._callbacks:
            callback(self._ot_study, frozen)

    def register(self, trial: Trial) -> None:
        """Remember Tune's trial object (for its error file when Tune gives up on it)."""
        self._tune_trials[trial.trial_id] = trial

    def _tune_error(self, trial_id: str) -> str:
        trial = self._tune_trials.get(trial_id)
        text = ""
        try:
            path = trial.error_file if trial is not None else None
            if path and os.path.exists(path):
                text = Path(path).read_text(errors="replace")
        except Exception:  # noqa: BLE001 - the generic message below is good enough
            logger.debug("cannot read the error file of trial %s", trial_id, exc_info=True)
        last = text.rsplit("Failure # ", 1)[-1].splitlines()[1:] if "Failure # " in text else []
        detail = next((line.strip() for line in last if line.strip()), "")
        return f"Ray Tune gave up on the trial after its worker failed: {detail or 'see the Ray Tune results folder'}"

    # -- heartbeats and clean-up --------------------------------------------------------------

    def _beating(self) -> Heartbeat:
        if self._heartbeat is None:
            self._heartbeat = Heartbeat(self._ot_study._storage)
        return self._heartbeat

    def close(self) -> None:
        """Stop the heartbeats and fail the trials that did not finish (so their configurations are retried)."""
        for trial_id in list(self._ot_trials):
            ot_trial = self._ot_trials.pop(trial_id)
            self._tell(ot_trial, None, TrialState.FAIL, {A.ERROR: "the Ray driver stopped before the trial finished"})
        if self._heartbeat is not None:
            self._heartbeat.close()


def _metrics_of(result: Mapping[str, Any]) -> dict[str, float]:
    """The metrics of a final result (Tune flattens the nested dict to ``metrics/<name>`` keys)."""
    nested = result.get(R_METRICS)
    if isinstance(nested, Mapping):
        return {str(k): float(v) for k, v in nested.items()}
    prefix = f"{R_METRICS}/"
    return {k[len(prefix):]: float(v) for k, v in result.items() if k.startswith(prefix)}


class OptunaPruningScheduler(FIFOScheduler):
    """First-in-first-out scheduling that stops a trial when the study's Optuna pruner says so.

    Each per-epoch result is recorded as the Optuna trial's intermediate value (by the searcher)
    and ``should_prune()`` is asked on the driver, as a local run asks it in the objective; a
    pruned trial's worker is stopped and the trial recorded PRUNED. It also hands Tune's trial
    objects to the searcher (for error messages).
    """

    def __init__(self, searcher: DiffFeatSearch) -> None:
        super().__init__()
        self._searcher = searcher

    def on_trial_add(self, tune_controller: Any, trial: Trial) -> None:
        self._searcher.register(trial)

    def on_trial_result(self, tune_controller: Any, trial: Trial, result: dict) -> str:
        if self._searcher.report(trial.trial_id, result):
            return TrialScheduler.STOP
        return TrialScheduler.CONTINUE


# ---------------------------------------------------------------------------------------- entry

def default_resources(device: str = "auto") -> dict[str, float]:
    """One CPU per trial, plus :data:`DEFAULT_GPU_FRACTION` of a GPU when the cluster has GPUs.

    Call after ``ray.init``. With ``device="cpu"`` no GPU is requested.
    """
    import ray

    has_gpu = float(ray.cluster_resources().get("GPU", 0)) > 0
    return {"cpu": 1, "gpu": DEFAULT_GPU_FRACTION if has_gpu and device != "cpu" else 0}


def _fitting_trials(resources: Mapping[str, float]) -> int:
    """How many trials of ``resources`` the cluster holds at once (at least 1)."""
    import ray

    total = ray.cluster_resources()
    counts = [float(total.get(name.upper() if name in ("cpu", "gpu") else name, 0)) / float(amount)
              for name, amount in resources.items() if amount]
    return max(1, int(min(counts))) if counts else 1


def _start_ray(ray_address: str | None) -> bool:
    """Join the cluster at ``ray_address``, reuse a running Ray, or start a local one; True if we started it."""
    import ray

    if ray.is_initialized():
        logger.info("using the Ray instance this process already runs")
        return False
    if ray_address:
        ray.init(address=ray_address)
        return True  # we connected: disconnect at the end (the cluster keeps running)
    ray.init(address="local", num_cpus=os.cpu_count() or 1, include_dashboard=False, _node_ip_address="127.0.0.1")
    return True


def _tune_name(study_name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", study_name).strip("_") or "study"


def run_ray(run: SearchRun, *, resources_per_trial: Mapping[str, float] | None = None,
            max_concurrent: int | None = None, max_failures: int = 2, verbose: int = 0) -> None:
    """The Ray engine of :func:`~difffeat_tune.search.runner.run_search`: every trial a Ray Tune trial.

    Args:
        run: the search run (its study, settings and features; the view's folder must be
            reachable at the same absolute path on every node).
        resources_per_trial: Tune resources of one trial (default :func:`default_resources`).
        max_concurrent: trials at once (default: as many as the cluster's resources hold at start).
        max_failures: Tune's retries of a trial whose worker died (same Optuna trial).
        verbose: Tune's console verbosity (0 silent ... 3 detailed).
    """
    settings = run.settings
    location = ViewLocation.of(run.view)
    searcher = DiffFeatSearch(settings.space, settings.search, study=run.study, callbacks=run.callbacks)
    fail_stale(run.study)
    if searcher.availability() == "finished":
        return
    spec = WorkerSpec(location, settings.probe, settings.device, settings.space.d_alg)
    _tune(searcher, settings.space, spec, run.study.study_name, ray_address=settings.search.ray_address,
          results_dir=settings.search.runs / "ray", resources_per_trial=resources_per_trial,
          max_concurrent=max_concurrent, max_failures=max_failures, device=settings.device, verbose=verbose)


def _tune(searcher: DiffFeatSearch, space: SearchSpace, spec: WorkerSpec, study_name: str, *,
          ray_address: str | None, results_dir: str | Path, resources_per_trial: Mapping[str, float] | None,
          max_concurrent: int | None, max_failures: int, device: str, verbose: int) -> None:
    import ray
    from ray import tune

    started = _start_ray(ray_address)
    try:
        resources = dict(resources_per_trial) if resources_per_trial is not None else default_resources(device)
        concurrent = max_concurrent if max_concurrent is not None else _fitting_trials(resources)
        storage_path = str(results_dir) if "://" in str(results_dir) else str(Path(results_dir).absolute())
        trainable = tune.with_resources(tune.with_parameters(run_trial, spec=spec), resources)
        tuner = tune.Tuner(
            trainable,
            param_space=space.to_tune(),
            tune_config=tune.TuneConfig(search_alg=searcher, scheduler=OptunaPruningScheduler(searcher),
                                        num_samples=-1, max_concurrent_trials=concurrent, reuse_actors=True),
            run_config=tune.RunConfig(name=_tune_name(study_name), storage_path=storage_path, verbose=verbose,
                                      failure_config=tune.FailureConfig(max_failures=max_failures)),
        )
        tuner.fit()
    finally:
        searcher.close()
        if started:
            ray.shutdown()


__all__ = ["DiffFeatSearch", "OptunaPruningScheduler", "ViewLocation", "WorkerSpec", "run_ray", "run_trial",
           "default_resources", "DEFAULT_GPU_FRACTION"]
