"""``write_report``: every figure of a study, as one HTML page, PNG and PDF files, and in the dashboard."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import optuna
import plotly.graph_objects as go
import torch

from difffeat_tune._defaults import REPORT_PAGE
from difffeat_tune._errors import ConfigError, DiffFeatError
from difffeat_tune.probe.objective import Objective
from difffeat_tune.report import _figures as figs
from difffeat_tune.report._features import TSNE_MAX_ROWS, FeatureAnalysis, analyse_features, objective_for
from difffeat_tune.report._page import render_note, render_page
from difffeat_tune.report._plotly import to_plotly
from difffeat_tune.report._proxy import proxy_correlations
from difffeat_tune.report._spec import FigureSpec, Table
from difffeat_tune.report._static import save_static
from difffeat_tune.report._study import StudyData, study_names
from difffeat_tune.search._options import COMPARED, compare_role, compare_studies, study_name
from difffeat_tune.search._plan import PROXY_PHASE
from difffeat_tune.search.compare import Comparison
from difffeat_tune.search.runner import DEFAULT_RUNS, SearchSummary, open_storage, summarize
from difffeat_tune.space import SearchSpace

logger = logging.getLogger(__name__)

#: Reports go to ``runs/reports/<study>/`` unless told otherwise.
DEFAULT_REPORTS = DEFAULT_RUNS / "reports"
#: The page's file name in the report folder, and the suffix of each figure's plotly JSON file.
PAGE_NAME, PLOTLY_SUFFIX = REPORT_PAGE, ".plotly.json"
#: Prefix of the graph-object ids the report saves in a study (re-running a report replaces them).
GRAPH_ID_PREFIX = "difffeat-"
#: What the report lacks without the feature analysis (its key in :attr:`Report.skipped`).
FEATURE_PLOTS = "evaluation scores, per-class AP, t-SNE"
#: Study system attribute listing the graph ids reports saved (so a later report can retire them).
GRAPHS_ATTR = "difffeat:report_graphs"


@dataclass
class Report:
    """What :func:`write_report` wrote and found.

    Attributes:
        study_name: the study.
        out_dir: the report folder.
        html: the HTML page.
        files: every file written: the page, each figure's plotly JSON, PNG and PDF, the scores.
        figures: the figures' keys, in page order.
        scores: best configurations with their selection- and evaluation-split metrics
            (fractions), cluster scores per representation, and the comparison's regret.
        skipped: what is not shown, and why.
        dashboard: True if the figures and the note were saved into the study.
        seconds: time taken.
        timings: seconds per step (reading, re-training, t-SNE, figures, files, dashboard).
    """

    study_name: str
    out_dir: Path
    html: Path
    files: list[Path] = field(default_factory=list)
    figures: list[str] = field(default_factory=list)
    scores: dict[str, object] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    dashboard: bool = False
    seconds: float = 0.0
    timings: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict[str, object]:
        """A JSON-ready dict (paths as strings)."""
        return {"study_name": self.study_name, "out_dir": str(self.out_dir), "html": str(self.html),
                "files": [str(p) for p in self.files], "figures": list(self.figures), "scores": self.scores,
                "skipped": dict(self.skipped), "dashboard": self.dashboard, "seconds": round(self.seconds, 2),
                "timings": {k: round(v, 2) for k, v in self.timings.items()}}


def write_report(
    storage: str | optuna.storages.BaseStorage,
    study_name: str,
    out_dir: str | Path | None = None,
    *,
    device: str | torch.device | None = None,
    objective: Objective | None = None,
    space: SearchSpace | None = None,
    features: bool = True,
    dashboard: bool = True,
    max_rows: int = TSNE_MAX_ROWS,
    seed: int = 0,
) -> Report:
    """Draw every figure of a finished study and write them out.

    Writes ``out_dir/index.html`` (one self-contained page: interactive plotly figures,
    plotly.js embedded, no external URL) and ``<figure>.png`` / ``<figure>.pdf`` (matplotlib),
    saves the same plotly figures into the study for optuna-dashboard and a Markdown note
    summarising the best image, text and fusion configurations with their scores.

    Figures: A(t, b) per modality with the optimum (for a proxy-guided study, or beside one of its
    ``compare``, with the proxy scores and their rank correlation with trained scores); the fusion
    phase's image x text candidates (and the fusion methods compared when several ran); best
    image vs text vs fusion on the
    selection and evaluation splits, every metric; heuristic vs grid when the storage holds both
    studies of one ``compare`` (``<base>-heuristic`` and ``<base>-grid``, and its third column when
    it also holds a proxy-guided ``<base>-heuristic-<proxy>``); the best trials'
    training curves; per-class AP of the best configuration; t-SNE of the evaluation split's best
    image, text and fused representations with cluster scores (see
    :mod:`difffeat_tune.report._features` for the label groups and the subsample). The last two
    and the evaluation-split scores of the unimodal bests re-train those configurations, from the
    feature store; without the features they are skipped, and :attr:`Report.skipped` says why.

    Args:
        storage: the study storage (a SQLAlchemy URL or an Optuna storage).
        study_name: the study.
        out_dir: the report folder (default ``runs/reports/<study>``).
        device: where re-training runs (default: CUDA when present).
        objective: re-trains configurations; default: rebuilt from what the study recorded
            (feature folder, extractions, the space's recipe and epochs).
        space: the study's search space; default: loaded from the study's ``space`` attribute.
        features: re-train the best configurations (test scores, per-class AP, t-SNE).
        dashboard: save the figures and the note into the study.
        max_rows: rows embedded at most by t-SNE.
        seed: seed of the t-SNE subsample and embedding.

    Raises:
        ConfigError: the study does not exist or has no finished trial.

    Example:
        >>> report = write_report("sqlite:///runs/studies.db", "shapes-heuristic")  # doctest: +SKIP
        >>> report.html                                                              # doctest: +SKIP
        PosixPath('runs/reports/shapes-heuristic/index.html')
    """
    start = time.perf_counter()
    timings: dict[str, float] = {}
    with _timed(timings, "read the study"):
        if isinstance(storage, str):
            storage = open_storage(storage, heartbeat=False, create=False)
        study = StudyData.load(storage, study_name, space)
    if not study.trials:
        raise ConfigError(f"study {study_name!r} has no finished trial to report on", "run the search first")
    folder = Path(out_dir) if out_dir is not None else DEFAULT_REPORTS / study_name
    folder.mkdir(parents=True, exist_ok=True)
    report = Report(study_name=study_name, out_dir=folder, html=folder / PAGE_NAME, timings=timings)

    analysis = _analysis(study, objective, device, features, max_rows, seed, report.skipped)
    if analysis is not None:
        timings["re-train the best configurations"] = analysis.seconds - analysis.tsne_seconds
        timings["t-SNE and cluster scores"] = analysis.tsne_seconds
    with _timed(timings, "read the study"):
        companions = _companions(storage, study)
        comparison, pair = _comparison(storage, study, companions, report.skipped)
    with _timed(timings, "interactive figures"):
        specs = _specs(study, analysis, companions, pair, comparison, report.skipped)
        figures = [(spec, to_plotly(spec)) for spec in specs]
    summary = next((p for s in specs if s.key == "summary" for p in s.panels if isinstance(p, Table)), None)
    comparison_table = next((p for s in specs if s.key == "comparison" for p in s.panels if isinstance(p, Table)), None)
    clusters = figs.cluster_table(analysis) if analysis is not None and analysis.embeddings else None
    title = f"Diff-Feat report: {study_name}"
    facts = _facts(study, analysis)

    with _timed(timings, "HTML page"):
        report.html.write_text(render_page(title, facts, summary, figures, report.skipped), encoding="utf-8")
        for spec, fig in figures:  # each figure's plotly JSON too: plotly.io.read_json opens it again
            path = folder / f"{spec.key}{PLOTLY_SUFFIX}"
            path.write_text(fig.to_json(), encoding="utf-8")
            report.files.append(path)
    report.files.insert(0, report.html)
    with _timed(timings, "PNG and PDF"):
        for spec in specs:
            report.files += save_static(spec, folder)
    report.figures = [spec.key for spec in specs]
    report.scores = _scores(study, analysis, comparison, companions)
    (folder / "scores.json").write_text(json.dumps(report.scores, indent=1))
    report.files.append(folder / "scores.json")
    if dashboard:
        with _timed(timings, "dashboard"):
            _save_to_dashboard(study.study or optuna.load_study(study_name=study_name, storage=storage),
                               [(spec, to_plotly(spec, compact=True)) for spec in specs],
                               render_note(title, facts, summary, comparison_table, clusters, report.html,
                                           report.skipped))
        report.dashboard = True
    report.seconds = time.perf_counter() - start
    logger.info("report of %s: %d figures in %s (%.1f s)", study_name, len(specs), folder, report.seconds)
    return report


@contextmanager
def _timed(timings: dict[str, float], what: str) -> Iterator[None]:
    start = time.perf_counter()
    try:
        yield
    finally:
        timings[what] = timings.get(what, 0.0) + time.perf_counter() - start


def _analysis(study: StudyData, objective: Objective | None, device: str | torch.device | None, features: bool,
              max_rows: int, seed: int, skipped: dict[str, str]) -> FeatureAnalysis | None:
    if not features:
        skipped[FEATURE_PLOTS] = "feature analysis not asked for"
        return None
    try:
        analysis = analyse_features(objective or objective_for(study, device), study, max_rows=max_rows, seed=seed)
    except DiffFeatError as exc:
        skipped[FEATURE_PLOTS] = exc.message + (f" ({exc.hint})" if exc.hint else "")
        logger.warning("report of %s without the feature analysis: %s", study.name, exc.message)
        return None
    if not analysis.embeddings:
        skipped["t-SNE"] = analysis.rows_note
    return analysis


def _companions(storage: optuna.storages.BaseStorage, study: StudyData) -> list[StudyData]:
    """The other studies of ``study``'s ``compare`` that the storage holds (see :func:`compare_studies`)."""
    present = set(study_names(storage))
    return [StudyData.load(storage, name, study.space) for name in compare_studies(study.name) if name in present]


def _comparison(storage: optuna.storages.BaseStorage, study: StudyData, companions: list[StudyData],
                skipped: dict[str, str]) -> tuple[Comparison | None, tuple[StudyData, StudyData] | None]:
    """The comparison of the plain heuristic and the grid of ``study``'s ``compare`` when the storage
    holds both (with the proxy-guided heuristic as a third column when it holds one too), and that pair."""
    role = compare_role(study.name)
    wanted = [study_name(role[0], s) for s in COMPARED] if role else []
    found = {s.name: s for s in (study, *companions) if s.name in wanted}
    if not wanted or len(found) < len(wanted):
        missing = " and ".join(n for n in wanted if n not in found) or "<base>-grid / <base>-heuristic"
        skipped["heuristic vs grid"] = f"no {missing} study in the storage: `difffeat-tune compare` runs both"
        return None, None
    heuristic, grid = (found[n] for n in wanted)
    if (heuristic.sampler, grid.sampler) != COMPARED or heuristic.proxy is not None:
        skipped["heuristic vs grid"] = f"studies {heuristic.name} and {grid.name} are not a heuristic and a grid study"
        return None, None
    proxied = next((s for s in (study, *companions) if s.proxy is not None), None)

    def summary(s: StudyData) -> SearchSummary:
        return summarize(s.study or optuna.load_study(study_name=s.name, storage=storage))

    return (Comparison(heuristic=summary(heuristic), grid=summary(grid),
                       proxy=summary(proxied) if proxied is not None else None), (heuristic, grid))


def _specs(study: StudyData, analysis: FeatureAnalysis | None, companions: list[StudyData],
           pair: tuple[StudyData, StudyData] | None, comparison: Comparison | None,
           skipped: dict[str, str]) -> list[FigureSpec]:
    specs: list[FigureSpec] = []

    def add(spec: FigureSpec | None, what: str, why: str) -> None:
        if spec is not None:
            specs.append(spec)
        elif what not in skipped:
            skipped[what] = why

    add(figs.landscape_figure(study, companions), "A(t, b)", "no complete trial")
    add(figs.fusion_figure(study), "fusion phase", "no complete fusion trial (a one-modality study, or the "
                                                   "fusion phase has not run)")
    add(figs.summary_figure(study, analysis), "best image vs text vs fusion", "no complete trial")
    if pair is not None and comparison is not None:
        add(figs.comparison_figure(*pair, comparison.rows(), comparison.header()), "heuristic vs grid",
            "the two studies share no fusion method")
    add(figs.curves_figure(study), "training curves", "no trial reported per-epoch scores")
    if analysis is not None:
        add(figs.per_class_figure(analysis), "per-class AP", "no class has a positive in the evaluation split")
        add(figs.tsne_figure(analysis), "t-SNE", analysis.rows_note)
    return specs


def _facts(study: StudyData, analysis: FeatureAnalysis | None) -> list[tuple[str, str]]:
    best = study.best()
    attrs = study.attrs
    facts = [("study", f"{study.name} ({study.sampler} search, {len(study.trials)} trials with a configuration)"),
             ("space", str(attrs.get("space", "?"))), ("features", str(attrs.get("features", "?"))),
             ("splits", f"selection on {study.selection_split}, evaluation on {study.eval_split or '-'}")]
    if best is not None:
        facts.append(("best", f"{best.config.label()}: {figs.score_title(study).removesuffix(' (%)')} "
                              f"{100 * float(best.value or 0):.2f}"))
    proxied = study.of(PROXY_PHASE)
    if proxied:
        facts.append(("proxy trials", f"{len(proxied)} configuration(s) scored by the {study.proxy} proxy, no probe "
                                      "trained (their values are proxy scores: never a best)"))
    if study.surplus:
        facts.append(("surplus trials", f"{study.surplus} PRUNED trial(s) without parameters: started after the "
                                        "heuristic's plan was exhausted, they ran nothing"))
    if analysis is not None:
        facts.append(("re-training for this report", f"{analysis.seconds:.1f} s"))
    return facts


def _scores(study: StudyData, analysis: FeatureAnalysis | None, comparison: Comparison | None,
            companions: list[StudyData]) -> dict[str, object]:
    best = {}
    for row in figs.best_rows(study, analysis):
        best[row.role] = {"title": row.title, "config": row.config.label(), "params": row.config.to_params(),
                          "selection": row.selection, "evaluation": row.evaluation}
    out: dict[str, object] = {"selection_split": study.selection_split, "eval_split": study.eval_split, "best": best}
    if analysis is not None and analysis.embeddings:
        out["clusters"] = {e.role: vars(e.scores) for e in analysis.embeddings}
    if comparison is not None:
        out["comparison"] = comparison.as_dict()
    correlations = [c.as_dict() for _, c in proxy_correlations(study, companions)]
    if correlations:
        out["proxy_correlations"] = correlations
    return out


def _save_to_dashboard(study: optuna.Study, figures: list[tuple[FigureSpec, go.Figure]], note: str) -> None:
    """Save the figures (fixed ids: a new report replaces the last one's) and the note into the study.

    The dashboard cannot delete a saved figure: one that the last report had and this one lacks
    is replaced by a figure saying so.
    """
    from optuna_dashboard import save_note, save_plotly_graph_object

    storage = study._storage
    ids = [f"{GRAPH_ID_PREFIX}{spec.key}" for spec, _ in figures]
    for graph_id, (_, fig) in zip(ids, figures):
        save_plotly_graph_object(study, fig, graph_object_id=graph_id)
    previous = storage.get_study_system_attrs(study._study_id).get(GRAPHS_ATTR, [])
    for stale in [g for g in previous if g not in ids]:
        placeholder = go.Figure(layout={"title": {"text": f"{stale.removeprefix(GRAPH_ID_PREFIX)}: not in the latest "
                                                          "report (see the study note)"}})
        save_plotly_graph_object(study, placeholder, graph_object_id=stale)
    storage.set_study_system_attr(study._study_id, GRAPHS_ATTR, sorted(set(previous) | set(ids)))
    save_note(study, note)
