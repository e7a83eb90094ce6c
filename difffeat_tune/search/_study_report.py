"""A search's report: is the one on disk current, and (re)drawing it when it is not.

:func:`~difffeat_tune.search.runner.run_search` ends with :func:`write_study_report` when asked
for a report, and reads :func:`report_is_current` to decide whether a finished study has
anything left to do; ``compare`` draws its pair's report with the same function.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

import optuna

from difffeat_tune._defaults import REPORT_PAGE
from difffeat_tune.search._options import compare_studies

if TYPE_CHECKING:
    from difffeat_tune.probe.objective import Objective
    from difffeat_tune.report import Report
    from difffeat_tune.search._settings import Settings

#: ``on_report(page, written)``: the report's page once it is drawn (``written``, what the
#: report holds and skipped) or found up to date (``written`` is ``None``).
ReportCallback = Callable[[Path, "Report | None"], None]


def report_page(settings: Settings, study_name: str) -> Path:
    """The page of ``study_name``'s report: ``<runs>/reports/<study>/index.html``."""
    return settings.search.report_folder(study_name) / REPORT_PAGE


def report_is_current(storage: optuna.storages.BaseStorage, study: optuna.Study, page: Path) -> bool:
    """Whether ``page`` was written after the last change of every study it draws: the study, and
    the other studies of its ``compare`` that the storage holds (the comparison, the proxy scores)."""
    if not page.is_file():
        return False
    present = {s.study_name for s in storage.get_all_studies()}
    studies = [study] + [optuna.load_study(study_name=name, storage=storage)
                         for name in compare_studies(study.study_name) if name in present]
    written = datetime.fromtimestamp(page.stat().st_mtime)  # local time, as Optuna's datetimes
    for each in studies:
        trials = each.get_trials(deepcopy=False)
        changes = [t.datetime_complete or t.datetime_start for t in trials]
        if any(t.datetime_complete is None for t in trials) or None in changes:
            return False
        if not all(change < written for change in changes):  # type: ignore[operator]
            return False
    return True


def write_study_report(storage: optuna.storages.BaseStorage, study: optuna.Study, settings: Settings,
                       objective: Objective | None, on_report: ReportCallback | None = None) -> Report | None:
    """Draw ``study``'s report into ``<runs>/reports/<study>/`` unless the one there is current.

    Args:
        storage: the study's storage.
        study: the study.
        settings: the run's settings (runs folder, device, space).
        objective: re-trains the best configurations for the report (``None``: rebuilt from what
            the study recorded).
        on_report: told the page and what was written (``None`` when it was current).

    Returns:
        What was written, or ``None`` when the report was current.
    """
    page = report_page(settings, study.study_name)
    if report_is_current(storage, study, page):
        if on_report is not None:
            on_report(page, None)
        return None
    from difffeat_tune.report import write_report  # the report package imports the search layer

    written = write_report(storage, study.study_name, page.parent, device=settings.device, objective=objective,
                           space=settings.space)
    if on_report is not None:
        on_report(written.html, written)
    return written
