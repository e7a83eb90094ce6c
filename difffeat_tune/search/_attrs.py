"""The names of what a study records, defined once (both engines, the sampler, summaries, reports).

Trial user attributes (shown in optuna-dashboard):

* ``phase``, ``modality``, ``config``: the plan's phase, the configuration's modality and a
  readable label, set as soon as the trial holds a configuration;
* one attribute per metric (``map``, ``cp``, ``cr``, ``cf1``, ``op``, ``or``, ``of1`` for
  multi-label, ``top1``, ``top5`` for single-label, plus ``n_classes_scored`` and
  ``n_classes_excluded``), ``epochs_run``, ``seconds``, ``split`` once it finished;
* the per-epoch selection scores: the trial's intermediate values when a pruner reads them
  (reported every epoch), else one ``history`` attribute written at the end (one write instead
  of one per epoch);
* ``error`` on a FAILED trial: the reason, one line;
* ``surplus`` on a heuristic trial that got no configuration.

Study user attributes: the run's settings (``sampler``, ``space``, ...; see
:func:`~difffeat_tune.search.runner.record_study_attrs`) and the evaluation of the best
configuration (``eval_trial``, ``eval_split``, ``eval_metrics``, ``eval_epochs``).
"""

from __future__ import annotations

from collections.abc import Mapping

from difffeat_tune.probe.metrics import METRIC_NAMES

# -- trials ---------------------------------------------------------------------------------
PHASE = "phase"
MODALITY = "modality"
CONFIG = "config"
EPOCHS = "epochs_run"
SECONDS = "seconds"
SPLIT = "split"
HISTORY = "history"
ERROR = "error"
SURPLUS = "surplus"

# -- studies --------------------------------------------------------------------------------
SAMPLER = "sampler"
SPACE = "space"
ENGINE = "engine"
SELECTION_SPLIT = "selection_split"
EVAL_TRIAL = "eval_trial"
EVAL_SPLIT = "eval_split"
EVAL_METRICS = "eval_metrics"
EVAL_EPOCHS = "eval_epochs"

#: How people write the metric names, in the order papers report them (key -> name).
METRIC_LABELS: Mapping[str, str] = dict(METRIC_NAMES)


def result_attrs(metrics: Mapping[str, float], epochs_run: int, seconds: float,
                 split: str | None) -> dict[str, object]:
    """User attributes of a finished trial: one per metric (sortable columns in the dashboard),
    epochs, seconds and the scored split."""
    return {**{k: float(v) for k, v in metrics.items()}, EPOCHS: int(epochs_run),
            SECONDS: round(float(seconds), 4), SPLIT: split}


def trial_metrics(attrs: Mapping[str, object]) -> dict[str, float]:
    """The metrics a finished trial recorded (its attributes named like metrics or ``n_classes_*``)."""
    return {k: float(v) for k, v in attrs.items()  # type: ignore[arg-type]
            if (k in METRIC_LABELS or k.startswith("n_classes_")) and isinstance(v, (int, float))}


def first_line(error: BaseException | str) -> str:
    """The one line a FAILED trial records: ``Type: message`` (first line of the message)."""
    if isinstance(error, BaseException):
        text = f"{type(error).__name__}: {error}"
    else:
        text = str(error)
    return text.strip().splitlines()[0] if text.strip() else "error"
