"""Proxy scores against trained ones: how well a closed-form proxy ranks the unimodal configurations.

A proxy-guided heuristic (``run heuristic --unimodal-proxy``) scores every unimodal (t, b) by a
proxy and trains only the best few: within its own study, few configurations have both scores. A
study that trained every unimodal configuration (the plain heuristic of the same ``compare``, or
a one-modality grid) gives the meaningful correlation: over every configuration both studies hold.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from difffeat_tune.report._study import StudyData
from difffeat_tune.search._plan import UNIMODAL

#: Configurations needed with both scores before a rank correlation is given.
MIN_PAIRS = 3


@dataclass(frozen=True)
class RankCorrelation:
    """The rank correlation of one modality's proxy scores with trained probe scores.

    Attributes:
        proxy: the proxy ("logme", "ridge").
        modality: "image" or "text".
        study: the proxy-guided study whose proxy scores are ranked.
        against: the study whose trained scores they are ranked against (``study`` itself when
            no study of the storage trained every configuration).
        n: the configurations that have both scores.
        tau: Kendall's tau (``None``: see ``why``).
        rho: Spearman's rho (``None``: see ``why``).
        why: why there is no correlation, else ``None``.
    """

    proxy: str
    modality: str
    study: str
    against: str
    n: int
    tau: float | None
    rho: float | None
    why: str | None = None

    def describe(self) -> str:
        """One line: ``Kendall tau 0.77, Spearman rho 0.85 (n=30)``, or why there is none."""
        if self.tau is None or self.rho is None:
            return f"no rank correlation (n={self.n}): {self.why}"
        return f"Kendall tau {self.tau:.2f}, Spearman rho {self.rho:.2f} (n={self.n})"

    def as_dict(self) -> dict[str, object]:
        return {"proxy": self.proxy, "modality": self.modality, "study": self.study, "against": self.against,
                "n": self.n, "kendall_tau": self.tau, "spearman_rho": self.rho, "why": self.why}


def proxy_scores(study: StudyData, modality: str) -> dict[tuple[int, int], float]:
    """The proxy score of each (t, b) of ``modality`` that a proxy trial of ``study`` scored."""
    return _by_point((r.value, getattr(r.config, modality)) for r in study.proxied(modality) if r.complete)


def trained_scores(study: StudyData, modality: str) -> dict[tuple[int, int], float]:
    """The best trained selection score of each (t, b) of ``modality`` in ``study`` (proxy trials left out)."""
    return _by_point((r.value, getattr(r.config, modality)) for r in study.of(modality) if r.complete)


def _by_point(pairs: Iterable[tuple[float | None, tuple[int, int]]]) -> dict[tuple[int, int], float]:
    """The highest value per point (a configuration run twice keeps its best)."""
    out: dict[tuple[int, int], float] = {}
    for value, point in pairs:
        out[point] = max(float(value), out.get(point, -math.inf))  # type: ignore[arg-type]
    return out


def reference_for(proxied: StudyData, studies: Sequence[StudyData], modality: str) -> StudyData:
    """The study to rank ``proxied``'s proxy scores against: the first of ``studies`` that trained
    ``modality``'s configurations without a proxy, else ``proxied`` itself (its few trained ones)."""
    return next((s for s in studies if s.proxy is None and trained_scores(s, modality)), proxied)


def rank_correlation(proxied: StudyData, against: StudyData, modality: str) -> RankCorrelation:
    """Kendall's tau and Spearman's rho of ``proxied``'s proxy scores and ``against``'s trained
    scores, over the configurations of ``modality`` that have both."""
    from scipy.stats import kendalltau, spearmanr

    proxy, trained = proxy_scores(proxied, modality), trained_scores(against, modality)
    shared = sorted(set(proxy) & set(trained))
    base = {"proxy": str(proxied.proxy), "modality": modality, "study": proxied.name, "against": against.name,
            "n": len(shared)}
    if len(shared) < MIN_PAIRS:
        why = f"fewer than {MIN_PAIRS} configurations have a proxy and a trained score"
        if against is proxied:
            why += " (a proxy-guided study trains only its --proxy-top best per modality)"
        return RankCorrelation(**base, tau=None, rho=None, why=why)  # type: ignore[arg-type]
    x, y = [proxy[p] for p in shared], [trained[p] for p in shared]
    tau, rho = float(kendalltau(x, y).statistic), float(spearmanr(x, y).statistic)
    if not (math.isfinite(tau) and math.isfinite(rho)):
        why = "undefined: the scores of one side are all equal"
        return RankCorrelation(**base, tau=None, rho=None, why=why)  # type: ignore[arg-type]
    return RankCorrelation(**base, tau=tau, rho=rho)  # type: ignore[arg-type]


def proxy_correlations(study: StudyData,
                       companions: Sequence[StudyData] = ()) -> list[tuple[StudyData, RankCorrelation]]:
    """Each proxy-guided study among ``study`` and ``companions`` (the other studies of its
    ``compare``), with the rank correlation of its proxy scores per modality, in modality order:
    what ``study``'s landscape draws beside its A(t, b) (nothing for a study without unimodal trials)."""
    if study.proxy is None and not any(study.of(m) for m in UNIMODAL):
        return []  # a study without unimodal trials (a grid) draws fusion marginals, not A(t, b)
    studies = (study, *companions)
    out = []
    for modality in UNIMODAL:
        for proxied in (s for s in studies if s.proxy is not None and s.proxied(modality)):
            against = reference_for(proxied, [s for s in studies if s is not proxied], modality)
            out.append((proxied, rank_correlation(proxied, against, modality)))
    return out
