"""Algorithm 1 of the Diff-Feat paper as an Optuna sampler that only claims.

The plan (what is done, pending, running; the phase; the optima) is
:func:`~difffeat_tune.search._plan.derive_plan`, a pure function of the trials. This module reads
the study's trials, asks the plan, and claims one pending configuration per trial, exactly once
across every worker of the study. This package's engines read where the plan stands through
:func:`~difffeat_tune.search._samplers.plan_state` and wait in their own loops; :func:`plan_status`
and :func:`next_config` give the same answer to anyone holding a study.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import optuna
from optuna.samplers import BaseSampler
from optuna.study import StudyDirection
from optuna.trial import TrialState

from difffeat_tune._defaults import DEFAULT_MAX_FAILURES
from difffeat_tune._errors import ConfigError
from difffeat_tune.config import TrialConfig
from difffeat_tune.search import _attrs as A
from difffeat_tune.search import _plan
from difffeat_tune.search._heartbeat import fail_stale
from difffeat_tune.search._plan import CLAIM_ATTR, NEIGHBOURHOODS, PlanStatus, grid_neighbourhood  # noqa: F401
from difffeat_tune.search._records import write_trial

if TYPE_CHECKING:
    from optuna.distributions import BaseDistribution
    from optuna.study import Study
    from optuna.trial import FrozenTrial

    from difffeat_tune.space import SearchSpace

_logger = logging.getLogger(__name__)

#: Trial system attribute set on a trial that got no configuration; the value is the reason.
SURPLUS_ATTR = "difffeat:surplus"
#: Study system attribute recording the grid axes and options of the plan (checked by every worker).
PLAN_ATTR = "difffeat:heuristic_plan"
#: Re-reads (and seconds between them) of a claim that only higher-numbered trials also wrote (they yield).
_HOLD_ROUNDS, _HOLD_SLEEP = 20, 0.02


class HeuristicSampler(BaseSampler):
    """Sampler running Algorithm 1 of Diff-Feat: every unimodal configuration, then a local fusion search.

    The plan is :func:`~difffeat_tune.search._plan.derive_plan` of the study's trials (every image
    and text ``(t, b)``, then each modality optimum's neighbourhood crossed with the fusion
    methods: 30 + 20 + 15 = 65 trials on the paper's space). The sampler keeps no plan of its own:
    every worker derives the same plan, a resumed study continues where it stopped, and
    ``study.enqueue_trial(config.to_params())`` counts like any trial of ``config``.

    :meth:`before_trial` claims a pending configuration: it writes it to the trial's system
    attribute ``"difffeat:config"``, re-reads the trials and keeps it only if nobody else holds,
    queued or finished it meanwhile (a claim that only higher-numbered trials also wrote is held
    a few re-reads, since those yield); otherwise it chooses again. Each decision follows the
    trial's own write, so of two racing writers the later sees the earlier. The values are served
    from the claim (read them with :func:`~difffeat_tune.search._suggest.suggest_config`); the
    trial gets the user attributes ``phase``, ``modality`` and ``config``. With a ``proxy``, the proxy
    stage is claimed first, each trial with the user attribute ``proxy`` and the phase ``"proxy"``:
    the engines score it by :meth:`~difffeat_tune.probe.objective.Objective.proxy_score`. A trial finding nothing
    pending while others run waits (polling, failing stale trials) up to ``wait_timeout``; one
    with nothing to do is *surplus* (``surplus=True``; its first suggestion raises
    :class:`optuna.TrialPruned`). In ``study.optimize`` the study stops once the plan is exhausted.

    Example:

        .. testcode::

            import optuna

            from difffeat_tune.search._heuristic import HeuristicSampler, plan_status
            from difffeat_tune.search._suggest import suggest_config
            from difffeat_tune.space import load_space

            space = load_space("paper")


            def objective(trial):
                config = suggest_config(trial, space)
                image, text = config.image or (50, 12), config.text or (0, 24)
                return -abs(image[0] - 50) / 100 - abs(image[1] - 12) / 10 - text[0] / 100 - abs(text[1] - 24) / 10


            study = optuna.create_study(direction="maximize", sampler=HeuristicSampler(space))
            study.optimize(objective)  # stops by itself after the 65 trials of the plan
            assert plan_status(study).exhausted

    Note:
        Distributed use: run the same objective and sampler options in several processes (or
        ``n_jobs`` threads sharing one sampler) on one :class:`~optuna.storages.RDBStorage` and
        study name; a worker with other grid axes is rejected. Give the storage a heartbeat
        (``RDBStorage(url, heartbeat_interval=60, grace_period=180)``) so that a dead worker's
        trial is failed and its configuration retried by the sampler (do not add
        :class:`~optuna.storages.RetryHeartbeatStaleTrialCallback`). For SQLite pass
        ``engine_kwargs={"connect_args": {"timeout": 30}}``. Outside ``optimize`` (ask-and-tell,
        Ray Tune, this package's engines with ``wait_timeout=0``) ask only while
        :func:`plan_status` has ``pending`` configurations; stop when it is ``exhausted``.

    Args:
        space: The search space; objectives must pass the same one to ``suggest_config``.
        fusion_methods: Methods crossed in the fusion phase, some of ``space.fusion_methods``;
            ``None``: ``("linear_add",)`` (the paper's), or the space's first.
        neighbourhood: ``"cross"`` (the paper), ``"box"`` or ``"radius"``; see :func:`grid_neighbourhood`.
        radius: Grid steps of the neighbourhood.
        max_failures: FAILED trials after which a configuration is skipped (1 = no retry).
        proxy, proxy_top: ``"logme"`` or ``"ridge"``: score every unimodal configuration by this proxy
            and train the ``proxy_top`` best per modality (:class:`~difffeat_tune.search._plan.PlanRules`).
        poll_interval: Seconds between storage polls while waiting.
        wait_timeout: Seconds a trial may wait for a configuration (``None``: as long as needed);
            on expiry the trial is set FAIL and :exc:`TimeoutError` raised. ``0`` never waits.
        seed: Seed of the jitter of polling (the plan itself is deterministic).
        beat_claims: Record the trial's heartbeat before it claims, in ask-and-tell too (for
            callers beating their trials themselves); ``study.optimize`` beats claims anyway.
    """

    def __init__(self, space: SearchSpace, *, fusion_methods: Sequence[str] | None = None,
                 neighbourhood: _plan.Neighbourhood = "cross", radius: int = 1, max_failures: int = DEFAULT_MAX_FAILURES,
                 proxy: str | None = None, proxy_top: int = 3, poll_interval: float = 0.5,
                 wait_timeout: float | None = None, seed: int | None = None, beat_claims: bool = False) -> None:
        self._rules = _plan.PlanRules.for_space(space, fusion_methods, neighbourhood, radius, max_failures, proxy,
                                                proxy_top)
        if not poll_interval > 0:
            raise ConfigError(f"poll_interval must be positive, got {poll_interval!r}")
        if wait_timeout is not None and not wait_timeout >= 0:
            raise ConfigError(f"wait_timeout must be None or 0 or more, got {wait_timeout!r}")
        self._space = space
        self._poll_interval = float(poll_interval)
        self._wait_timeout = wait_timeout
        self._rng = random.Random(seed)
        self._beat_claims = beat_claims
        # Claims this process kept, by trial id: a cache of the storage (the source of truth).
        self._kept: dict[int, dict[str, Any]] = {}
        # Studies (storage, study id) whose plan record this process has checked or written.
        self._checked: set[tuple[int, int]] = set()
        # Per thread: the trials read to confirm its last claim (see _recent_read).
        self._reads = threading.local()

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_checked"] = set()  # keyed by this process's storage objects
        del state["_reads"]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._reads = threading.local()

    @property
    def space(self) -> SearchSpace:
        """The search space of the plan."""
        return self._space

    @property
    def fusion_methods(self) -> tuple[str, ...]:
        """The fusion methods crossed in the fusion phase."""
        return self._rules.fusion_methods

    @property
    def beats_claims(self) -> bool:
        """Whether :meth:`before_trial` records the trial's first heartbeat (``beat_claims``)."""
        return self._beat_claims

    def reseed_rng(self) -> None:
        self._rng = random.Random()

    def infer_relative_search_space(self, study: Study, trial: FrozenTrial) -> dict[str, BaseDistribution]:
        return {}

    def sample_relative(self, study: Study, trial: FrozenTrial,
                        search_space: dict[str, BaseDistribution]) -> dict[str, Any]:
        return {}

    def plan_status(self, study: Study) -> PlanStatus:
        """Where the search stands (see :func:`plan_status`)."""
        return self._derive(study.get_trials(deepcopy=False))

    # ------------------------------------------------------------------ the trial's life cycle

    def before_trial(self, study: Study, trial: FrozenTrial) -> None:
        self._check_study(study, trial)
        if self._beat_claims:  # before any claim: a worker that dies from here on leaves a stale trial
            write_trial(study._storage, trial._trial_id, heartbeat=True)
        attrs = trial.system_attrs
        # A copy made by RetryHeartbeatStaleTrialCallback carries the failed trial's claim; an
        # enqueued trial with a whole configuration was asked for by the user: keep either.
        claimed = _plan.config_from_params(attrs.get(CLAIM_ATTR), self._space.d_alg)
        given = claimed or _plan.config_from_params(attrs.get("fixed_params"), self._space.d_alg)
        if given is not None:
            self._keep(study, trial, _plan.Claim(given, trial.user_attrs.get(_plan.PROXY_ATTR) if claimed else None))
            return
        self._claim(study, trial, attrs.get("fixed_params") or {})

    def sample_independent(self, study: Study, trial: FrozenTrial, param_name: str,
                           param_distribution: BaseDistribution) -> Any:
        # The FrozenTrial given here may predate before_trial: read the claim back from storage
        # (or from the cache of claims this process kept, which are final).
        params = self._kept.get(trial._trial_id)
        attrs: dict[str, Any] = {}
        if params is None:
            attrs = study._storage.get_trial_system_attrs(trial._trial_id)
            params = attrs.get(CLAIM_ATTR)
        if not params:
            reason = attrs.get(SURPLUS_ATTR) or "the trial holds no configuration"
            raise optuna.TrialPruned(f"HeuristicSampler: trial {trial.number} is surplus: {reason}")
        if param_name not in params:
            raise ValueError(f"parameter {param_name!r} is not part of the configuration {params} claimed by trial "
                             f"{trial.number} (HeuristicSampler serves {sorted(_plan.PARAM_NAMES)}): suggest "
                             "parameters with suggest_config")
        value = params[param_name]
        try:
            param_distribution.to_internal_repr(value)
        except ValueError as exc:
            raise ValueError(f"the claimed {param_name}={value!r} is not among the choices of {param_distribution}: "
                             "pass the sampler's search space to suggest_config") from exc
        return value

    def after_trial(self, study: Study, trial: FrozenTrial, state: TrialState,
                    values: Sequence[float] | None) -> None:
        self._kept.pop(trial._trial_id, None)
        if not _in_optimize(study):  # stop() works only in optimize(): other runners read plan_status()
            return
        # The trial is still RUNNING in storage: count it with the state it is about to get.
        if self._derive(study.get_trials(deepcopy=False), override=(trial.number, state, values)).exhausted:
            study.stop()

    # ------------------------------------------------------------------ claiming

    def _derive(self, trials: Sequence[FrozenTrial], *, skip: int | None = None,
                override: _plan.Override | None = None) -> PlanStatus:
        """The plan of ``trials`` (read once by the caller), without trial ``skip``."""
        records = _plan.records_of(trials, self._space.d_alg, skip=skip, override=override)
        return _plan.derive_plan(self._space, self._rules, records)

    def _claim(self, study: Study, trial: FrozenTrial, fixed: Mapping[str, Any]) -> None:
        storage, started = study._storage, time.monotonic()
        # The first choice may come from this thread's read that confirmed its last claim a
        # moment ago (trials asked one after another): only the confirmation must follow our write.
        trials = self._recent_read(study)
        while True:
            fresh = trials is None
            trials = study.get_trials(deepcopy=False) if trials is None else trials
            status = self._derive(trials, skip=trial.number)
            candidates = [c for c in status.claims() if _plan.consistent(c.config, fixed)]
            if candidates:  # trials choosing at once spread over the candidates by their rank
                rank = sum(1 for t in trials if t.state == TrialState.RUNNING and t.number < trial.number
                           and CLAIM_ATTR not in t.system_attrs)
                claim = candidates[rank % len(candidates)]
                # A proxy claim's attribute goes first (or with it): no reader sees it as a trained claim.
                write_trial(storage, trial._trial_id, system_attrs={CLAIM_ATTR: claim.config.to_params()},
                            user_attrs={_plan.PROXY_ATTR: claim.proxy} if claim.proxy else None)
                if self._confirm(study, trial, claim):
                    self._keep(study, trial, claim)
                    return
                storage.set_trial_system_attr(trial._trial_id, CLAIM_ATTR, None)
                if claim.proxy:  # after the claim is gone, for the same reason
                    storage.set_trial_user_attr(trial._trial_id, _plan.PROXY_ATTR, None)
            elif fresh:  # waiting, or giving up as surplus, is decided on a fresh read only
                if status.exhausted or not status.in_progress or self._wait_timeout == 0:
                    self._mark_surplus(study, trial, "the plan is exhausted" if status.exhausted else
                                       "nothing to evaluate now (the rest is enqueued or does not match the "
                                       "enqueued parameters)" if not status.in_progress else
                                       "nothing pending now (other trials run the rest; wait_timeout=0)")
                    return
                self._wait(study, trial, status, time.monotonic() - started)
            trials = None

    def _wait(self, study: Study, trial: FrozenTrial, status: PlanStatus, waited: float) -> None:
        """One poll of a trial waiting for running trials to end (FAIL and raise past ``wait_timeout``)."""
        if self._wait_timeout is not None and waited >= self._wait_timeout:
            self._abort(study, trial, TimeoutError(
                f"HeuristicSampler: trial {trial.number} waited {waited:.1f} s for a configuration; "
                f"{len(status.in_progress)} configuration(s) are still running (phase {status.phase}) and none is "
                "pending. A dead worker's trial is only failed if the storage has a heartbeat "
                "(RDBStorage(heartbeat_interval=...))"))
        _logger.debug("trial %d waits: nothing pending, %d running", trial.number, len(status.in_progress))
        fail_stale(study)
        time.sleep(self._poll_interval * (0.75 + 0.5 * self._rng.random()))

    def _confirm(self, study: Study, trial: FrozenTrial, claim: _plan.Claim) -> bool:
        """Keep a written claim iff, on a read after the write, no other trial holds the same claim."""
        for attempt in range(_HOLD_ROUNDS):
            trials = study.get_trials(deepcopy=False)
            self._reads.last = (_key(study), time.monotonic(), trials)
            status = self._derive(trials, skip=trial.number)
            if status.is_pending(claim):
                return True
            holders = status.holders_of(claim)
            if (not holders or min(holders) < trial.number or (not claim.proxy and claim.config in status.queued)
                    or attempt + 1 == _HOLD_ROUNDS):
                return False
            time.sleep(_HOLD_SLEEP * (0.5 + self._rng.random()))  # the higher-numbered claimants yield to us
        return False

    def _recent_read(self, study: Study) -> list[FrozenTrial] | None:
        """The trials this thread read to confirm its last claim, if on this study and younger than a poll."""
        last = getattr(self._reads, "last", None)
        self._reads.last = None
        if last is None or last[0] != _key(study) or time.monotonic() - last[1] >= self._poll_interval:
            return None
        return last[2]

    def _keep(self, study: Study, trial: FrozenTrial, claim: _plan.Claim) -> None:
        config = claim.config
        self._kept[trial._trial_id] = params = config.to_params()
        attrs = {A.PHASE: _plan.PROXY_PHASE if claim.proxy else config.modality, A.MODALITY: config.modality,
                 A.CONFIG: config.label(), **({_plan.PROXY_ATTR: claim.proxy} if claim.proxy else {})}
        # optimize() starts its heartbeat thread only after ask() returns: beat now, so a worker
        # dying in between leaves a claim that goes stale. Not in plain ask-and-tell, which has no
        # heartbeat thread (the claim would go stale while the trial runs); see beat_claims.
        write_trial(study._storage, trial._trial_id, system_attrs={CLAIM_ATTR: params}, user_attrs=attrs,
                    heartbeat=_in_optimize(study))
        trial.user_attrs.update(attrs)  # the asking Trial's copy of the trial: it reads its proxy without a read

    def _mark_surplus(self, study: Study, trial: FrozenTrial, reason: str) -> None:
        write_trial(study._storage, trial._trial_id, system_attrs={CLAIM_ATTR: None, SURPLUS_ATTR: reason},
                    user_attrs={A.SURPLUS: True})
        _logger.info("trial %d is surplus: %s", trial.number, reason)

    @staticmethod
    def _abort(study: Study, trial: FrozenTrial, error: Exception) -> None:
        """Fail the trial (so it is not left RUNNING with nothing to run) and raise ``error``."""
        try:
            write_trial(study._storage, trial._trial_id, user_attrs={A.ERROR: A.first_line(error)},
                        state=TrialState.FAIL)
        except Exception:
            _logger.debug("could not fail trial %d", trial.number, exc_info=True)
        raise error

    def _check_study(self, study: Study, trial: FrozenTrial) -> None:
        directions = study.directions
        if len(directions) != 1 or directions[0] != StudyDirection.MAXIMIZE:
            self._abort(study, trial, ConfigError(
                f"HeuristicSampler needs a single-objective study with direction 'maximize' (it keeps the highest "
                f"value of each modality); study {study.study_name!r} has directions "
                f"{[d.name.lower() for d in directions]}",
                "create the study with optuna.create_study(direction='maximize', ...) and return the score"))
        if _key(study) in self._checked:  # a study's plan record never changes once written: read it once
            return
        storage, study_id = study._storage, study._study_id
        stored = storage.get_study_system_attrs(study_id).get(PLAN_ATTR)
        if stored is None:
            storage.set_study_system_attr(study_id, PLAN_ATTR, self._rules.record(self._space))
        else:
            try:
                if warning := self._rules.check_record(stored, self._space, study.study_name):
                    _logger.warning("%s", warning)
            except ConfigError as exc:
                self._abort(study, trial, exc)
        self._checked.add(_key(study))


def plan_status(study: Study) -> PlanStatus:
    """Where the heuristic search of ``study`` stands, read from its storage; nothing is claimed.

    Args:
        study: A study whose sampler is a :class:`HeuristicSampler`.

    Returns:
        The :class:`~difffeat_tune.search._plan.PlanStatus` of :func:`~difffeat_tune.search._plan.derive_plan`.

    Raises:
        ConfigError: If the study's sampler is not a :class:`HeuristicSampler`.
    """
    sampler = study.sampler
    if not isinstance(sampler, HeuristicSampler):
        raise ConfigError(f"study {study.study_name!r} uses {type(sampler).__name__}, not HeuristicSampler",
                          "load the study with sampler=HeuristicSampler(space, ...)")
    return sampler.plan_status(study)


def next_config(study: Study) -> TrialConfig | None:
    """The configuration a trial asked now would get (to train, or to score by the proxy), without claiming it.

    ``None`` means that nothing is pending: the search must wait for running trials
    (``plan_status(study).waiting``) or it is over (``.exhausted``). Exact for a single asker;
    with concurrent workers a trial may get another pending configuration.

    Args:
        study: A study whose sampler is a :class:`HeuristicSampler`.
    """
    claims = plan_status(study).claims()
    return claims[0].config if claims else None


def _key(study: Study) -> tuple[int, int]:  # the study's identity in this process
    return (id(study._storage), study._study_id)


def _in_optimize(study: Study) -> bool:
    """Whether ``study`` runs inside :meth:`~optuna.study.Study.optimize` in this thread."""
    return bool(getattr(getattr(study, "_thread_local", None), "in_optimize_loop", False))

