"""The report page in a real browser: headless Chromium renders it without any network."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from tests.report.conftest import Finished

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
#: Chromium flags: headless, no network services of its own, a throw-away profile.
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync", "--hide-scrollbars",
         "--virtual-time-budget=20000")


@pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (Debian: apt-get install chromium)")
def test_the_report_page_renders_its_figures_in_headless_chromium(finished: Finished, tmp_path: Path) -> None:
    from PIL import Image

    shot = tmp_path / "shot.png"
    command = [str(CHROMIUM), *FLAGS, f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={shot}",
               "--window-size=1280,1600", finished.heuristic.html.as_uri()]
    subprocess.run(command, check=True, timeout=300, capture_output=True)
    pixels = np.asarray(Image.open(shot).convert("RGB")).astype(int)
    assert pixels.shape[:2] == (1600, 1280)
    drawn = (pixels < 245).any(axis=2).mean()
    # Text and tables are grey; only plotly's heatmaps and bars give saturated colours.
    coloured = (pixels.max(axis=2) - pixels.min(axis=2) > 60).mean()
    assert drawn > 0.05 and coloured > 0.03, (drawn, coloured)
