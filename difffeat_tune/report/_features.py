"""Feature-space views of a study's best configurations: test scores, per-class AP, t-SNE and cluster scores.

The best image, text and fusion configurations are re-trained once each
(:meth:`~difffeat_tune.probe.objective.Objective.representation`): their heads give the
evaluation split's scores, the best configuration's per-class AP, and the representation the
classifier reads (the standardised feature, or the fusion head's fused vector).

t-SNE label groups (the paper's figure colours five label groups): the rows of the evaluation
split that hold exactly one of its :data:`TSNE_GROUPS` most frequent labels, coloured by that
label (other, rarer labels may also be present). At most :data:`TSNE_MAX_ROWS` such rows are
embedded (a seeded subsample beyond), the same rows for every configuration. Features wider than
:data:`TSNE_PCA_DIMS` are first reduced by PCA, as is usual before t-SNE. Davies-Bouldin (lower is
better), Calinski-Harabasz (higher) and silhouette (higher, in [-1, 1]) scores are computed on
the 2-D embedding with the groups as clusters, so the three feature spaces, of different widths,
are compared on the same footing.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np
import torch

from difffeat_tune._errors import ConfigError, StoreError
from difffeat_tune._paths import store_location
from difffeat_tune.config import TrialConfig
from difffeat_tune.probe.metrics import average_precision_per_class
from difffeat_tune.probe.objective import Objective, ObjectiveSettings, TrialResult
from difffeat_tune.probe.train import TrainRecipe
from difffeat_tune.report._study import StudyData
from difffeat_tune.store import FeatureStore

logger = logging.getLogger(__name__)

#: Number of label groups coloured in the t-SNE (the paper shows five).
TSNE_GROUPS = 5
#: Rows embedded at most; a seeded subsample beyond (t-SNE is quadratic in memory and slow).
TSNE_MAX_ROWS = 2000
#: Features wider than this are reduced by PCA before t-SNE.
TSNE_PCA_DIMS = 50
#: t-SNE perplexity (scikit-learn's default), lowered for very few rows.
TSNE_PERPLEXITY = 30.0
#: Roles of the analysed configurations, in display order.
ROLES: tuple[str, ...] = ("image", "text", "fusion")


@dataclass(frozen=True)
class ClusterScores:
    """How well the label groups separate in an embedding."""

    davies_bouldin: float
    calinski_harabasz: float
    silhouette: float


@dataclass(frozen=True)
class Embedding:
    """One configuration's t-SNE embedding of the grouped rows, and its cluster scores."""

    role: str
    points: np.ndarray
    scores: ClusterScores


@dataclass(frozen=True)
class FeatureAnalysis:
    """What the re-trained best configurations show on the evaluation split.

    Attributes:
        eval_split: the evaluation split.
        configs: role ("image", "text", "fusion") -> configuration.
        titles: role -> how the role is named in figures (e.g. "best image").
        results: role -> evaluation-split result of the re-trained head.
        best_role: the role of the study's best configuration.
        class_ap: ``(class name, AP)`` of the best configuration, classes without positives left out.
        groups: the label group of each embedded row (empty when the t-SNE was skipped).
        embeddings: per role, the t-SNE embedding and cluster scores.
        rows_note: which rows were embedded (or why none were).
        seconds: time spent re-training and embedding.
        tsne_seconds: the part of it spent embedding and scoring.
    """

    eval_split: str
    configs: dict[str, TrialConfig]
    titles: dict[str, str]
    results: dict[str, TrialResult]
    best_role: str
    class_ap: tuple[tuple[str, float], ...]
    groups: tuple[str, ...]
    embeddings: tuple[Embedding, ...]
    rows_note: str
    seconds: float
    tsne_seconds: float = 0.0


#: Recipe fields a study records (:meth:`~difffeat_tune.settings.Settings.record`).
RECORDED_RECIPE = ("epochs", "batch_size", "lr")


def objective_for(study: StudyData, device: str | torch.device | None = None) -> Objective:
    """An objective that re-trains ``study``'s configurations as the search did.

    Reads the feature folder and extractions the study recorded, the space's ``[probe]`` recipe
    and the study's ``epochs``, and the protocol implied by its splits.

    Raises:
        StoreError: the study's features are not in the store.
        ConfigError: the study's search space cannot be loaded (fusion heads need its d_alg).
    """
    attrs = study.attrs
    folder = attrs.get("features")
    if not folder:
        raise StoreError(f"study {study.name!r} records no feature folder",
                         "re-run the search with this version of difffeat-tune")
    path = store_location(str(folder), "the study's feature folder")
    if not (path / "dataset.json").is_file():
        raise StoreError(f"the features of study {study.name!r} are not in the store: {path / 'dataset.json'} is missing",
                         "run `difffeat-tune extract` with the study's data set and backbones")
    if study.space is None:
        raise ConfigError(f"the search space {attrs.get('space')!r} of study {study.name!r} cannot be loaded",
                          "pass the space the study was run with")
    view = FeatureStore(path.parent).view(path, image=attrs.get("image_extraction"), text=attrs.get("text_extraction"))
    fields = dict(study.space.probe)
    for key in RECORDED_RECIPE:  # what the search recorded wins over the space's table
        if attrs.get(key) is not None:
            fields[key] = attrs[key]
    protocol = attrs.get("protocol") or (
        "paper" if study.eval_split is not None and study.selection_split == study.eval_split else "validation")
    return Objective(view, ObjectiveSettings(recipe=TrainRecipe(**fields), protocol=protocol),  # type: ignore[arg-type]
                     device=device)


def roles_of(study: StudyData) -> tuple[dict[str, TrialConfig], dict[str, str]]:
    """The configurations to analyse and their titles.

    A search with unimodal phases gives each phase's best. A grid study has none: its best
    fusion's image and text parts stand in for them (and are titled so).
    """
    configs: dict[str, TrialConfig] = {}
    titles: dict[str, str] = {}
    for role in ROLES:
        best = study.best(role)
        if best is not None:
            configs[role], titles[role] = best.config, f"best {role}"
    fusion = configs.get("fusion")
    if fusion is not None:
        for role in ("image", "text"):
            if role not in configs:
                configs[role] = TrialConfig(role, **{role: getattr(fusion, role)})  # type: ignore[arg-type]
                titles[role] = f"{role} part of the best fusion"
    return configs, titles


def analyse_features(objective: Objective, study: StudyData, *, max_rows: int = TSNE_MAX_ROWS,
                     groups: int = TSNE_GROUPS, seed: int = 0) -> FeatureAnalysis:
    """Re-train the best configurations of ``study`` and analyse their evaluation-split features.

    Args:
        objective: re-trains configurations (see :func:`objective_for`).
        study: the study.
        max_rows: rows embedded at most by t-SNE.
        groups: label groups coloured.
        seed: seed of the subsample, PCA and t-SNE.

    Raises:
        ConfigError: the study has no COMPLETE trial, or the data set has no evaluation split.
    """
    start = time.perf_counter()
    best = study.best()
    if best is None:
        raise ConfigError(f"study {study.name!r} has no complete trial to analyse")
    configs, titles = roles_of(study)
    features: dict[str, np.ndarray] = {}
    results: dict[str, TrialResult] = {}
    class_ap: tuple[tuple[str, float], ...] = ()
    labels = np.zeros((0, 0), dtype=np.int8)
    for role, config in configs.items():
        rep = objective.representation(config)
        features[role], results[role], labels = rep.features.numpy(), rep.result, rep.labels
        if config == best.config:
            class_ap = _class_ap(rep.logits, rep.labels, objective.view.label_names)
    rows, names, note = label_groups(labels, objective.view.label_names, n_groups=groups, max_rows=max_rows, seed=seed)
    embeddings: list[Embedding] = []
    tsne_start = time.perf_counter()
    if rows.size:
        for role in configs:
            points = embed(features[role][rows], seed=seed)
            embeddings.append(Embedding(role, points, cluster_scores(points, names)))
    return FeatureAnalysis(
        eval_split=str(objective.eval_split), configs=configs, titles=titles, results=results,
        best_role=best.config.modality, class_ap=class_ap,
        groups=tuple(names) if embeddings else (), embeddings=tuple(embeddings), rows_note=note,
        seconds=time.perf_counter() - start, tsne_seconds=time.perf_counter() - tsne_start)


def label_groups(labels: np.ndarray, label_names: tuple[str, ...], *, n_groups: int = TSNE_GROUPS,
                 max_rows: int = TSNE_MAX_ROWS, seed: int = 0) -> tuple[np.ndarray, list[str], str]:
    """Rows holding exactly one of the ``n_groups`` most frequent labels, and that label's name.

    Returns:
        ``(row indices, group name per row, a sentence saying which rows)``; no rows when fewer
        than two groups have at least two rows (cluster scores need two groups).
    """
    positive = labels == 1
    counts = positive.sum(axis=0)
    top = [int(i) for i in np.argsort(-counts, kind="stable")[:n_groups] if counts[i] > 0]
    hits = positive[:, top]
    rows = np.flatnonzero(hits.sum(axis=1) == 1)
    group_of = np.asarray(top)[hits[rows].argmax(axis=1)] if rows.size else np.zeros(0, dtype=int)
    sizes = {int(c): int((group_of == c).sum()) for c in top}
    if sum(size >= 2 for size in sizes.values()) < 2:
        return np.zeros(0, dtype=int), [], (f"t-SNE skipped: fewer than two of the {n_groups} most frequent labels "
                                            "label at least two rows alone")
    eligible = rows.size
    if rows.size > max_rows:
        keep = np.sort(np.random.default_rng(seed).choice(rows.size, size=max_rows, replace=False))
        rows, group_of = rows[keep], group_of[keep]
    names = [label_names[int(c)] for c in group_of]
    shown = ", ".join(f"{label_names[c]} ({sizes[c]})" for c in top)
    sampled = f"a seeded sample of {rows.size} of these {eligible} rows" if rows.size < eligible else f"all {eligible}"
    note = (f"rows of the evaluation split holding exactly one of its {len(top)} most frequent labels: {shown}; "
            f"{sampled} embedded")
    return rows, names, note


def embed(values: np.ndarray, *, seed: int = 0) -> np.ndarray:
    """2-D t-SNE of ``values`` (PCA to :data:`TSNE_PCA_DIMS` first when wider)."""
    from sklearn.decomposition import PCA
    from sklearn.manifold import TSNE

    values = np.asarray(values, dtype=np.float64)
    if values.shape[1] > TSNE_PCA_DIMS and values.shape[0] > TSNE_PCA_DIMS:
        values = PCA(n_components=TSNE_PCA_DIMS, random_state=seed).fit_transform(values)
    perplexity = min(TSNE_PERPLEXITY, max(1.0, (values.shape[0] - 1) / 3))
    return TSNE(n_components=2, perplexity=perplexity, init="pca", learning_rate="auto",
                random_state=seed).fit_transform(values)


def cluster_scores(points: np.ndarray, groups: list[str]) -> ClusterScores:
    """Davies-Bouldin, Calinski-Harabasz and silhouette scores of ``groups`` in ``points``."""
    from sklearn.metrics import calinski_harabasz_score, davies_bouldin_score, silhouette_score

    return ClusterScores(davies_bouldin=float(davies_bouldin_score(points, groups)),
                         calinski_harabasz=float(calinski_harabasz_score(points, groups)),
                         silhouette=float(silhouette_score(points, groups)))


def _class_ap(logits: torch.Tensor, labels: np.ndarray, names: tuple[str, ...]) -> tuple[tuple[str, float], ...]:
    targets = torch.from_numpy(labels.astype(np.int64))
    ap = average_precision_per_class(logits, targets, from_logits=True).tolist()
    return tuple((name, float(value)) for name, value in zip(names, ap) if value == value)  # NaN: no positive
