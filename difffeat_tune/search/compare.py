"""Heuristic search against the full grid on the same features: cost, best scores and regret."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import optuna

from difffeat_tune.search.runner import SearchSummary

logger = logging.getLogger(__name__)


@dataclass
class Comparison:
    """Two studies side by side. Regret = grid's best minus heuristic's best (>= 0 means the grid won)."""

    heuristic: SearchSummary
    grid: SearchSummary

    @property
    def regret(self) -> float | None:
        """Selection-split regret of the heuristic against the grid's best."""
        h, g = self.heuristic.best_score, self.grid.best_score
        return None if h is None or g is None else g - h

    @property
    def eval_regret(self) -> float | None:
        """Regret on the evaluation split's headline score (mAP or top-1) of the two chosen configurations."""
        key = _headline(self.heuristic.eval_metrics)
        if key is None or key not in self.grid.eval_metrics:
            return None
        return float(self.grid.eval_metrics[key]) - float(self.heuristic.eval_metrics[key])

    def rows(self) -> list[tuple[str, str, str]]:
        """(what, heuristic, grid) rows for display."""
        h, g = self.heuristic, self.grid
        key = _headline(h.eval_metrics) or _headline(g.eval_metrics) or "map"
        return [
            ("best configuration", h.best_label or "-", g.best_label or "-"),
            (f"{key} on {h.selection_split or 'selection split'}", _pct(h.best_score), _pct(g.best_score)),
            (f"{key} on {h.eval_split or 'evaluation split'}", _pct(h.eval_metrics.get(key)), _pct(g.eval_metrics.get(key))),
            ("trials (complete)", f"{sum(h.trials.values())} ({h.trials.get('complete', 0)})",
             f"{sum(g.trials.values())} ({g.trials.get('complete', 0)})"),
            ("fusion trials", str(h.phases.get("fusion", 0)), str(g.phases.get("fusion", 0))),
            ("probe epochs", str(h.probe_epochs), str(g.probe_epochs)),
            ("wall time (s)", f"{h.wall_seconds:.1f}", f"{g.wall_seconds:.1f}"),
        ]

    def as_dict(self) -> dict[str, object]:
        return {"heuristic": self.heuristic.as_dict(), "grid": self.grid.as_dict(),
                "regret": self.regret, "eval_regret": self.eval_regret,
                "trial_ratio": _ratio(sum(self.heuristic.trials.values()), sum(self.grid.trials.values())),
                "epoch_ratio": _ratio(self.heuristic.probe_epochs, self.grid.probe_epochs)}

    def markdown(self) -> str:
        lines = ["# Heuristic search vs full grid", "",
                 f"Studies: `{self.heuristic.study_name}` (heuristic), `{self.grid.study_name}` (grid).", "",
                 "| | heuristic | grid |", "|---|---|---|"]
        lines += [f"| {a} | {b} | {c} |" for a, b, c in self.rows()]
        lines += ["", f"Regret of the heuristic on the selection split: {_pct(self.regret)} points"
                      f" (evaluation split: {_pct(self.eval_regret)} points)."]
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


def _headline(metrics: dict[str, float]) -> str | None:
    return "map" if "map" in metrics else "top1" if "top1" in metrics else None


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * float(value):.2f}"


def _ratio(a: float, b: float) -> float | None:
    return a / b if b else None
