from __future__ import annotations

import json
import shutil
from html.parser import HTMLParser
from pathlib import Path
from wsgiref.util import setup_testing_defaults

import numpy as np
import optuna
import pytest
import torch

from difffeat_tune._errors import ConfigError
from difffeat_tune.probe.metrics import METRIC_NAMES, average_precision_per_class
from difffeat_tune.report import Report, write_report
from difffeat_tune.report._features import objective_for
from difffeat_tune.report._study import StudyData
from difffeat_tune.search._heuristic import grid_neighbourhood
from difffeat_tune.store import FeatureStore
from tests.conftest import run_study
from tests.report.conftest import EPOCHS, Finished, LoneStudy


def _api(url: str, path: str) -> dict:
    """GET ``path`` from optuna-dashboard's WSGI app on ``url`` (the requests the browser makes)."""
    from difffeat_tune.dashboard import dashboard_app

    environ: dict = {}
    setup_testing_defaults(environ)
    environ.update(PATH_INFO=path, REQUEST_METHOD="GET")
    status: list[str] = []
    body = b"".join(dashboard_app(url)(environ, lambda s, headers, exc_info=None: status.append(s)))
    assert status[0].startswith("200"), (path, status, body[:200])
    return json.loads(body)


def _detail(url: str, study_name: str) -> dict:
    studies = _api(url, "/api/studies")["study_summaries"]
    study_id = next(s["study_id"] for s in studies if s["study_name"] == study_name)
    return _api(url, f"/api/studies/{study_id}")


def _graphs(url: str, study_name: str) -> dict[str, dict]:
    """The plotly figures saved in a study, by graph id, as the dashboard serves them."""
    return {g["id"]: json.loads(g["graph_object"]) for g in _detail(url, study_name)["plotly_graph_objects"]}


def _figure(report: Report, key: str) -> dict:
    """A figure of the report, from its plotly JSON file."""
    return json.loads((report.out_dir / f"{key}.plotly.json").read_text())


def _content(trace: dict) -> dict:
    """What a trace shows (its placement and styling left out)."""
    return {k: trace.get(k) for k in ("type", "name", "x", "y", "z", "text")}


def _traces(figure: dict, kind: str) -> list[dict]:
    return [t for t in figure["data"] if t["type"] == kind]


def _study(finished: Finished, name: str) -> optuna.Study:
    return optuna.load_study(study_name=name, storage=finished.url)


def _cell(heatmap: dict, x: str, y: str) -> float | None:
    return heatmap["z"][heatmap["y"].index(y)][heatmap["x"].index(x)]


def _outlined(figure: dict, heatmap: dict, colour: str) -> list[tuple[str, str]]:
    """(x, y) labels of the cells outlined in ``colour`` on the heatmap's axes."""
    xref = heatmap.get("xaxis", "x")
    cells = []
    for shape in figure["layout"].get("shapes", []):
        if shape["xref"] == xref and shape["line"]["color"] == colour:
            j, i = round(shape["x0"] + 0.5), round(shape["y0"] + 0.5)
            cells.append((heatmap["x"][j], heatmap["y"][i]))
    return cells


def _tb(tb: tuple[int, int]) -> str:
    return f"t={tb[0]} b={tb[1]}"


def test_landscape_heatmaps_hold_every_unimodal_score_and_mark_the_optimum(finished: Finished) -> None:
    figure = _figure(finished.heuristic, "landscape")
    image, text = _traces(figure, "heatmap")
    study = _study(finished, "s-heuristic")
    for heatmap, modality in ((image, "image"), (text, "text")):
        trials = [t for t in study.trials if t.user_attrs.get("phase") == modality]
        assert len(trials) == {"image": 9, "text": 4}[modality]
        for trial in trials:
            x, y = str(trial.params[f"{modality}_t"]), str(trial.params[f"{modality}_b"])
            assert _cell(heatmap, x, y) == pytest.approx(100 * trial.value)
        best = max(trials, key=lambda t: t.value)
        optimum = (str(best.params[f"{modality}_t"]), str(best.params[f"{modality}_b"]))
        assert _outlined(figure, heatmap, "black") == [optimum]
        assert heatmap["text"][heatmap["y"].index(optimum[1])][heatmap["x"].index(optimum[0])].startswith("\u2605")
    assert image["x"] == ["10", "30", "50"] and image["y"] == ["4", "8", "12"]
    assert text["x"] == ["0", "10"] and text["y"] == ["8", "12"]


def test_fusion_grid_holds_each_candidate_pair_and_marks_the_chosen_one(finished: Finished) -> None:
    figure = _figure(finished.heuristic, "fusion")
    (heatmap,) = _traces(figure, "heatmap")
    study = _study(finished, "s-heuristic")
    for axis, modality in (("y", "image"), ("x", "text")):  # the cross around each modality's optimum
        best = max((t for t in study.trials if t.user_attrs.get("phase") == modality), key=lambda t: t.value)
        optimum = (best.params[f"{modality}_t"], best.params[f"{modality}_b"])
        assert heatmap[axis] == [_tb(tb) for tb in grid_neighbourhood(finished.space.axes(modality), optimum)]
    fusion = [t for t in study.trials if t.user_attrs.get("phase") == "fusion"]
    for trial in fusion:
        x, y = _tb((trial.params["text_t"], trial.params["text_b"])), _tb((trial.params["image_t"], trial.params["image_b"]))
        assert _cell(heatmap, x, y) == pytest.approx(100 * trial.value)
    chosen = max(fusion, key=lambda t: t.value)
    assert _outlined(figure, heatmap, "red") == [(_tb((chosen.params["text_t"], chosen.params["text_b"])),
                                                  _tb((chosen.params["image_t"], chosen.params["image_b"])))]


def test_summary_compares_best_image_text_and_fusion_on_both_splits_in_paper_order(finished: Finished) -> None:
    figure = _figure(finished.heuristic, "summary")
    val, test = _traces(figure, "bar")[:3], _traces(figure, "bar")[3:]
    names = [name for key, name in METRIC_NAMES if key not in ("top1", "top5")]
    assert [b["name"] for b in val] == ["best image", "best text", "best fusion"] == [b["name"] for b in test]
    assert all(b["x"] == names for b in val + test)  # mAP, CP, CR, CF1, OP, OR, OF1
    study = _study(finished, "s-heuristic")
    for bar, phase in zip(val, ("image", "text", "fusion")):
        best = max((t for t in study.trials if t.user_attrs.get("phase") == phase), key=lambda t: t.value)
        keys = [key for key, _ in METRIC_NAMES if key in best.user_attrs]
        assert bar["y"] == pytest.approx([100 * best.user_attrs[k] for k in keys])
    # The report re-trains the best fusion with the recipe the study recorded: it reproduces the search's test scores.
    stored = study.user_attrs["eval_metrics"]
    assert test[2]["y"] == pytest.approx([100 * stored[k] for k, _ in METRIC_NAMES if k in stored], rel=1e-4)
    assert finished.heuristic.scores["best"]["fusion"]["evaluation"]["map"] == pytest.approx(stored["map"], rel=1e-4)
    (table,) = _traces(figure, "table")
    assert table["header"]["values"] == ["", "configuration", "split", *names]
    assert table["cells"]["values"][2] == ["val", "test"] * 3


def test_heuristic_vs_grid_shows_the_grid_landscape_with_the_heuristic_pairs_and_the_costs(finished: Finished) -> None:
    figure = _figure(finished.heuristic, "comparison")
    assert _figure(finished.grid, "comparison") == figure  # both studies' reports show it
    (heatmap,) = _traces(figure, "heatmap")
    assert len(heatmap["y"]) == 9 and len(heatmap["x"]) == 4
    assert all(v is not None for row in heatmap["z"] for v in row)  # every grid pair ran
    grid = [t for t in _study(finished, "s-grid").trials if t.state == optuna.trial.TrialState.COMPLETE]
    for trial in grid:
        x, y = _tb((trial.params["text_t"], trial.params["text_b"])), _tb((trial.params["image_t"], trial.params["image_b"]))
        assert _cell(heatmap, x, y) == pytest.approx(100 * trial.value)
    heuristic = [t for t in _study(finished, "s-heuristic").trials if t.user_attrs.get("phase") == "fusion"]
    assert sorted(_outlined(figure, heatmap, "fuchsia")) == sorted(  # the heuristic's fusion pairs
        (_tb((t.params["text_t"], t.params["text_b"])), _tb((t.params["image_t"], t.params["image_b"]))) for t in heuristic)
    assert len(_outlined(figure, heatmap, "red")) == 1
    best = max(grid, key=lambda t: t.value)
    dashed = [s for s in figure["layout"]["shapes"] if s["line"].get("dash") == "dash"]
    assert [(heatmap["x"][round(s["x0"] + 0.5)], heatmap["y"][round(s["y0"] + 0.5)]) for s in dashed] == [
        (_tb((best.params["text_t"], best.params["text_b"])), _tb((best.params["image_t"], best.params["image_b"])))]
    (table,) = _traces(figure, "table")
    rows = dict(zip(table["cells"]["values"][0], zip(*table["cells"]["values"][1:])))
    assert rows["probe epochs"] == (str((13 + len(heuristic)) * EPOCHS), str(36 * EPOCHS))
    assert rows["fusion trials"] == (str(len(heuristic)), "36")
    assert finished.heuristic.scores["comparison"]["regret"] == pytest.approx(
        best.value - max(t.value for t in _study(finished, "s-heuristic").trials
                         if t.value is not None and t.user_attrs.get("modality") == "fusion"))


def test_training_curves_are_the_best_trials_per_epoch_scores(finished: Finished) -> None:
    figure = _figure(finished.heuristic, "curves")
    lines = _traces(figure, "scatter")
    study = _study(finished, "s-heuristic")
    assert len(lines) == 3
    for line, phase in zip(lines, ("image", "text", "fusion")):
        best = max((t for t in study.trials if t.user_attrs.get("phase") == phase), key=lambda t: t.value)
        assert line["name"] == f"best {phase}: {best.user_attrs['config']}"
        # Without a pruner a trial keeps its per-epoch scores in one attribute (epochs from 1).
        assert not best.intermediate_values and len(best.user_attrs["history"]) == EPOCHS
        assert line["x"] == [float(e) for e in range(1, EPOCHS + 1)]
        assert line["y"] == pytest.approx([100 * v for v in best.user_attrs["history"]])


def test_per_class_ap_is_the_best_configuration_s_and_names_best_and_worst(finished: Finished) -> None:
    spec = _figure(finished.heuristic, "per-class-ap")
    (bars,) = _traces(spec, "bar")
    study = StudyData.load(finished.url, "s-heuristic")
    rep = objective_for(study, "cpu").representation(study.best().config)
    ap = average_precision_per_class(rep.logits, torch.from_numpy(rep.labels.astype(np.int64)), from_logits=True)
    expected = sorted(zip(finished.view.label_names, (100 * ap).tolist()), key=lambda kv: (-kv[1], kv[0]))
    assert bars["y"] == [name for name, _ in expected]
    assert bars["x"] == pytest.approx([v for _, v in expected])
    page = finished.heuristic.html.read_text()
    assert f"Best: {expected[0][0]} ({expected[0][1]:.1f})" in page and f"Worst: {expected[-1][0]}" in page


def test_tsne_colours_label_groups_and_tabulates_cluster_scores_of_the_points_shown(finished: Finished) -> None:
    from sklearn.metrics import calinski_harabasz_score, davies_bouldin_score, silhouette_score

    figure = _figure(finished.heuristic, "tsne")
    (table,) = _traces(figure, "table")
    assert table["cells"]["values"][0] == ["best image", "best text", "best fusion"]
    points = _traces(figure, "scatter")
    panels = sorted({t.get("xaxis", "x") for t in points})
    assert len(panels) == 3
    labels = finished.view.labels("test").values
    counts = (labels == 1).sum(axis=0)
    top = {finished.view.label_names[i] for i in np.argsort(-counts, kind="stable")[:5]}
    clusters = finished.heuristic.scores["clusters"]
    for column, (axis, role) in enumerate(zip(panels, ("image", "text", "fusion"))):
        traces = [t for t in points if t.get("xaxis", "x") == axis]
        assert {t["name"] for t in traces} <= top
        xy = np.array([(x, y) for t in traces for x, y in zip(t["x"], t["y"])])
        groups = [t["name"] for t in traces for _ in t["x"]]
        assert clusters[role] == pytest.approx({"davies_bouldin": davies_bouldin_score(xy, groups),
                                                "calinski_harabasz": calinski_harabasz_score(xy, groups),
                                                "silhouette": silhouette_score(xy, groups)})
        shown = [table["cells"]["values"][k][column] for k in (2, 3, 4)]
        assert shown == [f"{clusters[role]['davies_bouldin']:.3f}", f"{clusters[role]['calinski_harabasz']:.1f}",
                         f"{clusters[role]['silhouette']:.3f}"]
    n_points = {sum(len(t["x"]) for t in points if t.get("xaxis", "x") == axis) for axis in panels}
    assert len(n_points) == 1  # the same rows in every panel


class _Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.external: list[str] = []
        self.scripts = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.scripts += tag == "script"
        for name, value in attrs:
            if name in ("src", "href", "data") and value and value.strip().lower().startswith(("http:", "https:", "//")):
                self.external.append(f"<{tag} {name}={value}>")


def test_the_html_page_is_self_contained_and_holds_every_figure(finished: Finished) -> None:
    page = finished.heuristic.html.read_text()
    parser = _Links()
    parser.feed(page)
    assert parser.external == []
    assert "<link" not in page.lower()
    assert page.count("Plotly.newPlot(") == len(finished.heuristic.figures)
    assert finished.heuristic.figures == ["landscape", "fusion", "summary", "comparison", "curves", "per-class-ap",
                                          "tsne"]
    assert len(page) > 3_000_000  # plotly.js itself is inline


def test_png_and_pdf_of_every_figure_are_written(finished: Finished) -> None:
    for report in (finished.heuristic, finished.grid):
        for key in report.figures:
            png, pdf = report.out_dir / f"{key}.png", report.out_dir / f"{key}.pdf"
            assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5_000
            assert pdf.read_bytes()[:5] == b"%PDF-" and pdf.stat().st_size > 5_000
            assert png in report.files and pdf in report.files


def test_the_dashboard_serves_the_saved_figures_and_the_note(finished: Finished) -> None:
    detail = _detail(finished.url, "s-heuristic")
    graphs = {g["id"]: json.loads(g["graph_object"]) for g in detail["plotly_graph_objects"]}
    assert sorted(graphs) == sorted(f"difffeat-{key}" for key in finished.heuristic.figures)
    for key in finished.heuristic.figures:
        page = _figure(finished.heuristic, key)
        # The dashboard's cards are 450 px high: the same plots, without tables or a fixed height.
        assert [_content(t) for t in graphs[f"difffeat-{key}"]["data"]] == [
            _content(t) for t in page["data"] if t["type"] != "table"]
        assert "height" not in graphs[f"difffeat-{key}"]["layout"]
    body = detail["note"]["body"]
    assert "## Best image, text and fusion (%)" in body and "## Heuristic vs grid" in body
    assert "## Cluster scores of the t-SNE" in body and str(finished.heuristic.html) in body
    fusion = finished.heuristic.scores["best"]["fusion"]
    assert f"| best fusion | {fusion['config']} | test | {100 * fusion['evaluation']['map']:.2f} |" in body


def test_a_new_report_replaces_the_dashboard_figures_of_the_last_one(image_only: LoneStudy, tmp_path: Path) -> None:
    url, first = image_only.url, image_only.report
    storage = optuna.storages.RDBStorage(url)
    study_id = optuna.load_study(study_name="image-only", storage=storage)._study_id
    chunks = sum(k.startswith("dashboard:plot_data:") for k in storage.get_study_system_attrs(study_id))
    write_report(storage, "image-only", tmp_path / "out", features=False)
    graphs = _graphs(url, "image-only")
    assert sorted(graphs) == sorted(f"difffeat-{key}" for key in first.figures)  # replaced, not added
    assert sum(k.startswith("dashboard:plot_data:") for k in storage.get_study_system_attrs(study_id)) <= chunks
    assert graphs["difffeat-tsne"]["data"] == []
    assert "not in the latest report" in graphs["difffeat-tsne"]["layout"]["title"]["text"]
    assert "feature analysis not asked for" in _detail(url, "image-only")["note"]["body"]


def test_a_grid_study_shows_fusion_marginals_and_the_parts_of_its_best_fusion(finished: Finished) -> None:
    figure = _figure(finished.grid, "landscape")
    image, text = _traces(figure, "heatmap")
    grid = [t for t in _study(finished, "s-grid").trials if t.value is not None]
    for (t, b) in [(10, 4), (30, 8), (50, 12)]:
        best = max(x.value for x in grid if (x.params["image_t"], x.params["image_b"]) == (t, b))
        assert _cell(image, str(t), str(b)) == pytest.approx(100 * best)
    page = finished.grid.html.read_text()
    assert "no unimodal trials" in page
    best = finished.grid.scores["best"]
    assert best["image"]["title"] == "image part of the best fusion" and best["image"]["selection"] == {}
    assert best["image"]["evaluation"]["map"] > 0
    fusion = best["fusion"]["params"]
    assert best["image"]["params"] == {"modality": "image", "image_t": fusion["image_t"], "image_b": fusion["image_b"]}


def test_a_one_modality_study_reports_what_it_has_and_says_what_it_lacks(image_only: LoneStudy) -> None:
    report = image_only.report
    assert report.figures == ["landscape", "summary", "curves", "per-class-ap", "tsne"]
    assert "fusion phase" in report.skipped and "heuristic vs grid" in report.skipped
    assert set(report.scores["best"]) == {"image"} and set(report.scores["clusters"]) == {"image"}
    (heatmap,) = _traces(_figure(report, "landscape"), "heatmap")
    assert heatmap["x"] == ["10", "30", "50"]  # the image A(t, b) alone


def test_without_the_features_the_report_skips_their_figures_and_says_why(finished: Finished, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/moved.db"
    features = tmp_path / "features"
    shutil.copytree(finished.view.folder, features / finished.view.folder.name)
    view = FeatureStore(features).view(finished.view.folder.name)
    run_study(view, finished.space, url, "moved", n_trials=9, epochs=EPOCHS, batch_size=32)
    shutil.rmtree(features)
    report = write_report(url, "moved", tmp_path / "out", device="cpu")
    reason = report.skipped["evaluation scores, per-class AP, t-SNE"]
    assert str(features / finished.view.folder.name / "dataset.json") in reason
    assert report.figures == ["landscape", "summary", "curves"]
    stored = optuna.load_study(study_name="moved", storage=url).user_attrs["eval_metrics"]
    assert report.scores["best"]["image"]["evaluation"]["map"] == stored["map"]  # the search's own test score
    assert "Not shown" in report.html.read_text()


def test_an_unknown_study_is_an_error_naming_it(finished: Finished, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no study 'nope'.*s-grid"):
        write_report(finished.url, "nope", tmp_path)


def test_label_groups_are_rows_with_exactly_one_frequent_label() -> None:
    from difffeat_tune.report._features import label_groups

    labels = np.array([[1, 0, 0, 1], [1, 1, 0, 0], [0, 1, 0, 0], [1, 0, 0, 0], [0, 1, 0, 1], [0, 0, 1, 0]])
    rows, names, note = label_groups(labels, ("a", "b", "c", "d"), n_groups=2)
    # a and b are the most frequent; row 1 holds both, rows 5 holds neither.
    assert rows.tolist() == [0, 2, 3, 4] and names == ["a", "b", "a", "b"]
    assert "a (2), b (2)" in note and "all 4" in note
    sampled, _, note = label_groups(labels, ("a", "b", "c", "d"), n_groups=2, max_rows=3, seed=1)
    assert len(sampled) == 3 and set(sampled) <= {0, 2, 3, 4} and "3 of these 4" in note
    none, _, note = label_groups(np.eye(3, dtype=np.int8), ("a", "b", "c"))
    assert none.size == 0 and "skipped" in note


def test_pruned_trials_are_labelled_in_the_landscape_and_left_out_of_the_optimum(finished: Finished,
                                                                                 tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/pruned.db"
    run_study(finished.view, finished.space, url, "pruned", pruner="halving", evaluate_best=False, n_trials=13,
              epochs=EPOCHS, batch_size=32)
    report = write_report(url, "pruned", tmp_path / "out", features=False, dashboard=False)
    figure = _figure(report, "landscape")
    trials = optuna.load_study(study_name="pruned", storage=url).trials
    pruned = [t for t in trials if t.state == optuna.trial.TrialState.PRUNED and "image_t" in t.params]
    assert pruned  # successive halving stops some probes after their first epoch
    (image, _) = _traces(figure, "heatmap")
    for trial in pruned:
        x, y = str(trial.params["image_t"]), str(trial.params["image_b"])
        assert _cell(image, x, y) is None
        assert image["text"][image["y"].index(y)][image["x"].index(x)] == "pruned"
    complete = [t for t in trials if t.value is not None and "image_t" in t.params]
    best = max(complete, key=lambda t: t.value)
    assert _outlined(figure, image, "black") == [(str(best.params["image_t"]), str(best.params["image_b"]))]
