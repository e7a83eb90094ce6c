"""The report's figures as :class:`~difffeat_tune.report._spec.FigureSpec`: what each one shows.

Scores are shown in percent, as papers write them. Each builder returns ``None`` when the study
holds nothing for its figure; :func:`build_figures` then says why in the report.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from statistics import mean

from difffeat_tune.config import TrialConfig
from difffeat_tune.probe.metrics import METRIC_NAMES
from difffeat_tune.report._features import ROLES, FeatureAnalysis
from difffeat_tune.report._proxy import MIN_PAIRS, RankCorrelation, proxy_correlations, proxy_scores, trained_scores
from difffeat_tune.report._spec import Bars, Curves, FigureSpec, Heatmap, Mark, MarkKind, Scatter, Table
from difffeat_tune.report._study import METRIC_KEYS, StudyData, TrialRecord

#: Per-class AP: with more classes than twice this, only the best and the worst this many are drawn.
CLASSES_SHOWN = 15
#: Training curves of this many best trials when the study has a single phase (a grid study).
CURVES_OF_SINGLE_PHASE = 3


def pct(value: float | None) -> float | None:
    """A fraction as percent (None stays None)."""
    return None if value is None else 100.0 * float(value)


def tb_label(tb: tuple[int, int]) -> str:
    return f"t={tb[0]} b={tb[1]}"


def metric_name(key: str) -> str:
    return dict(METRIC_NAMES).get(key, key)


def score_title(study: StudyData) -> str:
    """The selection score's name, e.g. "val mAP (%)"."""
    return f"{study.selection_split} {metric_name(study.headline)} (%)"


# -- A(t, b) ----------------------------------------------------------------------------------


def landscape_figure(study: StudyData, companions: Sequence[StudyData] = ()) -> FigureSpec | None:
    """A(t, b) per modality, the optimum marked; beside it, proxy scores where a proxy ranked the configurations.

    With unimodal trials (heuristic search), each cell is that (t, b)'s probe score. A grid study
    has none: each cell is then the best fusion score over the other modality's configurations.
    Each proxy-guided study among ``study`` and ``companions`` (the other studies of its
    ``compare``) adds a panel per modality of its proxy scores (never drawn as trained scores nor
    starred as an optimum), the configurations it trained outlined, and the rank correlation of
    its proxy scores with the trained ones (see :func:`~difffeat_tune.report._proxy.proxy_correlations`).
    """
    correlations = proxy_correlations(study, companions)
    panels = []
    for modality in ("image", "text"):
        records = study.of(modality)
        mine = [(proxied, c) for proxied, c in correlations if c.modality == modality]
        if records:  # with proxy panels, on their axes (every configuration scored): cells side by side
            scored = {tb for proxied, _ in mine for tb in proxy_scores(proxied, modality)}
            axes = (sorted({t for t, _ in scored}), sorted({b for _, b in scored}))
            panels.append(_unimodal_heatmap(records, modality, score_title(study), axes if scored else None))
        panels += [_proxy_heatmap(proxied, c) for proxied, c in mine]
    title = "A(t, b): probe score per timestep and block"
    if panels:
        caption = ("A(t, b): the linear probe's selection score for each timestep t and block b of each modality; "
                   "the optimum is starred and outlined. Blank cells were not run (or pruned/failed, as labelled).")
        if correlations:
            title = "A(t, b): probe and proxy scores per timestep and block"
            caption += " " + _proxy_caption(correlations)
    else:
        fusion = [r for r in study.of("fusion") if r.complete]
        if not fusion:
            return None
        panels = [_marginal_heatmap(fusion, modality, score_title(study)) for modality in ("image", "text")]
        caption = ("This study has no unimodal trials (a full-grid search): each cell is the best fusion score of "
                   "that (t, b) over every configuration of the other modality; the optimum is starred and outlined.")
    return FigureSpec("landscape", title, caption, tuple(panels))


def _proxy_heatmap(proxied: StudyData, correlation: RankCorrelation) -> Heatmap:
    """The proxy score of each (t, b), raw (a proxy score is no percentage), the trained configurations outlined."""
    modality, proxy = correlation.modality, correlation.proxy
    cells = proxy_scores(proxied, modality)
    ts = sorted({tb[0] for tb in cells})
    bs = sorted({tb[1] for tb in cells})
    z = tuple(tuple(cells.get((t, b)) for t in ts) for b in bs)
    text = tuple(tuple("" if cells.get((t, b)) is None else f"{cells[(t, b)]:.4g}" for t in ts) for b in bs)
    trained = sorted(trained_scores(proxied, modality))
    marks = tuple(Mark(t, b, f"trained {tb_label((t, b))}", "trained") for t, b in trained)
    return Heatmap(f"{modality}: {proxy} proxy score\n{correlation.describe()}", tuple(ts), tuple(bs), z,
                   "timestep t", "block b", f"{proxy} score", marks, text)


def _proxy_caption(correlations: Sequence[tuple[StudyData, RankCorrelation]]) -> str:
    """What the proxy panels show, and each rank correlation with the study it is taken against."""
    parts = []
    for proxied, c in correlations:
        against = ("its own trained configurations" if c.against == proxied.name
                   else f"the trained A(t, b) of {c.against}")
        parts.append(f"{c.modality}, {c.proxy} of {proxied.name} against {against}: {c.describe()}")
    text = ("Proxy panels: the closed-form proxy score of each (t, b) (no probe trained; not a selection score, "
            "never an optimum); outlined in orange, the configurations the proxy-guided search then trained. Rank "
            "correlations over the configurations with both scores (n): " + "; ".join(parts) + ".")
    if any(c.against == proxied.name for proxied, c in correlations):
        text += (" A proxy-guided study alone trains only its --proxy-top best configurations per modality, so its "
                 f"n is small; with n < {MIN_PAIRS} no correlation is given. `difffeat-tune compare "
                 "--unimodal-proxy` also trains every configuration (the plain heuristic) to rank against.")
    return text


def _unimodal_heatmap(records: Sequence[TrialRecord], modality: str, colorbar: str,
                      axes: tuple[Sequence[int], Sequence[int]] | None = None) -> Heatmap:
    """A(t, b) of the trials of one modality, on ``axes`` (t values, b values; default: those run)."""
    cells = {getattr(r.config, modality): r for r in _best_per_config(records)}
    ts = sorted({tb[0] for tb in cells} | set(axes[0] if axes else ()))
    bs = sorted({tb[1] for tb in cells} | set(axes[1] if axes else ()))
    z = tuple(tuple(pct(cells[(t, b)].value) if (t, b) in cells else None for t in ts) for b in bs)
    text = tuple(tuple(_state_text(cells.get((t, b))) for t in ts) for b in bs)
    best = _best_of(list(cells.values()))
    marks: tuple[Mark, ...] = ()
    if best is not None:
        t, b = getattr(best.config, modality)
        marks = (Mark(t, b, f"{modality} optimum {tb_label((t, b))}: {pct(best.value):.2f}", "best"),)
    return Heatmap(f"{modality} A(t, b)", tuple(ts), tuple(bs), z, "timestep t", "block b", colorbar, marks, text)


def _marginal_heatmap(fusion: Sequence[TrialRecord], modality: str, colorbar: str) -> Heatmap:
    best_of: dict[tuple[int, int], TrialRecord] = {}
    for record in fusion:
        tb = getattr(record.config, modality)
        if tb not in best_of or (record.value, -record.number) > (best_of[tb].value, -best_of[tb].number):
            best_of[tb] = record
    ts = sorted({tb[0] for tb in best_of})
    bs = sorted({tb[1] for tb in best_of})
    z = tuple(tuple(pct(best_of[(t, b)].value) if (t, b) in best_of else None for t in ts) for b in bs)
    (t, b), top = max(best_of.items(), key=lambda kv: (kv[1].value, -kv[1].number))
    mark = Mark(t, b, f"{modality} optimum {tb_label((t, b))}: {pct(top.value):.2f}", "best")
    return Heatmap(f"{modality} (best fusion over the other modality)", tuple(ts), tuple(bs), z, "timestep t",
                   "block b", colorbar, (mark,))


def _state_text(record: TrialRecord | None) -> str:
    if record is None:
        return ""
    if record.complete:
        return f"{pct(record.value):.1f}"
    return record.state.lower()


def _best_per_config(records: Sequence[TrialRecord]) -> list[TrialRecord]:
    """One record per configuration: its best COMPLETE trial, else its last trial (pruned, failed)."""
    chosen: dict[TrialConfig, TrialRecord] = {}
    for record in records:
        current = chosen.get(record.config)
        if current is None or _rank(record) > _rank(current):
            chosen[record.config] = record
    return list(chosen.values())


def _rank(record: TrialRecord) -> tuple[int, float, int]:
    return (1, record.value, -record.number) if record.complete else (0, 0.0, record.number)  # type: ignore[return-value]


# -- fusion phase -----------------------------------------------------------------------------


def fusion_figure(study: StudyData) -> FigureSpec | None:
    """Image candidates x text candidates with each pair's score, per fusion method; the chosen pair marked."""
    records = _best_per_config(study.of("fusion"))
    methods = study.fusion_methods()
    if not methods:
        return None
    chosen = study.best("fusion")
    panels: list[Heatmap | Bars] = []
    for method in methods:
        of_method = [r for r in records if r.config.fusion == method]
        best = _best_of(of_method)
        is_chosen = best is not None and chosen is not None and best.number == chosen.number
        marks = () if best is None else (_pair_mark(best, "chosen pair" if is_chosen else "best of method",
                                                    "chosen" if is_chosen else "best"),)
        axes = _space_axes(study) if study.sampler == "grid" else None  # the heuristic: its candidates only
        panels.append(_pair_heatmap(of_method, f"fusion: {method}", score_title(study), marks, axes))
    caption = ("Each cell is the score of one fusion pair (image configuration x text configuration)"
               + (" of the heuristic's neighbourhoods of the unimodal optima" if study.sampler == "heuristic" else "")
               + "; the chosen pair is starred and outlined in red, each other method's best starred.")
    if len(methods) > 1:
        complete = [r for r in records if r.complete]
        panels.append(Bars(
            "fusion methods compared", tuple(methods),
            (("best", tuple(pct(max(r.value for r in complete if r.config.fusion == m)) for m in methods)),
             ("mean", tuple(pct(mean(r.value for r in complete if r.config.fusion == m)) for m in methods))),
            score_title(study)))
        caption += " The bars compare the methods' best and mean pair scores."
    return FigureSpec("fusion", "Fusion phase: image x text candidates", caption, tuple(panels))


def _best_of(records: Sequence[TrialRecord]) -> TrialRecord | None:
    return max((r for r in records if r.complete), key=lambda r: (r.value, -r.number), default=None)


def _pair_mark(record: TrialRecord, what: str, kind: MarkKind) -> Mark:
    config = record.config
    label = f"{what}: {config.label()}" + (f": {pct(record.value):.2f}" if record.complete else "")
    return Mark(tb_label(config.text), tb_label(config.image), label, kind)  # type: ignore[arg-type]


def _pair_heatmap(records: Sequence[TrialRecord], title: str, colorbar: str, marks: Sequence[Mark],
                  axes: tuple[Sequence[tuple[int, int]], Sequence[tuple[int, int]]] | None = None) -> Heatmap:
    """Image configurations (rows) x text configurations (columns); ``axes`` fixes them (else: those run)."""
    cells = {(r.config.image, r.config.text): r for r in records}
    images, texts = axes if axes is not None else (sorted({k[0] for k in cells}), sorted({k[1] for k in cells}))
    z = tuple(tuple(pct(cells[(i, x)].value) if (i, x) in cells else None for x in texts) for i in images)
    text = tuple(tuple(_state_text(cells.get((i, x))) for x in texts) for i in images)
    return Heatmap(title, tuple(tb_label(x) for x in texts), tuple(tb_label(i) for i in images), z,
                   "text configuration", "image configuration", colorbar, tuple(marks), text)


def _space_axes(*studies: StudyData) -> tuple[list[tuple[int, int]], list[tuple[int, int]]] | None:
    """The full image and text grids of the studies' space (None if it is unknown)."""
    space = next((s.space for s in studies if s.space is not None), None)
    return None if space is None else (space.image.points(), space.text.points())


# -- best image vs best text vs best fusion -------------------------------------------------------


@dataclass(frozen=True)
class BestRow:
    """The best configuration of one kind and its scores (fractions).

    Attributes:
        role: "image", "text" or "fusion".
        title: how figures name it ("best image", or "image part of the best fusion" in a grid study).
        config: the configuration.
        selection: its metrics on the selection split (from the search; empty if it was not searched).
        evaluation: its metrics on the evaluation split (re-trained; empty if not available).
    """

    role: str
    title: str
    config: TrialConfig
    selection: dict[str, float]
    evaluation: dict[str, float]


def best_rows(study: StudyData, analysis: FeatureAnalysis | None) -> list[BestRow]:
    """Best image, text and fusion with their scores, as far as the study and the analysis know them."""
    rows = []
    best = study.best()
    for role in ROLES:
        record = study.best(role)
        config = record.config if record else (analysis.configs.get(role) if analysis else None)
        if config is None:
            continue
        title = analysis.titles[role] if analysis and role in analysis.titles else f"best {role}"
        evaluation: dict[str, float] = {}
        if analysis is not None and role in analysis.results:
            evaluation = {k: float(v) for k, v in analysis.results[role].metrics.items() if k in METRIC_KEYS}
        elif best is not None and record is not None and record.number == best.number:
            evaluation = study.eval_metrics
        rows.append(BestRow(role, title, config, dict(record.metrics) if record else {}, evaluation))
    return rows


def summary_figure(study: StudyData, analysis: FeatureAnalysis | None) -> FigureSpec | None:
    """Best image vs best text vs best fusion, every metric, on the selection and evaluation splits."""
    rows = best_rows(study, analysis)
    if not rows:
        return None
    keys = [key for key, _ in METRIC_NAMES if any(key in r.selection or key in r.evaluation for r in rows)]
    names = tuple(metric_name(k) for k in keys)
    eval_split = study.eval_split or (analysis.eval_split if analysis else "test")
    panels: list[Bars | Table] = []
    for split, attr in ((study.selection_split, "selection"), (eval_split, "evaluation")):
        series = tuple((r.title, tuple(pct(getattr(r, attr).get(k)) for k in keys)) for r in rows if getattr(r, attr))
        if series:
            panels.append(Bars(split, names, series, "score (%)"))
    table_rows = []
    for r in rows:
        for split, metrics in ((study.selection_split, r.selection), (eval_split, r.evaluation)):
            table_rows.append((r.title, r.config.label(), split,
                               *(("-" if metrics.get(k) is None else f"{pct(metrics[k]):.2f}") for k in keys)))
    panels.append(Table("scores (%)", ("", "configuration", "split", *names), tuple(table_rows)))
    caption = (f"The best configuration of each kind, scored on the selection split ({study.selection_split}, "
               f"from the search) and on the evaluation split ({eval_split}, re-trained).")
    missing = [r.title for r in rows if not r.evaluation]
    if missing:
        caption += f" No {eval_split} scores for {', '.join(missing)}: not re-trained (see 'Not shown')."
    unsearched = [r.title for r in rows if not r.selection]
    if unsearched:
        caption += f" No {study.selection_split} scores for {', '.join(unsearched)}: the search did not run them alone."
    return FigureSpec("summary", "Best image vs best text vs best fusion", caption, tuple(panels))


# -- heuristic vs grid ----------------------------------------------------------------------------


def comparison_figure(heuristic: StudyData, grid: StudyData, rows: Sequence[tuple[str, ...]],
                      header: tuple[str, ...] = ("", "heuristic", "grid")) -> FigureSpec | None:
    """The grid's landscape (image config x text config) with the heuristic's pairs marked, and the costs."""
    methods = [m for m in heuristic.fusion_methods() if m in grid.fusion_methods()]
    if not methods:
        return None
    chosen = heuristic.best("fusion")
    panels: list[Heatmap | Table] = []
    for method in methods:
        marks = [_pair_mark(r, "evaluated by the heuristic", "evaluated")
                 for r in _best_per_config(heuristic.of("fusion")) if r.config.fusion == method]
        if chosen is not None and chosen.config.fusion == method:
            marks.append(_pair_mark(chosen, "heuristic's choice", "chosen"))
        records = [r for r in _best_per_config(grid.of("fusion")) if r.config.fusion == method]
        best = _best_of(records)
        if best is not None:
            marks.append(_pair_mark(best, "grid's best", "grid_best"))
        panels.append(_pair_heatmap(records, f"grid landscape: {method}", score_title(grid), marks,
                                    _space_axes(grid, heuristic)))
    panels.append(Table(" vs ".join(header[1:]), header, tuple(tuple(r) for r in rows)))
    caption = ("The full grid's score for every image x text pair; pink outlines mark the pairs the heuristic "
               "evaluated, red its choice, dashed black the grid's best. Regret = the grid's best pair minus the "
               "heuristic's best pair, on the selection split; unimodal bests are listed apart.")
    return FigureSpec("comparison", "Heuristic search vs full grid", caption, tuple(panels))


# -- training curves ------------------------------------------------------------------------------


def curves_figure(study: StudyData) -> FigureSpec | None:
    """Per-epoch selection score of the best trial of each phase (of the best few for a single phase)."""
    phases = study.phases
    if len(phases) == 1:
        pool = sorted((r for r in study.of(phases[0]) if r.complete and r.curve), key=lambda r: (-r.value, r.number))
        chosen = [(f"#{i + 1} {r.config.label()}", r) for i, r in enumerate(pool[:CURVES_OF_SINGLE_PHASE])]
    else:
        chosen = [(f"best {p}: {r.config.label()}", r) for p in phases if (r := study.best(p)) is not None and r.curve]
    if not chosen:
        return None
    series = tuple((name, tuple(float(e) for e, _ in r.curve), tuple(100.0 * v for _, v in r.curve)) for name, r in chosen)
    panel = Curves("training curves", series, "epoch", score_title(study))
    return FigureSpec("curves", "Training curves of the best trials", "The selection score after each probe epoch.",
                      (panel,))


# -- per-class AP and t-SNE ---------------------------------------------------------------------


def per_class_figure(analysis: FeatureAnalysis) -> FigureSpec | None:
    """Per-class AP of the best configuration, best and worst classes named."""
    if not analysis.class_ap:
        return None
    ranked = sorted(analysis.class_ap, key=lambda kv: (-kv[1], kv[0]))
    shown = ranked if len(ranked) <= 2 * CLASSES_SHOWN else ranked[:CLASSES_SHOWN] + ranked[-CLASSES_SHOWN:]
    config = analysis.configs[analysis.best_role]
    bars = Bars(f"AP per class ({analysis.eval_split})", tuple(name for name, _ in shown),
                ((config.label(), tuple(pct(v) for _, v in shown)),), "AP (%)", horizontal=True)

    def named(items: Sequence[tuple[str, float]]) -> str:
        return ", ".join(f"{name} ({100 * v:.1f})" for name, v in items)

    n = min(5, len(ranked))
    caption = (f"Average precision of each class for the best configuration ({config.label()}) on the "
               f"{analysis.eval_split} split, {len(ranked)} classes with a positive"
               + ("" if shown is ranked else f" (the best and the worst {CLASSES_SHOWN} drawn)")
               + f". Best: {named(ranked[:n])}. Worst: {named(ranked[::-1][:n])}.")
    return FigureSpec("per-class-ap", "Per-class AP of the best configuration", caption, (bars,))


def tsne_figure(analysis: FeatureAnalysis) -> FigureSpec | None:
    """t-SNE of the best image, text and fused features coloured by label group, with cluster scores."""
    if not analysis.embeddings:
        return None
    panels: list[Scatter | Table] = [
        Scatter(f"{analysis.titles[e.role]}\n{analysis.configs[e.role].label()}", tuple(map(float, e.points[:, 0])),
                tuple(map(float, e.points[:, 1])), analysis.groups) for e in analysis.embeddings]
    panels.append(cluster_table(analysis))
    caption = (f"t-SNE of the {analysis.eval_split} split's representations (for fusion: the trained head's fused "
               f"vector, before the classifier), coloured by label group: {analysis.rows_note}. Scores on the 2-D "
               "embedding: Davies-Bouldin (lower is better), Calinski-Harabasz and silhouette (higher is better).")
    return FigureSpec("tsne", "Feature space: t-SNE and cluster scores", caption, tuple(panels))


def cluster_table(analysis: FeatureAnalysis) -> Table:
    rows = tuple((analysis.titles[e.role], analysis.configs[e.role].label(), f"{e.scores.davies_bouldin:.3f}",
                  f"{e.scores.calinski_harabasz:.1f}", f"{e.scores.silhouette:.3f}") for e in analysis.embeddings)
    return Table("cluster scores", ("", "configuration", "Davies-Bouldin", "Calinski-Harabasz", "silhouette"), rows)
