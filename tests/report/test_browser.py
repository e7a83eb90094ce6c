"""The report page in a real browser: headless Chromium renders it without any network."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from tests.report.conftest import Finished

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
#: Without Chromium these tests are skipped, except under CI (``CI`` set: `.ci/run` installs it), where they fail.
NO_CHROMIUM = pytest.mark.skipif(CHROMIUM is None and not os.environ.get("CI"),
                                 reason="Chromium is not installed (Debian: apt-get install chromium)")


def _chromium() -> str:
    if CHROMIUM is None:
        pytest.fail("Chromium is not installed: `.ci/install-chromium` installs Debian's chromium")
    return CHROMIUM
#: Chromium flags: headless, no network services of its own, a throw-away profile.
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync", "--hide-scrollbars",
         "--virtual-time-budget=20000")


@NO_CHROMIUM
def test_the_report_page_renders_its_figures_in_headless_chromium(finished: Finished, tmp_path: Path) -> None:
    from PIL import Image

    shot = tmp_path / "shot.png"
    command = [_chromium(), *FLAGS, f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={shot}",
               "--window-size=1280,1600", finished.heuristic.html.as_uri()]
    subprocess.run(command, check=True, timeout=300, capture_output=True)
    pixels = np.asarray(Image.open(shot).convert("RGB")).astype(int)
    assert pixels.shape[:2] == (1600, 1280)
    drawn = (pixels < 245).any(axis=2).mean()
    # Text and tables are grey; only plotly's heatmaps and bars give saturated colours.
    coloured = (pixels.max(axis=2) - pixels.min(axis=2) > 60).mean()
    assert drawn > 0.05 and coloured > 0.03, (drawn, coloured)


@NO_CHROMIUM
def test_the_dashboard_study_page_shows_the_study_and_its_report_note_in_headless_chromium(
        finished: Finished, tmp_path: Path) -> None:
    import threading
    from wsgiref.simple_server import WSGIRequestHandler, make_server

    import optuna

    from difffeat_tune.dashboard import dashboard_app

    class _Quiet(WSGIRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

    study_id = optuna.load_study(study_name="s-heuristic", storage=finished.url)._study_id
    server = make_server("127.0.0.1", 0, dashboard_app(finished.url), handler_class=_Quiet)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    def rendered(path: str) -> str:
        page = f"http://127.0.0.1:{server.server_port}/dashboard/studies/{study_id}{path}"
        command = [_chromium(), *FLAGS, f"--user-data-dir={tmp_path / 'profile'}", "--dump-dom", page]
        return subprocess.run(command, check=True, timeout=300, capture_output=True, text=True).stdout

    try:
        study_page, note_page = rendered(""), rendered("/note")
    finally:
        server.shutdown()
    # Both pages are drawn by the dashboard's JavaScript from the study: the HTML it serves holds none of this.
    assert "A(t, b): probe score per timestep and block" in study_page  # the report's figures, as saved
    assert "Heuristic search vs full grid" in study_page and "Best Trial (number=" in study_page
    assert "Diff-Feat report: s-heuristic" in note_page and "Best image, text and fusion (%)" in note_page
