"""The paper's figures from a finished study: HTML page, PNG and PDF files, and the dashboard.

:func:`write_report` is the entry point; :class:`Report` says what it wrote and skipped. Nothing
below this package imports it (it draws from the study storage and the feature store).

Example:
    >>> from difffeat_tune.report import write_report
    >>> report = write_report("sqlite:///runs/studies.db", "shapes-heuristic")  # doctest: +SKIP
    >>> report.skipped                                                           # doctest: +SKIP
    {'heuristic vs grid': 'no shapes-grid study in the storage: ...'}
"""

from __future__ import annotations

from difffeat_tune.report._features import TSNE_GROUPS, TSNE_MAX_ROWS, ClusterScores, FeatureAnalysis
from difffeat_tune.report._spec import FigureSpec
from difffeat_tune.report._study import StudyData, TrialRecord
from difffeat_tune.report._write import DEFAULT_REPORTS, Report, write_report

__all__ = ["DEFAULT_REPORTS", "TSNE_GROUPS", "TSNE_MAX_ROWS", "ClusterScores", "FeatureAnalysis", "FigureSpec",
           "Report", "StudyData", "TrialRecord", "write_report"]
