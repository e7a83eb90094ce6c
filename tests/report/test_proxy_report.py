"""The report of a proxy-guided study: proxy scores beside the trained A(t, b), never taken for them,
and their rank correlation with the trained scores of the plain heuristic of the same compare."""

from __future__ import annotations

import json

import optuna
import pytest
from scipy.stats import kendalltau, spearmanr

from difffeat_tune.report import Report
from difffeat_tune.search._plan import is_proxy
from tests.report.conftest import PROXY_TOP, LoneStudy, Proxied

#: The small test space's unimodal grids (tests/conftest.py's SMALL_SPACE).
N_CONFIGS = {"image": 9, "text": 4}
ORANGE = "darkorange"


def _figure(report: Report, key: str) -> dict:
    return json.loads((report.out_dir / f"{key}.plotly.json").read_text())


def _heatmaps(figure: dict) -> list[dict]:
    return [t for t in figure["data"] if t["type"] == "heatmap"]


def _titles(figure: dict) -> list[str]:
    """The panels' titles (plotly writes subplot titles as annotations, lines joined by <br>)."""
    return [a["text"].replace("<br>", "\n") for a in figure["layout"]["annotations"]]


def _point(trial: optuna.trial.FrozenTrial, modality: str) -> tuple[str, str]:
    return str(trial.params[f"{modality}_t"]), str(trial.params[f"{modality}_b"])


def _cells(heatmap: dict) -> dict[tuple[str, str], float]:
    """The heatmap's non-empty cells by (x, y) label."""
    return {(x, y): v for y, row in zip(heatmap["y"], heatmap["z"]) for x, v in zip(heatmap["x"], row) if v is not None}


def _outlined(figure: dict, heatmap: dict, colour: str) -> set[tuple[str, str]]:
    xref = heatmap.get("xaxis", "x")
    return {(heatmap["x"][round(s["x0"] + 0.5)], heatmap["y"][round(s["y0"] + 0.5)])
            for s in figure["layout"].get("shapes", []) if s["xref"] == xref and s["line"]["color"] == colour}


def _trials(url: str, name: str) -> list[optuna.trial.FrozenTrial]:
    return optuna.load_study(study_name=name, storage=url).get_trials(deepcopy=False)


def _proxy_scores(url: str, name: str, modality: str) -> dict[tuple[str, str], float]:
    return {_point(t, modality): t.value for t in _trials(url, name)
            if is_proxy(t) and t.user_attrs["modality"] == modality}


def _trained(url: str, name: str, modality: str) -> dict[tuple[str, str], float]:
    return {_point(t, modality): t.value for t in _trials(url, name)
            if not is_proxy(t) and t.user_attrs.get("phase") == modality and t.value is not None}


def test_a_proxy_study_s_landscape_shows_proxy_scores_beside_the_trained_ones(proxied: Proxied) -> None:
    figure = _figure(proxied.proxied, "landscape")
    heatmaps = _heatmaps(figure)
    assert len(heatmaps) == 4  # per modality: trained A(t, b), then the proxy's scores
    titles = [t for t in _titles(figure) if "A(t, b)" in t or "proxy score" in t]
    for k, modality in enumerate(("image", "text")):
        trained, proxy = heatmaps[2 * k], heatmaps[2 * k + 1]
        assert titles[2 * k] == f"{modality} A(t, b)" and titles[2 * k + 1].startswith(f"{modality}: logme proxy score")
        # Trained cells: only the proxy_top configurations trained, in percent; proxy cells: every configuration, raw.
        mine = _trained(proxied.url, "s-heuristic-logme", modality)
        assert len(mine) == PROXY_TOP
        assert _cells(trained) == pytest.approx({p: 100 * v for p, v in mine.items()})
        scores = _proxy_scores(proxied.url, "s-heuristic-logme", modality)
        assert len(scores) == N_CONFIGS[modality] and _cells(proxy) == pytest.approx(scores)
        # The trained configurations are outlined on the proxy panel; no optimum is starred there.
        assert _outlined(figure, proxy, ORANGE) == set(mine)
        assert not any("\u2605" in label for row in proxy["text"] for label in row)


def test_proxy_scores_are_ranked_against_the_plain_heuristic_s_trained_scores(proxied: Proxied) -> None:
    correlations = proxied.proxied.scores["proxy_correlations"]
    assert [(c["modality"], c["proxy"], c["against"]) for c in correlations] == [
        ("image", "logme", "s-heuristic"), ("text", "logme", "s-heuristic")]
    titles = _titles(_figure(proxied.proxied, "landscape"))
    caption = proxied.proxied.html.read_text()
    for c in correlations:
        proxy = _proxy_scores(proxied.url, "s-heuristic-logme", c["modality"])
        trained = _trained(proxied.url, "s-heuristic", c["modality"])
        shared = sorted(set(proxy) & set(trained))
        assert c["n"] == len(shared) == N_CONFIGS[c["modality"]]  # the plain heuristic trained every one
        x, y = [proxy[p] for p in shared], [trained[p] for p in shared]
        assert c["kendall_tau"] == pytest.approx(kendalltau(x, y).statistic)
        assert c["spearman_rho"] == pytest.approx(spearmanr(x, y).statistic)
        line = f"Kendall tau {c['kendall_tau']:.2f}, Spearman rho {c['spearman_rho']:.2f} (n={c['n']})"
        assert any(t.endswith(line) for t in titles) and line in caption  # the panel and the caption say it
    assert all((proxied.proxied.out_dir / f"landscape.{ext}").is_file() for ext in ("png", "pdf"))


def test_the_plain_heuristic_s_report_draws_its_companion_s_proxy_scores_against_its_own(proxied: Proxied) -> None:
    figure = _figure(proxied.heuristic, "landscape")
    heatmaps = _heatmaps(figure)
    assert len(heatmaps) == 4
    for k, modality in enumerate(("image", "text")):
        trained = _trained(proxied.url, "s-heuristic", modality)
        assert _cells(heatmaps[2 * k]) == pytest.approx({p: 100 * v for p, v in trained.items()})
        assert _cells(heatmaps[2 * k + 1]) == pytest.approx(_proxy_scores(proxied.url, "s-heuristic-logme", modality))
    # The same correlations as in the proxy study's own report: one rule, whichever report draws them.
    assert proxied.heuristic.scores["proxy_correlations"] == proxied.proxied.scores["proxy_correlations"]
    # The comparison gains the proxy-guided study as a third column, with its regret against the grid.
    comparison = proxied.heuristic.scores["comparison"]
    assert comparison["proxy_plan"] == "heuristic-logme" and comparison["proxy"]["study_name"] == "s-heuristic-logme"
    grid_best = max(t.value for t in _trials(proxied.url, "s-grid") if t.value is not None)
    proxy_best = max(v for t in _trials(proxied.url, "s-heuristic-logme")
                     if not is_proxy(t) and t.user_attrs["phase"] == "fusion" and (v := t.value) is not None)
    assert comparison["proxy_regret"] == pytest.approx(grid_best - proxy_best)
    table = next(t for t in _figure(proxied.heuristic, "comparison")["data"] if t["type"] == "table")
    assert table["header"]["values"] == ["", "heuristic", "grid", "heuristic-logme"]


def test_proxy_trials_are_never_a_best_nor_a_trained_cell(proxied: Proxied) -> None:
    trials = _trials(proxied.url, "s-heuristic-logme")
    best = proxied.proxied.scores["best"]
    trained_labels = {t.user_attrs["config"] for t in trials if not is_proxy(t)}
    assert set(best) == {"image", "text", "fusion"} and all(b["config"] in trained_labels for b in best.values())
    for modality in ("image", "text"):
        mine = _trained(proxied.url, "s-heuristic-logme", modality)
        assert best[modality]["selection"]["map"] == pytest.approx(max(mine.values()))
    page = proxied.proxied.html.read_text()
    assert "scored by the logme proxy, no probe trained" in page  # the facts say what the proxy trials are


def test_a_proxy_study_alone_says_its_few_trained_configurations_give_no_correlation(proxy_alone: LoneStudy) -> None:
    correlations = proxy_alone.report.scores["proxy_correlations"]
    assert [(c["modality"], c["against"], c["n"]) for c in correlations] == [
        ("image", "alone-heuristic-ridge", PROXY_TOP), ("text", "alone-heuristic-ridge", PROXY_TOP)]
    assert all(c["kendall_tau"] is None and c["spearman_rho"] is None and "--proxy-top" in c["why"]
               for c in correlations)
    titles = _titles(_figure(proxy_alone.report, "landscape"))
    assert sum(f"no rank correlation (n={PROXY_TOP})" in t for t in titles) == 2
    assert "n is small" in proxy_alone.report.html.read_text()
    assert "heuristic vs grid" in proxy_alone.report.skipped
