"""The Ray Tune engine: the same search as :func:`~difffeat_tune.search.runner.run_search`, on a Ray cluster.

The driver holds the Optuna study (the same :class:`~optuna.storages.RDBStorage` and study name a
local run uses) and the same sampler: the :class:`~difffeat_tune.search._heuristic.HeuristicSampler`
or Optuna's ``GridSampler`` over the fusion grid. A Tune searcher (:class:`DiffFeatSearch`, a
:class:`ray.tune.search.Searcher`) follows the same trial protocol as the local engine
(:class:`~difffeat_tune.search._protocol.TrialProtocol`): it asks the study for a trial only
when the plan has something pending, so its ``suggest`` never blocks Tune's driver loop; it
returns ``None`` while the heuristic's phase barrier holds and ``Searcher.FINISHED`` once the plan
(or the grid) is exhausted. Ray workers only train: each builds one
:class:`~difffeat_tune.probe.objective.Objective` per process from plain data (the feature store's
folder, the data set's folder name, the extraction folder names and the objective settings),
runs its Tune trial's configurations (:func:`~difffeat_tune.search._protocol.run_batch`, as the
local engine does) and reports a final result with each configuration's metrics.

Batches: :func:`run_ray` gives one Tune trial up to
:attr:`~difffeat_tune.search._protocol.TrialProtocol.batch_size` configurations of the current
phase (``SearchOptions.batch_trials``; automatic: as many as the local engine trains together),
spread over the trials the cluster runs at once, and their probes train as one computation. Each
configuration stays its own Optuna trial (attributes, per-epoch ``history``, error, retry). With
a pruner a Tune trial holds one configuration and reports every epoch's score, which the study's
pruner reads on the driver (:class:`OptunaPruningScheduler`).
The driver writes everything to the study, with the same user attributes as a local trial, so
:func:`~difffeat_tune.search.runner.summarize`, ``compare`` and the dashboard see Ray runs exactly
like local ones. Workers never open the Optuna storage.

Failures: a configuration that raises (a missing or corrupt shard, a diverged probe...) is
reported with its error, the others of its batch are unaffected; the driver records its Optuna
trial FAIL with the user attribute ``error`` and the search goes on (the heuristic retries a
failed configuration up to ``SearchOptions.max_failures`` times in new trials). A worker that
dies (killed, out of memory, node lost) is retried by Tune on the same Optuna trials
(``FailureConfig(max_failures)``), so no completed work is repeated; when Tune gives up, the
configurations of that Tune trial, and only those, are recorded FAIL with Tune's error (and
retried).
While the driver runs it records Optuna heartbeats for its running trials; if the driver dies,
they go stale and the next run (local or Ray) fails them and retries their configurations.
"""

from __future__ import annotations

import logging
import math
import os
import pickle
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import optuna
from optuna.trial import TrialState
from ray.tune.schedulers import FIFOScheduler, TrialScheduler
from ray.tune.search import Searcher

from difffeat_tune._errors import ConfigError
from difffeat_tune._paths import store_location
from difffeat_tune._ray import start_ray
from difffeat_tune.config import (
    P_FUSION,
    P_IMAGE_B,
    P_IMAGE_T,
    P_MODALITY,
    P_TEXT_B,
    P_TEXT_T,
    TrialConfig,
)
from difffeat_tune.probe.objective import Objective, ObjectiveSettings, TrialResult
from difffeat_tune.search import _attrs as A
from difffeat_tune.search._options import SearchOptions
from difffeat_tune.search._plan import PROXY_ATTR
from difffeat_tune.search._protocol import POLL_INTERVAL, STOPPED, Asked, TrialProtocol, run_batch
from difffeat_tune.search._run import SearchRun
from difffeat_tune.space import SearchSpace
from difffeat_tune.store import FeatureStore, FeatureView

if TYPE_CHECKING:
    from ray.tune.experiment import Trial

logger = logging.getLogger(__name__)

#: The Tune metric (the selection score) and its mode.
METRIC, MODE = "score", "max"
#: GPU share of a Tune trial of one configuration when the cluster has GPUs (a linear probe uses
#: a small part of one).
DEFAULT_GPU_FRACTION = 0.25
#: GPU share of a Tune trial of a batch of configurations: the stacked probes fill one GPU, as
#: they do in the local engine.
BATCH_GPU_FRACTION = 1.0
#: The key of a trial's Tune config naming its proxy (``None``: train the probe).
C_PROXY = PROXY_ATTR
#: The key of a batched trial's Tune config listing its configurations (each as a one-configuration
#: trial's config).
C_BATCH = "batch"
#: Keys of the results a trial reports to Tune.
R_EPOCH, R_FINAL, R_ERROR, R_METRICS, R_SPLIT, R_SECONDS, R_EPOCHS, R_HISTORY, R_RESULTS = (
    "epoch", "final", "error", "metrics", "split", "seconds", "epochs_run", "history", "results")
_PARAMS = (P_MODALITY, P_IMAGE_T, P_IMAGE_B, P_TEXT_T, P_TEXT_B, P_FUSION)
OptunaCallback = Callable[[optuna.Study, optuna.trial.FrozenTrial], None]


# ---------------------------------------------------------------------------------------- workers

@dataclass(frozen=True)
class ViewLocation:
    """Where a data set's features are, as plain picklable data every Ray worker can open.

    Attributes:
        root: the feature store: an absolute folder path that is the same on every node (a
            shared folder; ``file://`` URIs are accepted), or a bucket URI (``s3://...``; each
            node reads it with the credentials of its own environment, never carried here).
        dataset: the data set's folder name in the store (``<name>-<fingerprint>``).
        image: the image extraction's folder name, or ``None`` for none.
        text: the text extraction's folder name, or ``None`` for none.
    """

    root: str
    dataset: str
    image: str | None = None
    text: str | None = None

    def __post_init__(self) -> None:
        root = store_location(self.root, "feature store")
        object.__setattr__(self, "root", str(root.expanduser().absolute() if isinstance(root, Path) else root))

    @classmethod
    def of(cls, view: FeatureView) -> ViewLocation:
        """The location of an open view (a local folder made absolute)."""
        folder = view.folder.absolute() if isinstance(view.folder, Path) else view.folder
        return cls(root=str(folder.parent), dataset=folder.name,
                   image=view.image.folder.name if view.image is not None else None,
                   text=view.text.folder.name if view.text is not None else None)

    @classmethod
    def coerce(cls, location: ViewLocation | FeatureView) -> ViewLocation:
        return location if isinstance(location, ViewLocation) else cls.of(location)

    def open(self) -> FeatureView:
        """Open the view (reads ``dataset.json`` and the extractions' descriptions)."""
        return FeatureStore(store_location(self.root, "feature store")).view(self.dataset, image=self.image,
                                                                             text=self.text)


@dataclass(frozen=True)
class WorkerSpec:
    """Everything a Ray worker needs to build the objective: plain, picklable, hashable data.

    Attributes:
        location: where the features are.
        settings: the objective's settings (the probe recipe, the selection split...).
        device: "auto" (CUDA if Ray gave the trial a GPU share), "cpu", "cuda"...
        d_alg: the fusion heads' common width.
        report_epochs: a one-configuration trial reports every epoch's score to Tune (for the
            study's pruner); else its per-epoch scores come back once, as its ``history``.
        max_probes: probes trained as one computation at most (``None``: as many as fit in memory).
    """

    location: ViewLocation
    settings: ObjectiveSettings
    device: str
    d_alg: int
    report_epochs: bool = True
    max_probes: int | None = None


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
    """The Tune function trainable: run the configuration(s) of ``config`` and report to Tune.

    ``config`` holds one configuration (its axes, and ``"proxy"`` for a proxy trial, which is
    scored by its proxy instead of a trained probe), or the list of them under ``"batch"``
    (:data:`C_BATCH`), which :func:`~difffeat_tune.search._protocol.run_batch` trains together.
    A one-configuration trial reports ``{"score", "epoch"}`` after every epoch when
    ``spec.report_epochs``. The final result has ``"final": True`` and, per configuration, its
    score, metrics, split, epochs run, seconds and per-epoch ``history`` (unless reported
    already), or its ``"error"`` (``"<type>: <message>"``); a batch's are listed under
    ``"results"``, in order, and its ``"score"`` is the best one. An error is reported and the
    function returns normally: the driver records the Optuna trial FAIL, and Tune does not re-run
    a deterministic failure.
    """
    from ray import tune

    batched = C_BATCH in config
    entries: Sequence[Mapping[str, Any]] = config[C_BATCH] if batched else [config]
    report_epochs = spec.report_epochs and not batched

    def on_epoch(k: int, epoch: int, score: float) -> bool:
        tune.report({METRIC: float(score), R_EPOCH: int(epoch)})
        return False  # Tune's scheduler stops the trial itself

    try:
        items = [(TrialConfig.from_params({k: e[k] for k in _PARAMS if e.get(k) is not None}, d_alg=spec.d_alg),
                  e.get(C_PROXY)) for e in entries]
        results: Sequence[TrialResult | Exception] = run_batch(
            _objective_for(spec), items, on_epoch if report_epochs else None, max_probes=spec.max_probes)
    except Exception as exc:  # noqa: BLE001 - every error of a configuration is recorded, not raised
        logger.warning("trial %s failed: %s", dict(config), exc)
        results = [exc] * len(entries)
    reported = [_entry(result, history=not report_epochs) for result in results]
    if batched:
        scores = [r[METRIC] for r in reported if R_ERROR not in r and math.isfinite(r[METRIC])]
        tune.report({METRIC: max(scores, default=math.nan), R_FINAL: True, R_RESULTS: reported})
    else:
        tune.report({**reported[0], R_EPOCH: int(reported[0].get(R_EPOCHS, 0)), R_FINAL: True})


def _entry(result: TrialResult | Exception, *, history: bool) -> dict[str, Any]:
    """What a trial reports of one configuration's result (plain JSON for Tune's result files)."""
    if isinstance(result, Exception):
        logger.warning("configuration failed: %s", result)
        return {METRIC: math.nan, R_ERROR: _describe(result)}
    entry = {METRIC: float(result.score), R_METRICS: {k: float(v) for k, v in result.metrics.items()},
             R_SPLIT: result.split, R_SECONDS: float(result.seconds), R_EPOCHS: int(result.epochs_run)}
    if history and result.history:
        entry[R_HISTORY] = [float(v) for v in result.history]
    return entry


# ---------------------------------------------------------------------------------------- driver

class DiffFeatSearch(Searcher):
    """Tune searcher over the study of a :class:`~difffeat_tune.search.runner.SearchRun`.

    It follows the trial protocol (:class:`~difffeat_tune.search._protocol.TrialProtocol`) as
    the local engine does: ``suggest`` reads the plan from storage first and asks the study only
    when something is pending, so it never blocks Tune's driver loop. It returns ``None`` while
    the plan waits for running trials (the heuristic's phase barrier; Tune asks again later), and
    ``Searcher.FINISHED`` once the plan is finished or ``n_trials`` trials were asked. Reads while
    waiting are spaced ``poll_interval`` seconds apart (a trial told triggers an immediate
    re-read), and stale trials of dead workers are failed then.

    Batches: with ``batched=True`` one Tune trial holds up to the protocol's
    :attr:`~difffeat_tune.search._protocol.TrialProtocol.batch_size` configurations (each its
    own Optuna trial), spread over the free trial slots (Tune's ``max_concurrent_trials``, given
    through :meth:`set_max_concurrency`): with 30 pending configurations and 2 slots, two Tune
    trials of 15. The default, one configuration per Tune trial, is what a Tuner built by hand
    with :func:`run_trial` expects.

    Every Optuna trial gets the user attributes a local trial gets (``phase``, ``modality``,
    ``config``, then one attribute per metric, ``epochs_run``, ``seconds``, ``split``, and
    ``history`` when its epochs were not reported one by one); failed trials get ``error``.
    Per-epoch scores reported by a one-configuration trial are its intermediate values, so the
    study's pruner (see :class:`OptunaPruningScheduler`) acts on them as it does locally.

    The study in storage is the search's whole state: :meth:`save` writes the study's name and
    :meth:`restore` checks it; a pickled searcher (Tune pickles it with the Tuner's state)
    reopens the study and leaves the heartbeats and callbacks on the driver.

    Args:
        space: the search space.
        options: the search options (sampler, fusion methods, neighbourhood, pruner, n_trials...).
        study: the open study (its sampler and pruner are used).
        callbacks: Optuna-style ``callback(study, frozen_trial)`` run on the driver after each trial.
        poll_interval: seconds between storage reads while nothing is pending.
        batched: give a Tune trial a batch of configurations (see above); ``False``: one each.
    """

    def __init__(self, space: SearchSpace, options: SearchOptions, *, study: optuna.Study,
                 callbacks: Sequence[OptunaCallback] = (), poll_interval: float = POLL_INTERVAL,
                 batched: bool = False) -> None:
        super().__init__(metric=METRIC, mode=MODE)
        self._search_space = space
        self._options = options
        self._poll_interval = float(poll_interval)
        self._batched = bool(batched)
        self._slots = 1
        self._open(study, callbacks)

    def _open(self, study: optuna.Study, callbacks: Sequence[OptunaCallback]) -> None:
        self._protocol = TrialProtocol(study, self._search_space, self._options, callbacks=callbacks,
                                       poll_interval=self._poll_interval)
        self._live: dict[str, list[Asked]] = {}  # by Tune trial id
        self._tune_trials: dict[str, Trial] = {}

    def __getstate__(self) -> dict[str, Any]:
        # What reopens the study; the live study, the heartbeats and the callbacks (e.g. closures
        # over a progress display) stay on the driver.
        state = {k: v for k, v in self.__dict__.items() if k not in ("_protocol", "_live", "_tune_trials")}
        study = self.study
        state["_reopen"] = (study.study_name, study._storage, study.sampler, study.pruner)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        name, storage, sampler, pruner = state.pop("_reopen")
        self.__dict__.update(state)
        self._open(optuna.load_study(study_name=name, storage=storage, sampler=sampler, pruner=pruner), ())

    def save(self, checkpoint_path: str) -> None:
        """The study in storage is the search's state: save only its name (checked by :meth:`restore`)."""
        with open(checkpoint_path, "wb") as handle:
            pickle.dump({"study_name": self.study.study_name}, handle)

    def restore(self, checkpoint_path: str) -> None:
        """Check that the checkpoint is of this searcher's study (which resumes from storage)."""
        with open(checkpoint_path, "rb") as handle:
            saved = pickle.load(handle)
        name = saved.get("study_name") if isinstance(saved, dict) else None
        if name != self.study.study_name:
            raise ConfigError(f"Tune checkpoint {checkpoint_path}: it is of study {name!r}, "
                              f"not of {self.study.study_name!r}",
                              "restore the Tune run with a searcher over the study it ran")
        logger.info("DiffFeatSearch resumes the Optuna study %r from its storage", name)

    @property
    def study(self) -> optuna.Study:
        """The Optuna study the search writes to."""
        return self._protocol.study

    @property
    def protocol(self) -> TrialProtocol:
        """The trial protocol the searcher follows."""
        return self._protocol

    def set_search_properties(self, metric: str | None, mode: str | None, config: dict, **spec: Any) -> bool:
        """Accept Tune's ``param_space`` if it is the search space's :meth:`SearchSpace.to_tune`."""
        if metric not in (None, METRIC) or mode not in (None, MODE):
            raise ConfigError(f"DiffFeatSearch optimises {METRIC!r} ({MODE}), not {metric!r} ({mode})")
        if config and _choices(config) != _choices(self._search_space.to_tune()):
            raise ConfigError("Tune's param_space is not the search space's to_tune()",
                              "pass param_space=space.to_tune() for the space given to DiffFeatSearch")
        return True

    @property
    def max_batch(self) -> int:
        """Configurations one Tune trial holds at most."""
        return self._protocol.batch_size if self._batched else 1

    def set_max_concurrency(self, max_concurrent: int) -> bool:
        """Remember how many Tune trials run at once (a batch is spread over the free ones).

        Returns ``False``: Tune's concurrency limiter still enforces the limit.
        """
        self._slots = max(1, int(max_concurrent))
        return False

    def _batch_size(self, pending: int) -> int:
        """Configurations for the next Tune trial: the pending ones shared by the free slots, at most :attr:`max_batch`."""
        free = max(1, self._slots - len(self._live))
        return max(1, min(self.max_batch, -(-pending // free)))

    def finished(self) -> bool:
        """Whether the plan is finished (nothing left to ask, nothing running)."""
        state = self._protocol.next_state(block=False)
        return state is not None and state.finished

    # -- Tune's searcher interface ------------------------------------------------------------

    def suggest(self, trial_id: str) -> dict[str, Any] | str | None:
        protocol = self._protocol
        if protocol.spent:
            return Searcher.FINISHED
        state = protocol.next_state(block=False)
        if state is None:
            return None
        if state.finished:
            return Searcher.FINISHED
        asked = protocol.ask(self._batch_size(state.pending), state)
        if not asked:  # another process took the last pending configuration, or a surplus trial
            return None
        self._live[trial_id] = asked
        if len(asked) == 1:
            return _tune_config(asked[0])
        # The axes are None at the top (they replace param_space's domains); each configuration is listed.
        return {**{k: None for k in _PARAMS}, C_BATCH: [_tune_config(item) for item in asked]}

    def report(self, trial_id: str, result: Mapping[str, Any]) -> bool:
        """Record a per-epoch score as the trial's intermediate value; return whether to prune it."""
        asked = self._live.get(trial_id)
        epoch, score = result.get(R_EPOCH), result.get(METRIC)
        if asked is None or len(asked) != 1 or result.get(R_FINAL) or result.get(R_ERROR) or epoch is None:
            return False
        return asked[0].pruned if score is None else self._protocol.report(asked[0], int(epoch), float(score))

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        self.report(trial_id, result)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        asked = self._live.pop(trial_id, None)
        if asked is None:
            return
        try:
            self._tell(trial_id, asked, result or {}, error)
        except Exception:
            logger.warning("could not record trial %d", asked.trial.number, exc_info=True)
        finally:
            self._tune_trials.pop(trial_id, None)

    def _tell(self, trial_id: str, asked: Sequence[Asked], result: Mapping[str, Any], error: bool) -> None:
        """Tell each configuration of a finished Tune trial its own outcome."""
        protocol = self._protocol
        if error:  # Tune gave up on the trial: only its own configurations fail (and are retried)
            protocol.abandon(self._tune_error(trial_id), asked)
        elif result.get(R_FINAL) or result.get(R_ERROR):
            entries = result.get(R_RESULTS) or [result]
            if len(entries) != len(asked):
                protocol.abandon(f"the Ray trial reported {len(entries)} results for {len(asked)} configurations",
                                 asked)
                return
            for item, entry in zip(asked, entries):
                if entry.get(R_ERROR):
                    protocol.fail(item, str(entry[R_ERROR]))
                else:
                    protocol.tell_result(item, _trial_result(item.config, entry), history=bool(entry.get(R_HISTORY)))
        elif len(asked) == 1 and asked[0].pruned:
            protocol.tell(asked[0], TrialState.PRUNED, attrs={
                A.EPOCHS: asked[0].reported, A.SECONDS: round(float(result.get("time_total_s", 0.0)), 4),
                A.SPLIT: self.study.user_attrs.get(A.SELECTION_SPLIT)})
        else:
            protocol.abandon(f"{STOPPED} (the Ray Tune run ended or was interrupted)", asked)

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
        except Exception:
            logger.debug("cannot read the error file of trial %s", trial_id, exc_info=True)
        last = text.rsplit("Failure # ", 1)[-1].splitlines()[1:] if "Failure # " in text else []
        detail = next((line.strip() for line in last if line.strip()), "")
        return f"Ray Tune gave up on the trial after its worker failed: {detail or 'see the Ray Tune results folder'}"

    def close(self) -> None:
        """Fail the trials that did not finish (so their configurations are retried); stop the heartbeats."""
        self._live.clear()
        self._protocol.abandon("the Ray driver stopped before the trial finished")
        self._protocol.close()


def _metrics_of(result: Mapping[str, Any]) -> dict[str, float]:
    """The metrics of a final result (Tune flattens the nested dict to ``metrics/<name>`` keys)."""
    nested = result.get(R_METRICS)
    if isinstance(nested, Mapping):
        return {str(k): float(v) for k, v in nested.items()}
    prefix = f"{R_METRICS}/"
    return {k[len(prefix):]: float(v) for k, v in result.items() if k.startswith(prefix)}


def _choices(config: Mapping[str, Any]) -> dict[str, list[Any]]:
    """The values of each axis of a Tune ``param_space`` (``tune.choice`` domains, or constants)."""
    return {k: list(getattr(v, "categories", [v])) for k, v in config.items()}


def _tune_config(asked: Asked) -> dict[str, Any]:
    """The Tune config of one configuration: every axis (``None`` where absent), and its proxy if any."""
    params = asked.config.to_params()
    config = {k: params.get(k) for k in _PARAMS}
    return {**config, C_PROXY: asked.proxy} if asked.proxy else config


def _trial_result(config: TrialConfig, result: Mapping[str, Any]) -> TrialResult:
    """The :class:`TrialResult` of one configuration's final result reported by :func:`run_trial`."""
    return TrialResult(config=config, score=float(result[METRIC]), metrics=_metrics_of(result),
                       split=result.get(R_SPLIT), epochs_run=int(result.get(R_EPOCHS, result.get(R_EPOCH, 0))),
                       history=[float(v) for v in result.get(R_HISTORY) or ()],
                       seconds=float(result.get(R_SECONDS, 0.0)))


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

def default_resources(device: str = "auto", *, batched: bool = False) -> dict[str, float]:
    """One CPU per Tune trial, plus a GPU share when the cluster has GPUs.

    The share is :data:`DEFAULT_GPU_FRACTION` for a trial of one configuration and
    :data:`BATCH_GPU_FRACTION` (a whole GPU) for a trial of a batch. Call after ``ray.init``.
    With ``device="cpu"`` no GPU is requested.
    """
    import ray

    has_gpu = float(ray.cluster_resources().get("GPU", 0)) > 0 and device != "cpu"
    share = BATCH_GPU_FRACTION if batched else DEFAULT_GPU_FRACTION
    return {"cpu": 1, "gpu": share if has_gpu else 0}


def _fitting_trials(resources: Mapping[str, float]) -> int:
    """How many trials of ``resources`` the cluster holds at once (at least 1)."""
    import ray

    total = ray.cluster_resources()
    counts = [float(total.get(name.upper() if name in ("cpu", "gpu") else name, 0)) / float(amount)
              for name, amount in resources.items() if amount]
    return max(1, int(min(counts))) if counts else 1


def _tune_name(study_name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", study_name).strip("_") or "study"


def run_ray(run: SearchRun, *, resources_per_trial: Mapping[str, float] | None = None,
            max_concurrent: int | None = None, max_failures: int = 2, verbose: int = 0) -> None:
    """The Ray engine of :func:`~difffeat_tune.search.runner.run_search`: the trials run as Ray Tune trials.

    A Tune trial trains a batch of configurations (up to ``SearchOptions.batch_trials``,
    automatic by default; one with a pruner), each its own Optuna trial; see
    :class:`DiffFeatSearch`.

    Args:
        run: the search run (its study, settings and features; the view's folder must be
            reachable at the same absolute path on every node).
        resources_per_trial: Tune resources of one Tune trial (default :func:`default_resources`:
            a whole GPU for a batch, a quarter for one configuration, when the cluster has GPUs).
        max_concurrent: Tune trials at once (default: as many as the cluster's resources hold at start).
        max_failures: Tune's retries of a trial whose worker died (same Optuna trials).
        verbose: Tune's console verbosity (0 silent ... 3 detailed).

    Raises:
        ConfigError: an option of the wrong type or out of range (named as the option).
    """
    _check_options(resources_per_trial, max_concurrent, max_failures, verbose)
    settings = run.settings
    location = ViewLocation.of(run.view)
    searcher = DiffFeatSearch(settings.space, settings.search, study=run.study, callbacks=run.callbacks,
                              batched=True)
    if searcher.finished():
        searcher.close()
        return
    spec = WorkerSpec(location, settings.probe, settings.device, settings.space.d_alg,
                      report_epochs=searcher.protocol.prunes, max_probes=settings.search.batch_trials)
    _tune(searcher, settings.space, spec, run.study.study_name, ray_address=settings.search.ray_address,
          results_dir=settings.search.runs / "ray", resources_per_trial=resources_per_trial,
          max_concurrent=max_concurrent, max_failures=max_failures, device=settings.device, verbose=verbose)


def _check_int(name: str, value: object, low: int, high: int | None = None) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < low or (high is not None and value > high):
        span = f"from {low} to {high}" if high is not None else f"of at least {low}"
        raise ConfigError(f"the ray engine's option {name} must be an integer {span}, got {value!r}", field=name)


def _check_options(resources_per_trial: Mapping[str, float] | None, max_concurrent: int | None,
                   max_failures: int, verbose: int) -> None:
    """The Ray engine's options, checked before Ray starts (one clear error instead of Tune's)."""
    if resources_per_trial is not None:
        if not isinstance(resources_per_trial, Mapping) or not resources_per_trial:
            raise ConfigError(f"the ray engine's option resources_per_trial must be a mapping of resource names "
                              f"to amounts, got {resources_per_trial!r}", 'e.g. {"cpu": 1, "gpu": 0.25}',
                              field="resources_per_trial")
        for name, amount in resources_per_trial.items():
            if not isinstance(name, str) or isinstance(amount, bool) or not isinstance(amount, (int, float)) \
                    or not amount >= 0:
                raise ConfigError(f"the ray engine's option resources_per_trial: {name!r} must be a "
                                  f"non-negative amount, got {amount!r}", field="resources_per_trial")
    if max_concurrent is not None:
        _check_int("max_concurrent", max_concurrent, 1)
    _check_int("max_failures", max_failures, 0)
    _check_int("verbose", verbose, 0, 3)


def _tune(searcher: DiffFeatSearch, space: SearchSpace, spec: WorkerSpec, study_name: str, *,
          ray_address: str | None, results_dir: str | Path, resources_per_trial: Mapping[str, float] | None,
          max_concurrent: int | None, max_failures: int, device: str, verbose: int) -> None:
    import ray
    from ray import tune

    started = start_ray(ray_address)
    try:
        resources = dict(resources_per_trial) if resources_per_trial is not None else \
            default_resources(device, batched=searcher.max_batch > 1)
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


__all__ = [
    "BATCH_GPU_FRACTION",
    "DEFAULT_GPU_FRACTION",
    "DiffFeatSearch",
    "OptunaPruningScheduler",
    "ViewLocation",
    "WorkerSpec",
    "default_resources",
    "run_ray",
    "run_trial",
]
