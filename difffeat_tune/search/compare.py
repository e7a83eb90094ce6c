"""Heuristic search against the full grid on the same features: cost, best scores and regret.

``compare --unimodal-proxy`` adds a third study, the proxy-guided heuristic, judged against the
grid like the plain heuristic.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import optuna

from difffeat_tune.search._options import COMPARED, compare_role
from difffeat_tune.search._plan import PROXY_PHASE
from difffeat_tune.search.runner import SearchSummary

logger = logging.getLogger(__name__)


#: The kinds of configuration a regret may compare, in order of preference: fusion pairs when both
#: studies have one, else the one modality a one-modality search has.
_KINDS = ("fusion", "image", "text")


@dataclass
class Comparison:
    """Two studies side by side (three with the proxy-guided heuristic).

    Regret compares like with like: the grid's best fusion minus the heuristic's best fusion, both
    on the selection split (>= 0 means the grid found a better pair). The heuristic's overall best
    may be a unimodal configuration, which the grid never trains alone: the unimodal bests are
    shown apart, never in the regret. For a one-modality search the regret compares that
    modality's bests.

    With ``proxy`` (the proxy-guided heuristic of ``compare --unimodal-proxy``), every table has a
    third column and :attr:`proxy_regret` is its regret against the grid, of the same kind.

    Attributes:
        heuristic: the plain heuristic's summary.
        grid: the grid's summary.
        proxy: the proxy-guided heuristic's summary, if one was compared.
    """

    heuristic: SearchSummary
    grid: SearchSummary
    proxy: SearchSummary | None = None

    @property
    def kind(self) -> str | None:
        """What the regret compares: "fusion", or the modality of a one-modality search (``None``: nothing shared)."""
        return next((k for k in _KINDS if k in self.heuristic.best_by_modality and k in self.grid.best_by_modality),
                    None)

    @property
    def regret(self) -> float | None:
        """Selection-split regret: the grid's best of :attr:`kind` minus the heuristic's."""
        return self._regret_of(self.heuristic)

    @property
    def proxy_regret(self) -> float | None:
        """Selection-split regret of the proxy-guided heuristic: the grid's best of :attr:`kind` minus its own."""
        return None if self.proxy is None else self._regret_of(self.proxy)

    def _regret_of(self, summary: SearchSummary) -> float | None:
        kind = self.kind
        if kind is None or kind not in summary.best_by_modality:
            return None
        return _score(self.grid, kind) - _score(summary, kind)  # type: ignore[operator]

    @property
    def columns(self) -> list[SearchSummary]:
        """The compared studies in table order: the heuristic, the grid, then the proxy-guided heuristic."""
        return [self.heuristic, self.grid] + ([self.proxy] if self.proxy is not None else [])

    def header(self) -> tuple[str, ...]:
        """The tables' header: an empty corner, then each study's plan (``heuristic-logme`` for the third)."""
        return ("", *COMPARED, *(_plan(s) for s in self.columns[len(COMPARED):]))

    @property
    def eval_regret(self) -> float | None:
        """Evaluation-split headline score (mAP or top-1) of the grid's chosen configuration minus the heuristic's.

        Each study's chosen configuration is its overall best, re-trained: what a user of each
        method would take away (the heuristic's may be unimodal).
        """
        key = _headline(self.heuristic.eval_metrics)
        if key is None or key not in self.grid.eval_metrics:
            return None
        return float(self.grid.eval_metrics[key]) - float(self.heuristic.eval_metrics[key])

    def rows(self) -> list[tuple[str, ...]]:
        """(what, heuristic, grid[, proxy-guided heuristic]) rows for display."""
        h, cols = self.heuristic, self.columns
        key = next((k for k in (_headline(c.eval_metrics) for c in cols[:2]) if k), None) or "map"
        kind = self.kind or "fusion"
        rows = [
            (f"best {kind}", *(_label(c, kind) for c in cols)),
            (f"best {kind}: {key} on {h.selection_split or 'selection split'} (the regret)",
             *(_pct(_score(c, kind)) for c in cols)),
            ("chosen configuration (overall best)", *(c.best_label or "-" for c in cols)),
            (f"chosen: {key} on {h.eval_split or 'evaluation split'}", *(_pct(c.eval_metrics.get(key)) for c in cols)),
        ]
        if self.proxy is not None:
            rows.append(("regret against the grid (points)", _pct(self.regret), "-", _pct(self.proxy_regret)))
        for modality in _KINDS[1:]:  # unimodal bests, apart: the grid of a fusion search trains none
            if modality != kind and any(modality in c.best_by_modality for c in cols):
                rows.append((f"best {modality} alone: {key} on {h.selection_split or 'selection split'}",
                             *(_labelled(c, modality) for c in cols)))
        rows += [
            ("trials (complete)", *(f"{sum(c.trials.values())} ({c.trials.get('complete', 0)})" for c in cols)),
            ("fusion trials", *(str(c.phases.get("fusion", 0)) for c in cols)),
        ]
        if self.proxy is not None:
            rows.append(("proxy-scored configurations (no probe)", *(str(c.phases.get(PROXY_PHASE, 0)) for c in cols)))
        rows += [
            ("probe epochs", *(str(c.probe_epochs) for c in cols)),
            ("search time (s, while trials ran)", *(f"{c.search_seconds:.1f}" for c in cols)),
        ]
        return rows

    def regret_sentence(self) -> str:
        """One sentence: the regret, and what it compares."""
        split = self.heuristic.selection_split or "the selection split"
        if self.kind is None:
            return "No regret: the two studies have no complete configuration of the same kind."
        sentence = (f"Regret of the heuristic: {_pct(self.regret)} points on {split} (the grid's best {self.kind} "
                    f"minus the heuristic's best {self.kind}); on "
                    f"{self.heuristic.eval_split or 'the evaluation split'}, the chosen configurations differ by "
                    f"{_pct(self.eval_regret)} points.")
        if self.proxy is not None:
            sentence += (f" Regret of the proxy-guided heuristic ({_plan(self.proxy)}): {_pct(self.proxy_regret)} "
                         f"points, with {self.proxy.probe_epochs} probe epochs (the heuristic "
                         f"{self.heuristic.probe_epochs}, the grid {self.grid.probe_epochs}).")
        return sentence

    def as_dict(self) -> dict[str, object]:
        out = {"heuristic": self.heuristic.as_dict(), "grid": self.grid.as_dict(),
               "regret": self.regret, "regret_compares": self.kind, "eval_regret": self.eval_regret,
               "trial_ratio": _ratio(sum(self.heuristic.trials.values()), sum(self.grid.trials.values())),
               "epoch_ratio": _ratio(self.heuristic.probe_epochs, self.grid.probe_epochs)}
        if self.proxy is not None:
            out.update({"proxy": self.proxy.as_dict(), "proxy_plan": _plan(self.proxy),
                        "proxy_regret": self.proxy_regret,
                        "proxy_trial_ratio": _ratio(sum(self.proxy.trials.values()), sum(self.grid.trials.values())),
                        "proxy_epoch_ratio": _ratio(self.proxy.probe_epochs, self.grid.probe_epochs)})
        return out

    def markdown(self) -> str:
        header = self.header()
        studies = ", ".join(f"`{c.study_name}` ({name})" for c, name in zip(self.columns, header[1:]))
        lines = ["# Heuristic search vs full grid", "", f"Studies: {studies}.", "",
                 "|" + "|".join(f" {h} " if h else " " for h in header) + "|", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(row) + " |" for row in self.rows()]
        lines += ["", self.regret_sentence()]
        return "\n".join(lines) + "\n"

    def save(self, folder: Path, name: str, storage: optuna.storages.BaseStorage | None = None) -> list[Path]:
        """Write ``compare-<name>.md`` and ``.json`` into ``folder`` and, given a storage, a note on both studies."""
        folder.mkdir(parents=True, exist_ok=True)
        md, js = folder / f"compare-{name}.md", folder / f"compare-{name}.json"
        md.write_text(self.markdown())
        js.write_text(json.dumps(self.as_dict(), indent=1, default=str))
        if storage is not None:
            from optuna_dashboard import save_note

            for summary in self.columns:
                save_note(optuna.load_study(study_name=summary.study_name, storage=storage), self.markdown())
        return [md, js]


def _plan(summary: SearchSummary) -> str:
    """The plan label its study is named by (``heuristic-logme``), else its sampler."""
    role = compare_role(summary.study_name)
    return role[1] if role is not None else summary.sampler


def _score(summary: SearchSummary, kind: str) -> float | None:
    best = summary.best_by_modality.get(kind)
    return None if best is None else float(best["score"])  # type: ignore[arg-type]


def _label(summary: SearchSummary, kind: str) -> str:
    best = summary.best_by_modality.get(kind)
    return "-" if best is None else str(best["label"])


def _labelled(summary: SearchSummary, kind: str) -> str:
    best = summary.best_by_modality.get(kind)
    return "- (not searched alone)" if best is None else f"{_pct(_score(summary, kind))} ({best['label']})"


def _headline(metrics: dict[str, float]) -> str | None:
    return "map" if "map" in metrics else "top1" if "top1" in metrics else None


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * float(value):.2f}"


def _ratio(a: float, b: float) -> float | None:
    return a / b if b else None
