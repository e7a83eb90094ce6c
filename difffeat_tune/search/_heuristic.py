"""Algorithm 1 of the Diff-Feat paper as an Optuna sampler: unimodal grids, then a local fusion search.

The plan is a pure function of the search space, the sampler's options and the trials in the
study's storage, so every worker (thread, process or machine) derives the same plan at any time
and nothing is lost when a worker stops: the sampler keeps no plan state of its own. See
:class:`HeuristicSampler` for the phases, the claiming protocol and the end of a search, and
:func:`plan_status` / :func:`next_config` for the helpers runners use without asking a trial.
"""

from __future__ import annotations

import logging
import random
import threading
import time
import warnings
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Literal

import optuna
from optuna.samplers import BaseSampler
from optuna.study import StudyDirection
from optuna.trial import TrialState

from difffeat_tune._errors import ConfigError
from difffeat_tune.config import (
    DEFAULT_FUSION,
    P_FUSION,
    P_IMAGE_B,
    P_IMAGE_T,
    P_MODALITY,
    P_TEXT_B,
    P_TEXT_T,
    TrialConfig,
)
from difffeat_tune.search import _attrs as A
from difffeat_tune.search._records import write_trial

if TYPE_CHECKING:
    from optuna.distributions import BaseDistribution
    from optuna.study import Study
    from optuna.trial import FrozenTrial

    from difffeat_tune.space import Axes, SearchSpace

_logger = logging.getLogger(__name__)

Neighbourhood = Literal["cross", "box", "radius"]
Phase = Literal["image", "text", "fusion", "done"]
NEIGHBOURHOODS: tuple[str, ...] = ("cross", "box", "radius")
UNIMODAL: tuple[str, str] = ("image", "text")

#: Trial system attribute holding the claimed configuration (``TrialConfig.to_params()``), or
#: ``None`` while the trial holds no claim (choosing again, waiting, surplus).
CLAIM_ATTR = "difffeat:config"
#: Trial system attribute set on a trial that got no configuration; the value is the reason.
SURPLUS_ATTR = "difffeat:surplus"
#: Study system attribute recording the grid axes and options of the plan (checked by every worker).
PLAN_ATTR = "difffeat:heuristic_plan"
#: How many times a trial holding a claim that a higher-numbered trial also wrote re-reads the
#: storage (the higher one yields on seeing it) before giving the claim up itself.
_HOLD_ROUNDS = 20
_HOLD_SLEEP = 0.02

_REQUIRED_PARAMS: dict[str, tuple[str, ...]] = {
    "image": (P_MODALITY, P_IMAGE_T, P_IMAGE_B),
    "text": (P_MODALITY, P_TEXT_T, P_TEXT_B),
    "fusion": (P_MODALITY, P_IMAGE_T, P_IMAGE_B, P_TEXT_T, P_TEXT_B, P_FUSION),
}
_PARAM_NAMES = frozenset(_REQUIRED_PARAMS["fusion"])


def grid_neighbourhood(axes: Axes, point: tuple[int, int], kind: str = "cross",
                       radius: int = 1) -> list[tuple[int, int]]:
    """The neighbours of ``point`` on the grid ``axes``, the point included, in grid order.

    Distances are counted in grid indices, not in values: on ``t = (10, 20, 30, 50, 100, 150)`` the
    step from 50 is to 30 and to 100. Points outside the grid are dropped (clipped at the edges).

    Args:
        axes: The modality's grid.
        point: A grid point ``(t, b)``.
        kind: ``"cross"``: steps of 1 to ``radius`` along one axis at a time (the paper's cross of
            5 points for radius 1; 3 at a corner, 4 on an edge). ``"box"``: every point within
            ``radius`` steps on both axes (``(2 radius + 1)^2`` points inside the grid).
            ``"radius"``: every point at Manhattan distance ``|dt| + |db| <= radius`` (the same
            as the cross for radius 1; a diamond beyond).
        radius: The number of grid steps, 0 or more (0 gives the point alone).

    Returns:
        The ``(t, b)`` points, sorted by t index, then b index.

    Raises:
        ConfigError: For an unknown ``kind``, a negative radius or a point off the grid.
    """
    if kind not in NEIGHBOURHOODS:
        raise ConfigError(f"unknown neighbourhood {kind!r}", f"use one of {', '.join(NEIGHBOURHOODS)}")
    if radius < 0:
        raise ConfigError(f"neighbourhood radius must be 0 or more, got {radius}")
    if point[0] not in axes.t or point[1] not in axes.b:
        raise ConfigError(f"point {point} is not on the grid t={list(axes.t)}, b={list(axes.b)}")
    i, j = axes.t.index(point[0]), axes.b.index(point[1])
    out = []
    for di in range(-radius, radius + 1):
        for dj in range(-radius, radius + 1):
            if kind == "cross" and di and dj:
                continue
            if kind == "radius" and abs(di) + abs(dj) > radius:
                continue
            if 0 <= i + di < len(axes.t) and 0 <= j + dj < len(axes.b):
                out.append((axes.t[i + di], axes.b[j + dj]))
    return out


@dataclass(frozen=True)
class PlanStatus:
    """Where a heuristic search stands, derived from the study's storage.

    A runner that must not block (the Ray Tune engine, ask-and-tell loops) asks for a trial only
    when ``pending`` is non-empty, waits (asks again later) when :attr:`waiting` is true, and ends
    when :attr:`exhausted` is true.

    Attributes:
        phase: The earliest phase with unfinished configurations: ``"image"``, ``"text"``,
            ``"fusion"`` or ``"done"``. Image and text configurations may run concurrently.
        pending: Configurations nobody evaluates yet, in plan order (what new trials claim).
        running: Configurations claimed by RUNNING trials.
        queued: Configurations of enqueued (WAITING) trials: reserved, not pending.
        planned: Number of configurations per phase; ``fusion`` is ``None`` until both unimodal
            phases are finished (the fusion plan depends on their results).
        completed: Number of planned configurations finished COMPLETE or PRUNED, per phase.
        given_up: Configurations that FAILED ``max_failures`` times: skipped.
        failures: Number of FAILED trials of planned configurations.
        best_image, best_image_value: The best COMPLETE image configuration and its value.
        best_text, best_text_value: The same for text.
        best_fusion, best_fusion_value: The best COMPLETE fusion configuration of the plan: the
            answer of Algorithm 1 once the search is exhausted.
        image_candidates, text_candidates: The neighbourhoods of the unimodal optima crossed in
            the fusion phase (empty until it starts).
        exhausted: Every planned configuration is finished (nothing pending, nothing running).
        enqueued: Number of WAITING (enqueued) trials in the study, planned or not: the next
            ``study.ask`` pops one of them instead of creating a trial.
    """

    phase: Phase
    pending: tuple[TrialConfig, ...]
    running: tuple[TrialConfig, ...]
    queued: tuple[TrialConfig, ...]
    planned: Mapping[str, int | None]
    completed: Mapping[str, int]
    given_up: tuple[TrialConfig, ...]
    failures: int
    best_image: TrialConfig | None
    best_image_value: float | None
    best_text: TrialConfig | None
    best_text_value: float | None
    best_fusion: TrialConfig | None
    best_fusion_value: float | None
    image_candidates: tuple[tuple[int, int], ...]
    text_candidates: tuple[tuple[int, int], ...]
    exhausted: bool
    enqueued: int = 0

    @property
    def waiting(self) -> bool:
        """Nothing is pending but the plan is not finished: trials still running must end first."""
        return not self.pending and not self.exhausted

    @property
    def total_planned(self) -> int | None:
        """Configurations in the whole plan, or ``None`` while the fusion plan is unknown."""
        image, text, fusion = (self.planned[k] for k in ("image", "text", "fusion"))
        return None if fusion is None else int(image or 0) + int(text or 0) + fusion


@dataclass
class _Survey:
    """The plan and every planned configuration's state, read from one listing of the trials."""

    unimodal: dict[str, list[TrialConfig]]
    fusion: list[TrialConfig] | None
    candidates: dict[str, list[tuple[int, int]]]
    done: set[TrialConfig]
    failures: Counter[TrialConfig]
    running: dict[TrialConfig, list[int]]
    queued: set[TrialConfig]
    best: dict[str, tuple[TrialConfig, float, int] | None]
    max_failures: int
    enqueued: int = 0

    def finished(self, config: TrialConfig) -> bool:
        return config in self.done or self.failures[config] >= self.max_failures

    @property
    def plan(self) -> list[TrialConfig]:
        return self.unimodal["image"] + self.unimodal["text"] + (self.fusion or [])

    @property
    def pending(self) -> list[TrialConfig]:
        return [c for c in self.plan if not self.finished(c) and c not in self.running and c not in self.queued]

    @property
    def running_planned(self) -> list[TrialConfig]:
        return [c for c in self.plan if c in self.running and not self.finished(c)]

    @property
    def exhausted(self) -> bool:
        return self.fusion is not None and all(self.finished(c) for c in self.plan)


class HeuristicSampler(BaseSampler):
    """Sampler running Algorithm 1 of Diff-Feat: every unimodal configuration, then a local fusion search.

    The search has three phases, each a set of configurations (:class:`~difffeat_tune.config.TrialConfig`):

    - ``"image"`` and ``"text"``: every ``(t, b)`` of the space's image and text grids, once.
    - ``"fusion"``: once both unimodal phases are finished, the neighbourhood (see
      :func:`grid_neighbourhood`) of each modality's best COMPLETE configuration, crossed with
      each fusion method. The best is the highest trial value; equal values go to the lowest
      trial number. Neighbours that were given up (below) are left out: their features could not
      be read, so their fusions would fail too. With the paper's space and optima (image t=50 b=12, text t=0 b=24) the
      cross gives 5 x 3 = 15 fusion trials: 30 + 20 + 15 = 65 trials in all.

    A configuration is finished when a trial of it ended COMPLETE or PRUNED, or when trials of it
    FAILED ``max_failures`` times (it is then skipped; see :attr:`PlanStatus.given_up`). A FAILED
    configuration is otherwise pending again and retried by the next trial.

    The plan is recomputed from the storage at every step, so any worker derives the same plan,
    a study resumed with the same storage and study name continues where it stopped (finished
    configurations are never run again), and configurations enqueued with
    ``study.enqueue_trial(config.to_params())`` count like any other trial of that configuration.

    Each trial claims a configuration in :meth:`before_trial`: it writes the configuration to the
    trial's system attribute ``"difffeat:config"``, re-reads the storage, and keeps the claim only
    if no other trial holds, queued or finished the same configuration meanwhile; otherwise it
    yields and chooses again. (A trial asked right after another by the same thread chooses from
    the read that confirmed the other's claim; waiting or giving up is decided on a fresh read.) A trial holding a claim that only higher-numbered trials also wrote
    re-reads a few times first, since those yield to it, so the lower-numbered trial wins a race.
    Two workers therefore never both keep one configuration (each decides on a read made after
    its own write, so of two racing writers the later one always sees the earlier). The values are
    served from the claim in :meth:`sample_independent`; objectives read them with
    :func:`~difffeat_tune.search._suggest.suggest_config`. The user attributes ``phase``,
    ``modality`` and ``config`` (a readable label) are set on every trial that gets a
    configuration.

    When nothing is pending but claimed trials are still running (the phase barrier before the
    fusion phase, or the last trials of the plan), :meth:`before_trial` waits, polling the storage
    every ``poll_interval`` seconds and calling :func:`optuna.storages.fail_stale_trials`, so the
    trial of a dead worker is failed by Optuna's heartbeat and its configuration retried.

    When every planned configuration is finished, :meth:`after_trial` calls
    :meth:`~optuna.study.Study.stop`. A trial created after that (by a racing worker, or by
    running the finished study again) is a *surplus* trial: it gets no configuration, the user
    attribute ``surplus=True``, and its first suggestion raises :class:`optuna.TrialPruned`, so it
    ends PRUNED without running anything. The same holds for a trial that finds nothing to do
    while the only unfinished configurations are enqueued (the next trial pops them).

    Example:

        .. testcode::

            import optuna

            from difffeat_tune.search._heuristic import HeuristicSampler, plan_status
            from difffeat_tune.search._suggest import suggest_config
            from difffeat_tune.space import load_space

            space = load_space("paper")


            def objective(trial):
                config = suggest_config(trial, space)
                score = 0.0
                if config.image is not None:
                    score -= abs(config.image[0] - 50) / 100 + abs(config.image[1] - 12) / 10
                if config.text is not None:
                    score -= config.text[0] / 100 + abs(config.text[1] - 24) / 10
                return score


            study = optuna.create_study(direction="maximize", sampler=HeuristicSampler(space))
            study.optimize(objective)  # stops by itself after the 65 trials of the plan
            assert plan_status(study).exhausted

    Note:
        Distributed use: run the same objective with the same sampler options in several
        processes on one :class:`~optuna.storages.RDBStorage` and study name (the grid axes are
        checked against the study, a mismatch raises). No configuration is evaluated twice.
        Give the storage a heartbeat, e.g. ``RDBStorage(url, heartbeat_interval=60,
        grace_period=180)``: the RUNNING trial of a worker that died is then failed after the
        grace period and its configuration retried; without a heartbeat it stays claimed, and
        workers waiting on it wait until ``wait_timeout``. The sampler retries by itself: do not
        add :class:`~optuna.storages.RetryHeartbeatStaleTrialCallback` (its copy would race the
        sampler's own retry). SQLite is fine for a few local processes; pass
        ``engine_kwargs={"connect_args": {"timeout": 30}}`` so writers wait for the file lock.
        With ``n_jobs > 1`` threads share this sampler, which holds no plan state of its own.

    Note:
        Ask-and-tell and Ray Tune: :meth:`after_trial` cannot stop a study outside
        :meth:`~optuna.study.Study.optimize` (the ``RuntimeError`` is caught), and a trial asked
        while nothing is pending blocks in :meth:`before_trial`. Such runners check
        :func:`plan_status` first: ask only when ``pending`` is non-empty, ask again later when
        it is ``waiting``, finish when it is ``exhausted``.

    Args:
        space: The search space; objectives must pass the same one to ``suggest_config``.
        fusion_methods: Fusion methods crossed in the fusion phase, a subset of
            ``space.fusion_methods``. Default: ``("linear_add",)`` (the paper's choice), or the
            space's first method if the space lacks it. Pass ``space.fusion_methods`` for all.
        neighbourhood: ``"cross"`` (the paper), ``"box"`` or ``"radius"``; see
            :func:`grid_neighbourhood`.
        radius: Grid steps of the neighbourhood (default 1).
        max_failures: FAILED trials after which a configuration is skipped (1 = no retry).
        poll_interval: Seconds between storage polls while waiting.
        wait_timeout: Seconds a trial may wait for a configuration; ``None`` waits as long as
            needed. On expiry the trial is set FAIL (it ran nothing) and :exc:`TimeoutError` is
            raised out of ``study.ask`` / ``study.optimize``. ``0`` never waits: a trial that finds
            nothing pending is a surplus trial at once (for engines that wait outside the sampler,
            as this package's do).
        seed: Seed of the jitter added to polling (the plan itself is deterministic).
        beat_claims: Record the trial's heartbeat before it claims a configuration, in
            ask-and-tell too. For callers that beat their asked trials from a thread of their own
            and do not let the sampler wait (``wait_timeout=0``), as both of this package's
            engines do: a worker that dies before its first beat then leaves a claim that goes
            stale, not one held for ever. ``study.optimize`` beats claims whatever this says.
    """

    def __init__(
        self,
        space: SearchSpace,
        *,
        fusion_methods: Sequence[str] | None = None,
        neighbourhood: Neighbourhood = "cross",
        radius: int = 1,
        max_failures: int = 2,
        poll_interval: float = 0.5,
        wait_timeout: float | None = None,
        seed: int | None = None,
        beat_claims: bool = False,
    ) -> None:
        if fusion_methods is None:
            fusion_methods = (DEFAULT_FUSION,) if DEFAULT_FUSION in space.fusion_methods else space.fusion_methods[:1]
        methods = tuple(fusion_methods) if space.has_fusion else ()
        if space.has_fusion and not methods:
            raise ConfigError("fusion_methods is empty", "pass at least one fusion method, or None for the default")
        unknown = [m for m in methods if m not in space.fusion_methods]
        if unknown or len(set(methods)) != len(methods):
            raise ConfigError(f"fusion_methods {list(methods)} must be distinct methods of the space "
                              f"{space.source or space.name}", f"use some of {', '.join(space.fusion_methods)}")
        if neighbourhood not in NEIGHBOURHOODS:
            raise ConfigError(f"unknown neighbourhood {neighbourhood!r}", f"use one of {', '.join(NEIGHBOURHOODS)}")
        if not isinstance(radius, int) or isinstance(radius, bool) or radius < 0:
            raise ConfigError(f"radius must be an integer of 0 or more, got {radius!r}")
        if not isinstance(max_failures, int) or isinstance(max_failures, bool) or max_failures < 1:
            raise ConfigError(f"max_failures must be an integer of 1 or more, got {max_failures!r}")
        if not poll_interval > 0:
            raise ConfigError(f"poll_interval must be positive, got {poll_interval!r}")
        if wait_timeout is not None and not wait_timeout >= 0:
            raise ConfigError(f"wait_timeout must be None or 0 or more, got {wait_timeout!r}")
        self._space = space
        self._fusion_methods = methods
        self._neighbourhood = neighbourhood
        self._radius = radius
        self._max_failures = max_failures
        self._poll_interval = float(poll_interval)
        self._wait_timeout = wait_timeout
        self._rng = random.Random(seed)
        self._beat_claims = beat_claims
        # Claims this process kept, by trial id: a read cache of the storage (which stays the
        # source of truth), so that each suggestion does not re-read the trial.
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
        return self._fusion_methods

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

    # ------------------------------------------------------------------ the trial's life cycle

    def before_trial(self, study: Study, trial: FrozenTrial) -> None:
        self._check_study(study, trial)
        if self._beat_claims and _heartbeat_interval(study._storage) is not None:
            # Before any claim is written: a worker that dies from here on leaves a trial that goes stale.
            study._storage.record_heartbeat(trial._trial_id)  # type: ignore[attr-defined]
        attrs = trial.system_attrs
        # A copy made by RetryHeartbeatStaleTrialCallback carries the failed trial's claim: keep it.
        inherited = _config_from(attrs.get(CLAIM_ATTR), self._space.d_alg)
        if inherited is not None:
            self._keep(study, trial, inherited)
            return
        fixed = attrs.get("fixed_params") or {}
        enqueued = _config_from(fixed, self._space.d_alg)
        if enqueued is not None:  # enqueue_trial with a whole configuration: the user asked for it
            self._keep(study, trial, enqueued)
            return
        self._claim(study, trial, fixed)

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
        if param_name not in _PARAM_NAMES:
            raise ValueError(f"HeuristicSampler serves only the parameters {sorted(_PARAM_NAMES)} "
                             f"(read them with suggest_config); got {param_name!r}")
        if param_name not in params:
            raise ValueError(f"parameter {param_name!r} is not part of the configuration {params} claimed by trial "
                             f"{trial.number}; suggest parameters as suggest_config does")
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
        if not _in_optimize(study):  # stop() works only in optimize(): ask-and-tell and Ray check plan_status()
            return
        # The trial is still RUNNING in storage: count it with the state it is about to get.
        survey = self._survey(study, override=(trial._trial_id, state, values))
        if survey.exhausted:
            study.stop()

    # ------------------------------------------------------------------ helpers for runners

    def plan_status(self, study: Study) -> PlanStatus:
        """Where the search stands (see :func:`plan_status`)."""
        return self._status(self._survey(study))

    # ------------------------------------------------------------------ internals

    def _check_study(self, study: Study, trial: FrozenTrial) -> None:
        directions = study.directions
        if len(directions) != 1 or directions[0] != StudyDirection.MAXIMIZE:
            self._abort(study, trial, ConfigError(
                f"HeuristicSampler needs a single-objective study with direction 'maximize' (it keeps the highest "
                f"value of each modality); study {study.study_name!r} has directions "
                f"{[d.name.lower() for d in directions]}",
                "create the study with optuna.create_study(direction='maximize', ...) and return the score"))
        checked = (id(study._storage), study._study_id)
        if checked in self._checked:  # a study's plan record never changes once written: read it once
            return
        record = self._plan_record()
        stored = study._storage.get_study_system_attrs(study._study_id).get(PLAN_ATTR)
        if stored is None:
            study._storage.set_study_system_attr(study._study_id, PLAN_ATTR, record)
        elif stored.get("axes") != record["axes"]:
            self._abort(study, trial, ConfigError(
                f"study {study.study_name!r} was searched over the grids {stored.get('axes')}, not over the grids "
                f"{record['axes']} of space {self._space.source or self._space.name}",
                "pass the same search space to every worker, or use a new study name"))
        elif stored.get("options") != record["options"]:
            _logger.warning("study %r was started with heuristic options %s; this worker uses %s: every worker of a "
                            "study should pass the same options", study.study_name, stored.get("options"),
                            record["options"])
        self._checked.add(checked)

    def _plan_record(self) -> dict[str, Any]:
        space = self._space
        axes = {}
        for modality, (t_name, b_name) in (("image", (P_IMAGE_T, P_IMAGE_B)), ("text", (P_TEXT_T, P_TEXT_B))):
            if space.has(modality):
                axes[t_name], axes[b_name] = list(space.axes(modality).t), list(space.axes(modality).b)
        return {"axes": axes,
                "options": {"fusion_methods": list(self._fusion_methods), "neighbourhood": self._neighbourhood,
                            "radius": self._radius}}

    def _claim(self, study: Study, trial: FrozenTrial, fixed: Mapping[str, Any]) -> None:
        storage = study._storage
        started = time.monotonic()
        announced = False
        recent = self._recent_read(study)
        while True:
            # The first choice may come from this thread's read that confirmed its last claim a
            # moment ago (trials asked one after another): only the confirmation must follow our write.
            fresh = recent is None
            trials = storage.get_all_trials(study._study_id, deepcopy=False) if fresh else recent
            recent = None
            survey = self._survey_of(trials, skip_id=trial._trial_id)
            candidates = [c for c in survey.pending if _consistent(c, fixed)]
            if candidates:
                rank = sum(1 for t in trials if t.state == TrialState.RUNNING and t.number < trial.number
                           and CLAIM_ATTR not in t.system_attrs)
                config = candidates[rank % len(candidates)]
                storage.set_trial_system_attr(trial._trial_id, CLAIM_ATTR, config.to_params())
                if self._confirm(study, trial, config):
                    self._keep(study, trial, config, written=True)
                    return
                storage.set_trial_system_attr(trial._trial_id, CLAIM_ATTR, None)
                continue
            if not fresh:  # waiting, or giving up as surplus, is decided on a fresh read only
                continue
            if survey.exhausted or not survey.running_planned or self._wait_timeout == 0:
                reason = ("the plan is exhausted" if survey.exhausted else
                          "nothing to evaluate now (the unfinished configurations are enqueued or do not match "
                          "the enqueued parameters)" if not survey.running_planned else
                          "nothing pending now (other trials run the unfinished configurations; wait_timeout=0)")
                self._mark_surplus(study, trial, reason)
                return
            waited = time.monotonic() - started
            if self._wait_timeout is not None and waited >= self._wait_timeout:
                self._abort(study, trial, TimeoutError(
                    f"HeuristicSampler: trial {trial.number} waited {waited:.1f} s for a configuration; "
                    f"{len(survey.running_planned)} configuration(s) are still running "
                    f"(phase {self._status(survey).phase}) and none is pending. A dead worker's trial is only "
                    "failed if the storage has a heartbeat (RDBStorage(heartbeat_interval=...))"))
            if not announced:
                _logger.info("trial %d waits: nothing pending, %d configuration(s) running", trial.number,
                             len(survey.running_planned))
                announced = True
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                optuna.storages.fail_stale_trials(study)
            time.sleep(self._poll_interval * (0.75 + 0.5 * self._rng.random()))

    def _confirm(self, study: Study, trial: FrozenTrial, config: TrialConfig) -> bool:
        """Keep a written claim iff, on a read after the write, no other trial holds the configuration."""
        for attempt in range(_HOLD_ROUNDS):
            trials = study._storage.get_all_trials(study._study_id, deepcopy=False)
            self._reads.last = (id(study._storage), study._study_id, time.monotonic(), trials)
            survey = self._survey_of(trials, skip_id=trial._trial_id)
            if config in survey.pending:
                return True
            holders = survey.running.get(config, [])
            contested_by_higher_only = (holders and all(n > trial.number for n in holders)
                                        and config not in survey.queued and not survey.finished(config))
            if not contested_by_higher_only or attempt + 1 == _HOLD_ROUNDS:
                return False
            time.sleep(_HOLD_SLEEP * (0.5 + self._rng.random()))  # the higher-numbered claimants yield to us
        return False

    def _recent_read(self, study: Study) -> list[FrozenTrial] | None:
        """The trials this thread read to confirm its last claim, if on this study and younger than a poll."""
        last = getattr(self._reads, "last", None)
        self._reads.last = None
        if last is None or last[:2] != (id(study._storage), study._study_id):
            return None
        return last[3] if time.monotonic() - last[2] < self._poll_interval else None

    def _keep(self, study: Study, trial: FrozenTrial, config: TrialConfig, *, written: bool = False) -> None:
        storage = study._storage
        if not written:
            storage.set_trial_system_attr(trial._trial_id, CLAIM_ATTR, config.to_params())
        self._kept[trial._trial_id] = config.to_params()
        write_trial(storage, trial._trial_id, user_attrs={A.PHASE: config.modality, A.MODALITY: config.modality,
                                                          A.CONFIG: config.label()})
        # optimize() starts the heartbeat thread only after ask() returns: beat now, so a worker
        # dying in between leaves a claim that goes stale. Not in plain ask-and-tell, which has no
        # heartbeat thread (the claim would go stale while the trial runs); see beat_claims.
        if _in_optimize(study) and _heartbeat_interval(storage) is not None:
            storage.record_heartbeat(trial._trial_id)  # type: ignore[attr-defined]

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
        except Exception:  # noqa: BLE001 - the error below is the one to report
            _logger.debug("could not fail trial %d", trial.number, exc_info=True)
        raise error

    def _survey(self, study: Study, *, skip_id: int | None = None,
                override: tuple[int, TrialState, Sequence[float] | None] | None = None) -> _Survey:
        trials = study._storage.get_all_trials(study._study_id, deepcopy=False)
        return self._survey_of(trials, skip_id=skip_id, override=override)

    def _survey_of(self, trials: Sequence[FrozenTrial], *, skip_id: int | None = None,
                   override: tuple[int, TrialState, Sequence[float] | None] | None = None) -> _Survey:
        space = self._space
        unimodal = {m: space.unimodal_configs(m) for m in UNIMODAL}
        on_grid = {c: c.modality for m in UNIMODAL for c in unimodal[m]}
        done: set[TrialConfig] = set()
        failures: Counter[TrialConfig] = Counter()
        running: dict[TrialConfig, list[int]] = {}
        queued: set[TrialConfig] = set()
        best: dict[str, tuple[TrialConfig, float, int] | None] = {"image": None, "text": None, "fusion": None}
        completed_values: list[tuple[TrialConfig, float, int]] = []
        enqueued = 0
        for t in trials:
            if t._trial_id == skip_id:
                continue
            state, values = t.state, t.values
            if override is not None and t._trial_id == override[0]:
                state, values = override[1], override[2]
            enqueued += state == TrialState.WAITING
            config = _config_of(t, space.d_alg)
            if config is None:
                continue
            if state in (TrialState.COMPLETE, TrialState.PRUNED):
                done.add(config)
                if state == TrialState.COMPLETE and values:
                    completed_values.append((config, float(values[0]), t.number))
            elif state == TrialState.FAIL:
                failures[config] += 1
            elif state == TrialState.RUNNING:
                running.setdefault(config, []).append(t.number)
            elif state == TrialState.WAITING:
                queued.add(config)
        for config, value, number in completed_values:
            modality = on_grid.get(config)
            if modality is None:
                continue
            current = best[modality]
            if current is None or value > current[1] or (value == current[1] and number < current[2]):
                best[modality] = (config, value, number)
        survey = _Survey(unimodal=unimodal, fusion=None, candidates={"image": [], "text": []}, done=done,
                         failures=failures, running=running, queued=queued, best=best,
                         max_failures=self._max_failures, enqueued=enqueued)
        if all(survey.finished(c) for m in UNIMODAL for c in unimodal[m]):
            survey.fusion = []
            if best["image"] is not None and best["text"] is not None:
                given_up = {c for m in UNIMODAL for c in unimodal[m]
                            if c not in done and failures[c] >= self._max_failures}
                for m in UNIMODAL:
                    optimum = best[m][0]  # type: ignore[index]
                    # A given-up configuration's features cannot be read: its fusions would fail too.
                    survey.candidates[m] = [
                        p for p in grid_neighbourhood(space.axes(m), getattr(optimum, m), self._neighbourhood,
                                                      self._radius)
                        if replace(optimum, **{m: p}) not in given_up]
                survey.fusion = [TrialConfig("fusion", image=i, text=x, fusion=f, d_alg=space.d_alg)
                                 for i in survey.candidates["image"] for x in survey.candidates["text"]
                                 for f in self._fusion_methods]
                planned = set(survey.fusion)
                for config, value, number in completed_values:
                    current = best["fusion"]
                    if config in planned and (current is None or value > current[1]
                                              or (value == current[1] and number < current[2])):
                        best["fusion"] = (config, value, number)
        return survey

    def _status(self, survey: _Survey) -> PlanStatus:
        phases: dict[str, list[TrialConfig] | None] = {"image": survey.unimodal["image"],
                                                       "text": survey.unimodal["text"], "fusion": survey.fusion}
        phase: Phase = "done"
        for name in ("image", "text", "fusion"):
            configs = phases[name]
            if configs is None or not all(survey.finished(c) for c in configs):
                phase = name  # type: ignore[assignment]
                break
        plan = survey.plan

        def best(m: str) -> tuple[TrialConfig | None, float | None]:
            entry = survey.best[m]
            return (None, None) if entry is None else (entry[0], entry[1])

        return PlanStatus(
            phase=phase,
            pending=tuple(survey.pending),
            running=tuple(survey.running_planned),
            queued=tuple(c for c in plan if c in survey.queued and not survey.finished(c)),
            planned={k: None if v is None else len(v) for k, v in phases.items()},
            completed={k: sum(1 for c in v or [] if c in survey.done) for k, v in phases.items()},
            given_up=tuple(c for c in plan if c not in survey.done and survey.failures[c] >= survey.max_failures),
            failures=sum(survey.failures[c] for c in plan),
            best_image=best("image")[0], best_image_value=best("image")[1],
            best_text=best("text")[0], best_text_value=best("text")[1],
            best_fusion=best("fusion")[0], best_fusion_value=best("fusion")[1],
            image_candidates=tuple(survey.candidates["image"]),
            text_candidates=tuple(survey.candidates["text"]),
            exhausted=survey.exhausted,
            enqueued=survey.enqueued,
        )


def plan_status(study: Study) -> PlanStatus:
    """Where the heuristic search of ``study`` stands, read from its storage; nothing is claimed.

    Args:
        study: A study whose sampler is a :class:`HeuristicSampler`.

    Returns:
        The :class:`PlanStatus`: pending and running configurations, counts per phase, the
        unimodal optima and the ``exhausted`` flag.

    Raises:
        ConfigError: If the study's sampler is not a :class:`HeuristicSampler`.
    """
    return _sampler_of(study).plan_status(study)


def next_config(study: Study) -> TrialConfig | None:
    """The configuration a trial asked now would get, without claiming it.

    ``None`` means that nothing is pending: either the search must wait for running trials
    (``plan_status(study).waiting``) or it is over (``plan_status(study).exhausted``). The answer
    is exact for a single asker; with several concurrent workers, a trial may get another pending
    configuration (see the claiming protocol of :class:`HeuristicSampler`).

    Args:
        study: A study whose sampler is a :class:`HeuristicSampler`.
    """
    pending = plan_status(study).pending
    return pending[0] if pending else None


def _sampler_of(study: Study) -> HeuristicSampler:
    sampler = study.sampler
    if not isinstance(sampler, HeuristicSampler):
        raise ConfigError(f"study {study.study_name!r} uses {type(sampler).__name__}, not HeuristicSampler",
                          "load the study with sampler=HeuristicSampler(space, ...)")
    return sampler


def _in_optimize(study: Study) -> bool:
    """Whether ``study`` runs inside :meth:`~optuna.study.Study.optimize` in this thread."""
    return bool(getattr(getattr(study, "_thread_local", None), "in_optimize_loop", False))


def _heartbeat_interval(storage: Any) -> int | None:
    getter = getattr(storage, "get_heartbeat_interval", None)
    return getter() if getter is not None else None


def _config_from(params: Any, d_alg: int) -> TrialConfig | None:
    """The whole configuration named by ``params``, or ``None`` if it names none (strict: no defaults)."""
    if not isinstance(params, Mapping):
        return None
    required = _REQUIRED_PARAMS.get(params.get(P_MODALITY))  # type: ignore[arg-type]
    if required is None or any(k not in params for k in required):
        return None
    try:
        return TrialConfig.from_params({k: params[k] for k in required}, d_alg=d_alg)
    except (ConfigError, TypeError, ValueError):
        return None


def _config_of(trial: FrozenTrial, d_alg: int) -> TrialConfig | None:
    """The configuration a trial holds: its claim, else its fixed (enqueued) or finished params."""
    attrs = trial.system_attrs
    if CLAIM_ATTR in attrs:
        return _config_from(attrs[CLAIM_ATTR], d_alg)
    fixed = _config_from(attrs.get("fixed_params"), d_alg)
    if fixed is not None or trial.state == TrialState.RUNNING:
        return fixed
    return _config_from(trial.params, d_alg)


def _consistent(config: TrialConfig, fixed: Mapping[str, Any]) -> bool:
    params = config.to_params()
    return all(params.get(k) == v for k, v in fixed.items() if k in _PARAM_NAMES)
