"""The plan of Algorithm 1 as a pure function of the trials: no storage, no study, no sampler.

:func:`derive_plan` takes the search space, the plan's rules and one plain record per trial
(:class:`TrialRecord`: number, state, configuration, value) and says where the search stands
(:class:`PlanStatus`): what is done, pending, running, queued and given up, the phase, each
modality's optimum and the fusion configurations. The
:class:`~difffeat_tune.search._heuristic.HeuristicSampler` reads the study's trials once, turns
them into records and claims a pending configuration of the answer; every worker reading the same
trials derives the same plan.

Example:

    >>> from optuna.trial import TrialState
    >>> from difffeat_tune.space import load_space
    >>> space = load_space("paper")
    >>> rules = PlanRules.for_space(space)
    >>> status = derive_plan(space, rules, [])
    >>> status.phase, len(status.pending), status.planned["fusion"] is None
    ('image', 50, True)
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Literal, NamedTuple

from optuna.trial import TrialState

from difffeat_tune._defaults import DEFAULT_FUSION, DEFAULT_MAX_FAILURES
from difffeat_tune._errors import ConfigError
from difffeat_tune.config import (
    P_FUSION,
    P_IMAGE_B,
    P_IMAGE_T,
    P_MODALITY,
    P_TEXT_B,
    P_TEXT_T,
    TrialConfig,
)

if TYPE_CHECKING:
    from optuna.trial import FrozenTrial

    from difffeat_tune.space import Axes, SearchSpace

Neighbourhood = Literal["cross", "box", "radius"]
Phase = Literal["image", "text", "fusion", "done"]
NEIGHBOURHOODS: tuple[str, ...] = ("cross", "box", "radius")
UNIMODAL: tuple[str, str] = ("image", "text")
PHASES: tuple[str, str, str] = ("image", "text", "fusion")
#: The closed-form proxies a plan may rank unimodal configurations by (``difffeat_tune.probe``).
PROXIES: tuple[str, ...] = ("logme", "ridge")
#: Trial system attribute holding the claimed configuration (``TrialConfig.to_params()``), or
#: ``None`` while the trial holds no claim (choosing again, waiting, surplus).
CLAIM_ATTR = "difffeat:config"
#: Trial user attribute naming the proxy that scored a proxy trial (no probe trained).
PROXY_ATTR = "proxy"
#: The ``phase`` user attribute of a proxy trial (its modality is its ``modality`` attribute).
PROXY_PHASE = "proxy"
_REQUIRED_PARAMS: dict[str, tuple[str, ...]] = {
    "image": (P_MODALITY, P_IMAGE_T, P_IMAGE_B),
    "text": (P_MODALITY, P_TEXT_T, P_TEXT_B),
    "fusion": (P_MODALITY, P_IMAGE_T, P_IMAGE_B, P_TEXT_T, P_TEXT_B, P_FUSION),
}
#: The Optuna parameters of a configuration.
PARAM_NAMES = frozenset(_REQUIRED_PARAMS["fusion"])
#: A trial's number, state and values, overriding what was read (a trial being told).
Override = tuple[int, TrialState, Sequence[float] | None]


def rank(value: float, number: int) -> tuple[float, int]:
    """The order of results, defined once: the higher value wins; equal values go to the lower trial number.

    Use as ``max(results, key=lambda r: rank(r.value, r.number))``.
    """
    return (value, -number)


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
class TrialRecord:
    """What the plan reads of one trial.

    Attributes:
        number: The trial's number (ties between equal values go to the lower one).
        state: Its Optuna state.
        config: The configuration it holds (claimed, enqueued or finished), or ``None``.
        value: Its objective value, for a COMPLETE trial (a proxy score for a proxy trial).
        proxy: It scores ``config`` by a closed-form proxy instead of training a probe.
    """

    number: int
    state: TrialState
    config: TrialConfig | None
    value: float | None = None
    proxy: bool = False


@dataclass(frozen=True)
class PlanRules:
    """The options of Algorithm 1 that shape the plan (the same for every worker of a study).

    Attributes:
        fusion_methods: Fusion methods crossed in the fusion phase (empty for a one-modality space).
        neighbourhood: ``"cross"`` (the paper), ``"box"`` or ``"radius"``; see :func:`grid_neighbourhood`.
        radius: Grid steps of the neighbourhood.
        max_failures: FAILED trials after which a configuration is given up.
        proxy: ``"logme"`` or ``"ridge"``: every unimodal configuration is first scored by this
            proxy, and only the ``proxy_top`` best of each modality are trained; ``None``: all are.
        proxy_top: The configurations per modality trained after the proxy stage.
    """

    fusion_methods: tuple[str, ...]
    neighbourhood: Neighbourhood = "cross"
    radius: int = 1
    max_failures: int = DEFAULT_MAX_FAILURES
    proxy: str | None = None
    proxy_top: int = 3

    def __post_init__(self) -> None:
        if self.proxy is not None and self.proxy not in PROXIES:
            raise ConfigError(f"unknown unimodal proxy {self.proxy!r}", f"use one of {', '.join(PROXIES)}, or none")
        if not isinstance(self.proxy_top, int) or isinstance(self.proxy_top, bool) or self.proxy_top < 1:
            raise ConfigError(f"proxy_top must be an integer of 1 or more, got {self.proxy_top!r}")
        if self.neighbourhood not in NEIGHBOURHOODS:
            raise ConfigError(f"unknown neighbourhood {self.neighbourhood!r}", f"use one of {', '.join(NEIGHBOURHOODS)}")
        if not isinstance(self.radius, int) or isinstance(self.radius, bool) or self.radius < 0:
            raise ConfigError(f"radius must be an integer of 0 or more, got {self.radius!r}")
        if not isinstance(self.max_failures, int) or isinstance(self.max_failures, bool) or self.max_failures < 1:
            raise ConfigError(f"max_failures must be an integer of 1 or more, got {self.max_failures!r}")

    @classmethod
    def for_space(cls, space: SearchSpace, fusion_methods: Sequence[str] | None = None,
                  neighbourhood: Neighbourhood = "cross", radius: int = 1, max_failures: int = DEFAULT_MAX_FAILURES,
                  proxy: str | None = None, proxy_top: int = 3) -> PlanRules:
        """The rules for ``space``, its fusion methods checked.

        ``fusion_methods=None`` is the paper's ``("linear_add",)``, or the space's first method if
        the space lacks it.

        Raises:
            ConfigError: For fusion methods that are not distinct methods of the space, or an
                invalid neighbourhood, radius or ``max_failures``.
        """
        if fusion_methods is None:
            fusion_methods = (DEFAULT_FUSION,) if DEFAULT_FUSION in space.fusion_methods else space.fusion_methods[:1]
        methods = tuple(fusion_methods) if space.has_fusion else ()
        if space.has_fusion and not methods:
            raise ConfigError("fusion_methods is empty", "pass at least one fusion method, or None for the default")
        unknown = [m for m in methods if m not in space.fusion_methods]
        if unknown or len(set(methods)) != len(methods):
            raise ConfigError(f"fusion_methods {list(methods)} must be distinct methods of the space "
                              f"{space.source or space.name}", f"use some of {', '.join(space.fusion_methods)}")
        return cls(methods, neighbourhood, radius, max_failures, proxy, proxy_top)

    def record(self, space: SearchSpace) -> dict[str, Any]:
        """What a study stores of its plan: the grid axes (which every worker must share) and these rules."""
        axes = {}
        for modality, (t_name, b_name) in (("image", (P_IMAGE_T, P_IMAGE_B)), ("text", (P_TEXT_T, P_TEXT_B))):
            if space.has(modality):
                axes[t_name], axes[b_name] = list(space.axes(modality).t), list(space.axes(modality).b)
        options: dict[str, Any] = {"fusion_methods": list(self.fusion_methods), "neighbourhood": self.neighbourhood,
                                   "radius": self.radius}
        if self.proxy is not None:  # recorded only when set: the record of a plain study is unchanged
            options.update(proxy=self.proxy, proxy_top=self.proxy_top)
        return {"axes": axes, "options": options}

    def check_record(self, stored: Mapping[str, Any], space: SearchSpace, study_name: str) -> str | None:
        """Check a study's stored :meth:`record` against these rules on ``space``.

        Returns:
            A warning if the options differ (every worker of a study should pass the same), else ``None``.

        Raises:
            ConfigError: The study was searched over other grid axes.
        """
        record = self.record(space)
        if stored.get("axes") != record["axes"]:
            raise ConfigError(f"study {study_name!r} was searched over the grids {stored.get('axes')}, not over the "
                              f"grids {record['axes']} of space {space.source or space.name}",
                              "pass the same search space to every worker, or use a new study name")
        if stored.get("options") != record["options"]:
            return (f"study {study_name!r} was started with heuristic options {stored.get('options')}; this worker "
                    f"uses {record['options']}: every worker of a study should pass the same options")
        return None


class Claim(NamedTuple):
    """What a trial may hold: a configuration to train, or to score by the closed-form ``proxy``."""

    config: TrialConfig
    proxy: str | None = None


class Optimum(NamedTuple):
    """The best COMPLETE trial of a set of configurations (see :func:`rank`)."""

    config: TrialConfig
    value: float
    number: int


@dataclass(frozen=True)
class PlanStatus:
    """Where a heuristic search stands: the one answer of :func:`derive_plan`.

    A runner that must not block asks for a trial only when ``pending`` is non-empty, waits (asks
    again later) when :attr:`waiting` is true, and ends when :attr:`exhausted` is true.

    Attributes:
        phase: The earliest phase with unfinished configurations: ``"image"``, ``"text"``,
            ``"fusion"`` or ``"done"``. Image and text configurations may run concurrently.
        pending: Configurations nobody evaluates yet, in plan order (what new trials claim).
        running: Unfinished configurations held by RUNNING trials, in plan order.
        queued: Unfinished configurations of enqueued (WAITING) trials: reserved, not pending.
        given_up: Configurations that FAILED ``max_failures`` times: skipped.
        planned: Number of configurations per phase; ``fusion`` is ``None`` until both unimodal
            phases are finished (the fusion plan depends on their results).
        completed: Number of planned configurations finished COMPLETE or PRUNED, per phase.
        failures: Number of FAILED trials of planned configurations.
        optima: The :class:`Optimum` per phase (``None`` before a COMPLETE trial): the unimodal
            optima, and the best planned fusion (the answer once the search is exhausted).
        candidates: Per modality, the neighbourhood of its optimum crossed in the fusion phase
            (given-up points left out; empty until the fusion phase starts).
        exhausted: Every planned configuration is finished (nothing pending, nothing running).
        enqueued: WAITING trials in the study, planned or not (``study.ask`` pops them first).
        holders: The numbers of the RUNNING trials holding each of ``running``.
        proxy_pending, proxy_running: With a proxy, the unimodal configurations awaiting their
            proxy score, and those being scored (the trained ``pending`` of a modality is known
            once all of its configurations are scored).
        proxy_holders: The numbers of the RUNNING proxy trials holding each of ``proxy_running``.
        proxy: The proxy of the plan's rules (``None``: every unimodal configuration is trained).
    """

    phase: Phase
    pending: tuple[TrialConfig, ...]
    running: tuple[TrialConfig, ...]
    queued: tuple[TrialConfig, ...]
    given_up: tuple[TrialConfig, ...]
    planned: Mapping[str, int | None]
    completed: Mapping[str, int]
    failures: int
    optima: Mapping[str, Optimum | None]
    candidates: Mapping[str, tuple[tuple[int, int], ...]]
    exhausted: bool
    enqueued: int = 0
    holders: Mapping[TrialConfig, tuple[int, ...]] = field(default_factory=dict)
    proxy_pending: tuple[TrialConfig, ...] = ()
    proxy_running: tuple[TrialConfig, ...] = ()
    proxy_holders: Mapping[TrialConfig, tuple[int, ...]] = field(default_factory=dict)
    proxy: str | None = None

    def claims(self) -> list[Claim]:
        """What a new trial may claim, in order: the proxy stage's configurations, then the pending ones."""
        return [Claim(c, self.proxy) for c in self.proxy_pending] + [Claim(c) for c in self.pending]

    def is_pending(self, claim: Claim) -> bool:
        """Nobody scores (``claim.proxy``) or trains ``claim.config`` yet."""
        return claim.config in (self.proxy_pending if claim.proxy else self.pending)

    def holders_of(self, claim: Claim) -> tuple[int, ...]:
        """The RUNNING trials holding the same claim (a proxy trial and a trained one never collide)."""
        return tuple((self.proxy_holders if claim.proxy else self.holders).get(claim.config, ()))

    @property
    def waiting(self) -> bool:
        """Nothing is pending but the plan is not finished: trials still running must end first."""
        return not self.pending and not self.proxy_pending and not self.exhausted

    @property
    def in_progress(self) -> tuple[TrialConfig, ...]:
        """Configurations RUNNING trials train or score by the proxy (the plan moves on when they end)."""
        return self.running + self.proxy_running

    @property
    def total_planned(self) -> int | None:
        """Configurations in the whole plan, or ``None`` while the fusion plan is unknown."""
        counts = [self.planned[p] for p in PHASES]
        return None if counts[-1] is None else sum(int(c or 0) for c in counts)

    def best(self, phase: str) -> TrialConfig | None:
        """The optimum's configuration of ``phase`` (``"image"``, ``"text"`` or ``"fusion"``)."""
        optimum = self.optima.get(phase)
        return None if optimum is None else optimum.config

    def best_value(self, phase: str) -> float | None:
        """The optimum's value of ``phase``."""
        optimum = self.optima.get(phase)
        return None if optimum is None else optimum.value

    best_image = property(lambda self: self.best("image"), doc="The best COMPLETE image configuration.")
    best_text = property(lambda self: self.best("text"), doc="The best COMPLETE text configuration.")
    best_fusion = property(lambda self: self.best("fusion"), doc="The best COMPLETE planned fusion.")
    best_image_value = property(lambda self: self.best_value("image"), doc="Its value.")
    best_text_value = property(lambda self: self.best_value("text"), doc="Its value.")
    best_fusion_value = property(lambda self: self.best_value("fusion"), doc="Its value.")
    image_candidates = property(lambda self: self.candidates["image"], doc="The image points of the fusion phase.")
    text_candidates = property(lambda self: self.candidates["text"], doc="The text points of the fusion phase.")


def _optimum(results: Iterable[Optimum], among: Iterable[TrialConfig]) -> Optimum | None:
    wanted = set(among)
    found = [r for r in results if r.config in wanted]
    return max(found, key=lambda r: rank(r.value, r.number)) if found else None


class _Tally:
    """The trials of each configuration by state (trained and proxy trials are tallied apart)."""

    def __init__(self, max_failures: int) -> None:
        self.max_failures = max_failures
        self.done: set[TrialConfig] = set()
        self.failures: Counter[TrialConfig] = Counter()
        self.holding: dict[TrialConfig, list[int]] = {}
        self.waiting: set[TrialConfig] = set()
        self.results: list[Optimum] = []

    def add(self, record: TrialRecord) -> None:
        config = record.config
        assert config is not None
        if record.state in (TrialState.COMPLETE, TrialState.PRUNED):
            self.done.add(config)
            if record.state == TrialState.COMPLETE and record.value is not None:
                self.results.append(Optimum(config, float(record.value), record.number))
        elif record.state == TrialState.FAIL:
            self.failures[config] += 1
        elif record.state == TrialState.RUNNING:
            self.holding.setdefault(config, []).append(record.number)
        elif record.state == TrialState.WAITING:
            self.waiting.add(config)

    def given_up(self, config: TrialConfig) -> bool:
        return config not in self.done and self.failures[config] >= self.max_failures

    def finished(self, config: TrialConfig) -> bool:
        return config in self.done or self.given_up(config)


def derive_plan(space: SearchSpace, rules: PlanRules, trials: Iterable[TrialRecord]) -> PlanStatus:
    """Where Algorithm 1 stands after ``trials``: a pure function (same trials, same answer).

    The phases: every ``(t, b)`` of the image grid and of the text grid (``"image"``,
    ``"text"``); once both are finished, the neighbourhood of each modality's optimum crossed
    with each fusion method (``"fusion"``). A configuration is finished when a trial of it ended
    COMPLETE or PRUNED, or when ``rules.max_failures`` trials of it FAILED (it is given up, and
    left out of the fusion neighbourhoods: its features could not be read). Trials of
    configurations off the plan count only for ``enqueued``. With ``rules.proxy``, each unimodal
    phase starts with a proxy trial of every ``(t, b)`` (``proxy_pending``); once a modality's
    are all scored, its ``proxy_top`` best by proxy score (ties to the lower trial number) are
    trained, and its optimum is the best trained one.

    Args:
        space: The search space.
        rules: The plan's options.
        trials: One record per trial of the study, in any order.

    Returns:
        The :class:`PlanStatus`.
    """
    trained, proxied = _Tally(rules.max_failures), _Tally(rules.max_failures)
    enqueued = 0
    for record in trials:
        enqueued += record.state == TrialState.WAITING
        if record.config is not None:
            (proxied if record.proxy else trained).add(record)
    grids = {m: tuple(space.unimodal_configs(m)) for m in UNIMODAL}
    scored = {m: grids[m] if rules.proxy else () for m in UNIMODAL}
    # The trained configurations of a modality: its grid, or (with a proxy) its proxy_top best
    # by proxy score in grid order, unknown (None) until every one of them is scored.
    unimodal: dict[str, tuple[TrialConfig, ...] | None] = {}
    for m in UNIMODAL:
        if not scored[m]:
            unimodal[m] = grids[m]
        elif all(proxied.finished(c) for c in scored[m]):
            best = [o for c in grids[m] if (o := _optimum(proxied.results, (c,))) is not None]
            top = sorted(best, key=lambda r: rank(r.value, r.number), reverse=True)[: rules.proxy_top]
            unimodal[m] = tuple(c for c in grids[m] if c in {r.config for r in top})
        else:
            unimodal[m] = None
    done, failures, holding, waiting, results = (trained.done, trained.failures, trained.holding, trained.waiting,
                                                 trained.results)
    given_up, finished = trained.given_up, trained.finished
    optima: dict[str, Optimum | None] = {m: _optimum(results, unimodal[m] or ()) for m in UNIMODAL}
    candidates: dict[str, tuple[tuple[int, int], ...]] = {m: () for m in UNIMODAL}
    fusion: tuple[TrialConfig, ...] | None = None
    if all(v is not None and all(finished(c) for c in v) for v in unimodal.values()):
        fusion = ()
        image, text = optima["image"], optima["text"]
        if image is not None and text is not None:
            for m, optimum in (("image", image), ("text", text)):
                points = grid_neighbourhood(space.axes(m), getattr(optimum.config, m), rules.neighbourhood,
                                            rules.radius)
                candidates[m] = tuple(p for p in points if not given_up(neighbour := replace(optimum.config, **{m: p}))
                                      and not proxied.given_up(neighbour))
            fusion = tuple(TrialConfig("fusion", image=i, text=x, fusion=f, d_alg=space.d_alg)
                           for i in candidates["image"] for x in candidates["text"] for f in rules.fusion_methods)
    optima["fusion"] = _optimum(results, fusion or ())
    phases: dict[str, tuple[TrialConfig, ...] | None] = {"image": unimodal["image"], "text": unimodal["text"],
                                                         "fusion": fusion}
    plan = [c for p in PHASES for c in phases[p] or ()]
    unfinished = [c for c in plan if not finished(c)]
    proxies = [c for m in UNIMODAL for c in scored[m] if not proxied.finished(c)]
    phase = next((p for p in PHASES if phases[p] is None or not all(finished(c) for c in phases[p] or ())
                  or any(c.modality == p for c in proxies)), "done")
    return PlanStatus(
        phase=phase,  # type: ignore[arg-type]
        pending=tuple(c for c in unfinished if c not in holding and c not in waiting),
        running=tuple(c for c in unfinished if c in holding),
        queued=tuple(c for c in unfinished if c in waiting),
        given_up=tuple(c for c in plan if given_up(c)),
        planned={p: None if v is None else len(v) for p, v in phases.items()},
        completed={p: sum(1 for c in v or () if c in done) for p, v in phases.items()},
        failures=sum(failures[c] for c in plan),
        optima=optima,
        candidates=candidates,
        exhausted=fusion is not None and not unfinished,
        enqueued=enqueued,
        holders={c: tuple(holding[c]) for c in unfinished if c in holding},
        proxy_pending=tuple(c for c in proxies if c not in proxied.holding and c not in proxied.waiting),
        proxy_running=tuple(c for c in proxies if c in proxied.holding),
        proxy_holders={c: tuple(proxied.holding[c]) for c in proxies if c in proxied.holding},
        proxy=rules.proxy,
    )


# ---------------------------------------------------------------------------------------- Optuna trials as records

def config_from_params(params: Any, d_alg: int) -> TrialConfig | None:
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
        return config_from_params(attrs[CLAIM_ATTR], d_alg)
    fixed = config_from_params(attrs.get("fixed_params"), d_alg)
    if fixed is not None or trial.state == TrialState.RUNNING:
        return fixed
    return config_from_params(trial.params, d_alg)


def records_of(trials: Iterable[FrozenTrial], d_alg: int, *, skip: int | None = None,
               override: Override | None = None) -> list[TrialRecord]:
    """The records of Optuna trials (read by the caller), without trial number ``skip``."""
    records = []
    for t in trials:
        if t.number == skip:
            continue
        state, values = override[1:] if override is not None and t.number == override[0] else (t.state, t.values)
        records.append(TrialRecord(t.number, state, _config_of(t, d_alg), float(values[0]) if values else None,
                                   proxy=bool(t.user_attrs.get(PROXY_ATTR))))
    return records


def consistent(config: TrialConfig, fixed: Mapping[str, Any]) -> bool:
    """Whether ``config`` agrees with the (partial) parameters ``fixed`` of an enqueued trial."""
    params = config.to_params()
    return all(params.get(k) == v for k, v in fixed.items() if k in PARAM_NAMES)


def is_proxy(trial: FrozenTrial) -> bool:
    """Whether ``trial`` was scored by a closed-form proxy (its value is no trained probe's score)."""
    return bool(trial.user_attrs.get(PROXY_ATTR))


def best_trained(trials: Iterable[FrozenTrial]) -> FrozenTrial | None:
    """The best COMPLETE trial that trained a probe (``study.best_trial`` without the proxy trials), by :func:`rank`."""
    done = [t for t in trials if t.state == TrialState.COMPLETE and t.value is not None and not is_proxy(t)]
    return max(done, key=lambda t: rank(float(t.value), t.number)) if done else None  # type: ignore[arg-type]
