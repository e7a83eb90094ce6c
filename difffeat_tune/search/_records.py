"""A trial's record in as few storage calls as Optuna's protocol allows.

Optuna writes each parameter, each attribute and the final state of a trial in a transaction of
its own, and ``study.ask`` / ``study.tell`` read trials back. The engines of this package know
what they wrote, so a trial costs four write transactions:

1. its creation (:func:`ask`, which skips the search for an enqueued trial when the plan just
   read says there is none);
2. its grid point or its claim on a configuration, with its first heartbeat (the samplers'
   ``before_trial``; :func:`deferred_study_writes`);
3. its parameters and the user attributes ``phase``, ``modality`` and ``config``
   (:func:`deferred_writes` holds what ``suggest_*`` and ``set_user_attr`` would write);
4. its result: the user attributes, state and value (:func:`finish`, instead of ``study.tell``,
   reading nothing back).

Every attribute stays its own key (one column of optuna-dashboard's trial table).
:class:`RecordStorage` (what :func:`~difffeat_tune.search._storage.open_storage` returns) writes
each of those in one transaction (:func:`write_trial`); any other storage (Optuna's in-memory
storage, a plain ``RDBStorage``) gets the same calls one by one.
"""

from __future__ import annotations

import copy
import datetime
import json
import math
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import optuna
import sqlalchemy
from optuna.distributions import (
    BaseDistribution,
    check_distribution_compatibility,
    json_to_distribution,
)
from optuna.storages._rdb import models
from optuna.storages._rdb.storage import _create_scoped_session
from optuna.trial import FrozenTrial, TrialState

#: A parameter as the storage takes it: name, value in the distribution's internal representation, distribution.
Param = tuple[str, float, BaseDistribution]


class RecordStorage(optuna.storages.RDBStorage):
    """Optuna's RDB storage, plus :meth:`set_trial_record`: a trial's record in one transaction.

    Every other method is Optuna's; the tables are Optuna's, so any Optuna tool (the dashboard,
    ``optuna.load_study``) reads a study written through it.

    Args:
        url, kwargs: as for :class:`optuna.storages.RDBStorage`.
        on_connect: ``on_connect(dbapi_connection, connection_record)`` for every new database
            connection (SQLAlchemy's ``connect`` event), e.g. SQLite pragmas; also after unpickling.
    """

    def __init__(self, url: str, *, on_connect: Callable[[Any, Any], None] | None = None, **kwargs: Any) -> None:
        super().__init__(url, **kwargs)
        self._on_connect = on_connect
        self._listen()
        # The distribution each parameter name already has in a study (what a new value must be
        # compatible with): read once per name, as Optuna's cached storage does.
        self._known: dict[tuple[int, str], BaseDistribution] = {}

    def __getstate__(self) -> dict[Any, Any]:
        state = super().__getstate__()
        state.pop("_known", None)
        return state

    def __setstate__(self, state: dict[Any, Any]) -> None:
        super().__setstate__(state)
        self._listen()
        self._known = {}

    def _listen(self) -> None:
        if self._on_connect is None:
            return
        sqlalchemy.event.listen(self.engine, "connect", self._on_connect)
        self.engine.dispose()  # the connections Optuna opened while preparing the tables predate the hook

    def set_trial_record(self, trial_id: int, *, params: Sequence[Param] = (),
                         user_attrs: Mapping[str, Any] | None = None, system_attrs: Mapping[str, Any] | None = None,
                         heartbeat: bool = False, state: TrialState | None = None,
                         values: Sequence[float] | None = None) -> None:
        """Write parameters, attributes, a heartbeat and the final state of a trial, in one transaction.

        Args:
            trial_id: a RUNNING trial (a finished one raises :class:`optuna.exceptions.UpdateFinishedTrialError`
                and nothing is written).
            params: new parameters (name, internal value, distribution), checked against the
                distributions the study already has for those names.
            user_attrs, system_attrs: attributes to set (existing keys are overwritten).
            heartbeat: record the trial's heartbeat too (with heartbeats enabled).
            state: the state to end in (COMPLETE, PRUNED or FAIL), with ``values``.
            values: the objective values, for COMPLETE (and PRUNED with a last intermediate value).
        """
        with _create_scoped_session(self.scoped_session) as session:
            # Locked when the state changes (as Optuna does): a worker failing stale trials waits.
            trial = models.TrialModel.find_or_raise_by_id(trial_id, session, for_update=state is not None)
            self.check_trial_is_updatable(trial_id, trial.state)
            if heartbeat and self.heartbeat_interval is not None:
                self._beat(session, trial_id)
            for name, internal, distribution in params:
                known = self._distribution(session, trial.study_id, name)
                if known is not None:
                    check_distribution_compatibility(known, distribution)
                else:
                    self._known[(trial.study_id, name)] = distribution
                session.add(models.TrialParamModel(
                    trial_id=trial_id, param_name=name, param_value=internal,
                    distribution_json=optuna.distributions.distribution_to_json(distribution)))
            for table, attrs in ((models.TrialUserAttributeModel, user_attrs),
                                 (models.TrialSystemAttributeModel, system_attrs)):
                if attrs:
                    self._set_attrs(session, table, trial_id, attrs)
            if state is not None:
                for objective, value in enumerate(values or ()):
                    self._set_trial_value_without_commit(session, trial, objective, value)
                trial.state = state
                if state.is_finished():
                    trial.datetime_complete = datetime.datetime.now()

    def _distribution(self, session: Any, study_id: int, name: str) -> BaseDistribution | None:
        known = self._known.get((study_id, name))
        if known is None:
            row = (session.query(models.TrialParamModel.distribution_json).join(models.TrialModel)
                   .filter(models.TrialModel.study_id == study_id, models.TrialParamModel.param_name == name)
                   .first())
            if row is not None:
                known = self._known[(study_id, name)] = json_to_distribution(row[0])
        return known

    @staticmethod
    def _beat(session: Any, trial_id: int) -> None:
        """The trial's heartbeat, stamped with the database's clock (as Optuna's ``record_heartbeat``)."""
        beat = models.TrialHeartbeatModel.where_trial_id(trial_id, session, True)
        if beat is None:
            session.add(models.TrialHeartbeatModel(trial_id=trial_id))
        else:
            beat.heartbeat = session.execute(sqlalchemy.func.now()).scalar_one()

    @staticmethod
    def _set_attrs(session: Any, table: Any, trial_id: int, attrs: Mapping[str, Any]) -> None:
        """Insert or overwrite ``attrs``: one read of the keys present, then the rows (any SQL dialect)."""
        present = {row.key: row for row in session.query(table)
                   .filter(table.trial_id == trial_id, table.key.in_(list(attrs)))}
        for key, value in attrs.items():
            text = json.dumps(value)
            if key in present:
                present[key].value_json = text
            else:
                session.add(table(trial_id=trial_id, key=key, value_json=text))


def _record_storage(storage: Any) -> RecordStorage | None:
    """The :class:`RecordStorage` behind ``storage`` (a study's storage wraps it in a cache), or ``None``."""
    backend = getattr(storage, "_backend", storage)
    return backend if isinstance(backend, RecordStorage) else None


def write_trial(storage: optuna.storages.BaseStorage, trial_id: int, *, params: Sequence[Param] = (),
                user_attrs: Mapping[str, Any] | None = None, system_attrs: Mapping[str, Any] | None = None,
                heartbeat: bool = False, state: TrialState | None = None,
                values: Sequence[float] | None = None) -> None:
    """Write part of a trial's record: in one transaction on a :class:`RecordStorage`, else call by call.

    Args:
        storage: the study's storage.
        trial_id: the trial.
        params, user_attrs, system_attrs, heartbeat, state, values: see
            :meth:`RecordStorage.set_trial_record`.
    """
    record = _record_storage(storage)
    if record is not None:
        record.set_trial_record(trial_id, params=params, user_attrs=user_attrs, system_attrs=system_attrs,
                                heartbeat=heartbeat, state=state, values=values)
        return
    if heartbeat and getattr(storage, "get_heartbeat_interval", lambda: None)() is not None:
        storage.record_heartbeat(trial_id)  # type: ignore[attr-defined]
    for name, internal, distribution in params:
        storage.set_trial_param(trial_id, name, internal, distribution)
    for key, value in (user_attrs or {}).items():
        storage.set_trial_user_attr(trial_id, key, value)
    for key, value in (system_attrs or {}).items():
        storage.set_trial_system_attr(trial_id, key, value)
    if state is not None:
        storage.set_trial_state_values(trial_id, state, values)


class _Deferred:
    """Stands in for a trial's storage: holds its parameters and user attributes for one write.

    Reads of the trial's system attributes (Optuna's samplers read them once per suggestion)
    are served from one read; every other call goes to the storage.
    """

    def __init__(self, storage: optuna.storages.BaseStorage, trial_id: int) -> None:
        self.storage = storage
        self.trial_id = trial_id
        self.params: list[Param] = []
        self.user_attrs: dict[str, Any] = {}
        self.system_attrs: dict[str, Any] = {}
        self._read: dict[str, Any] | None = None

    def set_trial_param(self, trial_id: int, name: str, internal: float, distribution: BaseDistribution) -> None:
        if trial_id != self.trial_id:
            self.storage.set_trial_param(trial_id, name, internal, distribution)
            return
        self.params.append((name, internal, distribution))

    def set_trial_user_attr(self, trial_id: int, key: str, value: Any) -> None:
        if trial_id != self.trial_id:
            self.storage.set_trial_user_attr(trial_id, key, value)
            return
        self.user_attrs[key] = value

    def set_trial_system_attr(self, trial_id: int, key: str, value: Any) -> None:
        if trial_id != self.trial_id:
            self.storage.set_trial_system_attr(trial_id, key, value)
            return
        self.system_attrs[key] = value

    def get_trial_system_attrs(self, trial_id: int) -> dict[str, Any]:
        if trial_id != self.trial_id:
            return self.storage.get_trial_system_attrs(trial_id)
        if self._read is None:
            self._read = self.storage.get_trial_system_attrs(trial_id)
        return {**self._read, **self.system_attrs}

    def flush(self, **more: Any) -> None:
        """Write what was held (and ``more`` of :func:`write_trial`'s arguments) in one call."""
        write_trial(self.storage, self.trial_id, params=self.params, user_attrs=self.user_attrs,
                    system_attrs=self.system_attrs, **more)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.storage, name)


@contextmanager
def deferred_writes(trial: optuna.Trial) -> Iterator[None]:
    """Collect what ``trial.suggest_*`` and ``trial.set_user_attr`` write inside the block; write it at its end.

    The parameters and user attributes reach the storage in one :func:`write_trial` when the
    block ends without an error (a block that raises writes nothing: its trial is told FAIL or
    PRUNED next). Inside the block the trial behaves as usual (``trial.params`` and
    ``trial.user_attrs`` include what was suggested and set).
    """
    storage = trial.storage
    deferred = _Deferred(storage, trial._trial_id)
    trial.storage = deferred  # type: ignore[assignment]
    try:
        yield
    finally:
        trial.storage = storage
    deferred.flush()


class _StudyView:
    """A study whose storage is replaced (everything else is the study's)."""

    def __init__(self, study: optuna.Study, storage: Any) -> None:
        self._study = study
        self._storage = storage

    def __getattr__(self, name: str) -> Any:
        return getattr(self._study, name)


@contextmanager
def deferred_study_writes(study: optuna.Study, trial_id: int, *, heartbeat: bool = False) -> Iterator[Any]:
    """A view of ``study`` whose storage holds what is written of trial ``trial_id``, written at the end.

    For a sampler's ``before_trial``, which writes through ``study._storage``: its system
    attributes (and, with ``heartbeat``, the trial's first heartbeat) reach the storage in one
    :func:`write_trial` when the block ends without an error.
    """
    deferred = _Deferred(study._storage, trial_id)
    yield _StudyView(study, deferred)
    deferred.flush(heartbeat=heartbeat)


def ask(study: optuna.Study, *, enqueued: bool = True) -> optuna.Trial:
    """``study.ask()``, without looking for an enqueued trial when the caller knows there is none.

    ``study.ask`` reads the study's unfinished trials to pop a WAITING one first; an engine that
    has just read the plan (which counts WAITING trials) passes ``enqueued=False`` when it found
    none, and a new trial is created directly. Either way the sampler's ``before_trial`` runs.
    The engines record heartbeats themselves, so Optuna's warning that heartbeats expect
    ``optimize`` is silenced.
    """
    if enqueued:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Heartbeat of storage", category=UserWarning)
            return study.ask()
    return optuna.Trial(study, study._storage.create_new_trial(study._study_id))


def finish(study: optuna.Study, trial: optuna.Trial, state: TrialState, value: float | None = None,
           user_attrs: Mapping[str, Any] | None = None) -> FrozenTrial:
    """Tell ``trial``'s result: its last user attributes, state and value in one write; nothing read back.

    What ``study.tell`` does, from what this process knows of the trial: the sampler's
    ``after_trial`` is called, then the record is written (also when ``after_trial`` raises). A
    PRUNED trial takes its last intermediate value as its value.

    Returns:
        The finished trial as this process knows it (system attributes as they were when it was
        asked), for callbacks.

    Raises:
        ValueError: COMPLETE without a finite value (nothing is written).
        optuna.exceptions.UpdateFinishedTrialError: the trial was already finished (e.g. failed
            as stale by another worker); nothing is written.
    """
    attrs = dict(user_attrs or {})
    values: list[float] | None = None
    if state == TrialState.COMPLETE:
        if value is None or not math.isfinite(float(value)):
            raise ValueError(f"a COMPLETE trial needs a finite value, got {value!r}")
        values = [float(value)]
    elif state == TrialState.PRUNED and trial._cached_frozen_trial.intermediate_values:
        intermediate = trial._cached_frozen_trial.intermediate_values
        last = intermediate[max(intermediate)]
        values = [float(last)] if math.isfinite(last) else None
    frozen = copy.deepcopy(trial._cached_frozen_trial)
    frozen.user_attrs = {**frozen.user_attrs, **attrs}
    try:
        study.sampler.after_trial(study, frozen, state, values)
    finally:
        write_trial(study._storage, trial._trial_id, user_attrs=attrs, state=state, values=values)
    frozen.state, frozen.values = state, values
    frozen.datetime_complete = datetime.datetime.now()
    return frozen
