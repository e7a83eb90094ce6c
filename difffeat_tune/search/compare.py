"""Heuristic search against the full grid on the same features: cost, best scores and regret."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import optuna

from difffeat_tune.search.runner import SearchSummary

logger = logging.getLogger(__name__)


#: The kinds of configuration a regret may compare, in order of preference: fusion pairs when both
#: studies have one, else the one modality a one-modality search has.
_KINDS = ("fusion", "image", "text")


@dataclass
class Comparison:
    """Two studies side by side.

    Regret compares like with like: the grid's best fusion minus the heuristic's best fusion, both
    on the selection split (>= 0 means the grid found a better pair). The heuristic's overall best
    may be a unimodal configuration, which the grid never trains alone: the unimodal bests are
    shown apart, never in the regret. For a one-modality search the regret compares that
    modality's bests.
    """

    heuristic: SearchSummary
    grid: SearchSummary

    @property
    def kind(self) -> str | None:
        """What the regret compares: "fusion", or the modality of a one-modality search (``None``: nothing shared)."""
        return next((k for k in _KINDS if k in self.heuristic.best_by_modality and k in self.grid.best_by_modality),
                    None)

    @property
    def regret(self) -> float | None:
        """Selection-split regret: the grid's best of :attr:`kind` minus the heuristic's."""
        kind = self.kind
        if kind is None:
            return None
        return _score(self.grid, kind) - _score(self.heuristic, kind)  # type: ignore[operator]

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

    def rows(self) -> list[tuple[str, str, str]]:
        """(what, heuristic, grid) rows for display."""
        h, g = self.heuristic, self.grid
        key = _headline(h.eval_metrics) or _headline(g.eval_metrics) or "map"
        kind = self.kind or "fusion"
        rows = [
            (f"best {kind}", _label(h, kind), _label(g, kind)),
            (f"best {kind}: {key} on {h.selection_split or 'selection split'} (the regret)",
             _pct(_score(h, kind)), _pct(_score(g, kind))),
            ("chosen configuration (overall best)", h.best_label or "-", g.best_label or "-"),
            (f"chosen: {key} on {h.eval_split or 'evaluation split'}", _pct(h.eval_metrics.get(key)),
             _pct(g.eval_metrics.get(key))),
        ]
        for modality in _KINDS[1:]:  # unimodal bests, apart: the grid of a fusion search trains none
            if modality != kind and (modality in h.best_by_modality or modality in g.best_by_modality):
                rows.append((f"best {modality} alone: {key} on {h.selection_split or 'selection split'}",
                             _labelled(h, modality), _labelled(g, modality)))
        rows += [
            ("trials (complete)", f"{sum(h.trials.values())} ({h.trials.get('complete', 0)})",
             f"{sum(g.trials.values())} ({g.trials.get('complete', 0)})"),
            ("fusion trials", str(h.phases.get("fusion", 0)), str(g.phases.get("fusion", 0))),
            ("probe epochs", str(h.probe_epochs), str(g.probe_epochs)),
            ("search time (s, while trials ran)", f"{h.search_seconds:.1f}", f"{g.search_seconds:.1f}"),
        ]
        return rows

    def regret_sentence(self) -> str:
        """One sentence: the regret, and what it compares."""
        split = self.heuristic.selection_split or "the selection split"
        if self.kind is None:
            return "No regret: the two studies have no complete configuration of the same kind."
        return (f"Regret of the heuristic: {_pct(self.regret)} points on {split} (the grid's best {self.kind} minus "
                f"the heuristic's best {self.kind}); on {self.heuristic.eval_split or 'the evaluation split'}, the "
                f"chosen configurations differ by {_pct(self.eval_regret)} points.")

    def as_dict(self) -> dict[str, object]:
        return {"heuristic": self.heuristic.as_dict(), "grid": self.grid.as_dict(),
                "regret": self.regret, "regret_compares": self.kind, "eval_regret": self.eval_regret,
                "trial_ratio": _ratio(sum(self.heuristic.trials.values()), sum(self.grid.trials.values())),
                "epoch_ratio": _ratio(self.heuristic.probe_epochs, self.grid.probe_epochs)}

    def markdown(self) -> str:
        lines = ["# Heuristic search vs full grid", "",
                 f"Studies: `{self.heuristic.study_name}` (heuristic), `{self.grid.study_name}` (grid).", "",
                 "| | heuristic | grid |", "|---|---|---|"]
        lines += [f"| {a} | {b} | {c} |" for a, b, c in self.rows()]
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

            for summary in (self.heuristic, self.grid):
                save_note(optuna.load_study(study_name=summary.study_name, storage=storage), self.markdown())
        return [md, js]


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
