"""The HTML report: one self-contained file whose every plot decodes as a PNG of sensible size.

CI has no Chromium; ``tools/render_report.sh`` renders a report for a look by eye.
"""

from __future__ import annotations

import base64
import io
import re
import shutil
import subprocess
from pathlib import Path

import matplotlib.image as mpimg
import numpy as np
import pytest

from hwloop.analysis import analyze_run, predict
from hwloop.data import load_data
from hwloop.devices import Emulator
from hwloop.graph import load_model
from hwloop.profiles import load_profile
from hwloop.report import Section, analysis_sections, figure_html, new_figure, table_html, write_report
from hwloop.runner import run_model

_IMG = re.compile(r'<img[^>]*src="data:image/png;base64,([A-Za-z0-9+/=]+)"')


def pngs(html: str) -> list[np.ndarray]:
    return [mpimg.imread(io.BytesIO(base64.b64decode(b)), format="png") for b in _IMG.findall(html)]


def assert_self_contained(html: str) -> None:
    """No resource from anywhere else: every src/href is an inline data URI or an in-page anchor."""
    for attr, value in re.findall(r'\b(src|href)\s*=\s*["\']([^"\']*)["\']', html, flags=re.I):
        assert value.startswith("data:") or value.startswith("#"), f"external {attr}: {value[:60]}"
    assert "<script" not in html.lower() and "<link" not in html.lower() and "@import" not in html


@pytest.fixture(scope="module")
def analysed(demo_onnx):
    prof = load_profile("semenova")
    res = run_model(demo_onnx, "digits@40", devices={k: Emulator(prof) for k in range(3)}, repeats=200, seed=2)
    return analyze_run(res), predict(load_model(demo_onnx), prof, load_data("digits@40"))


def test_analysis_report_is_self_contained_with_decodable_plots(analysed, tmp_path):
    measured, predicted = analysed
    path = write_report(tmp_path / "r.html", "demo <run>", analysis_sections(measured, predicted),
                        provenance={"seed": 2, "note": "<b>escaped</b>"})
    html = path.read_text()
    assert_self_contained(html)
    assert "demo &lt;run&gt;" in html and "&lt;b&gt;escaped&lt;/b&gt;" in html
    images = pngs(html)
    assert len(images) == 4                     # depth curves, split, scatter, accuracy
    for img in images:
        h, w = img.shape[:2]
        assert 300 <= w <= 2500 and 250 <= h <= 2500
        assert img[..., :3].std() > 0.05         # not a blank canvas
    titles = re.findall(r"<h2>(.*?)</h2>", html)
    assert titles[:4] == ["Noise and SNR versus depth", "Common-mode and independent noise",
                          "Variance versus signal", "Accuracy"] and titles[-1] == "Provenance"


def test_sections_without_prediction_or_accuracy(analysed, tmp_path):
    measured = analysed[0].drop_vars(["accuracy", "flip_rate"])
    html = write_report(tmp_path / "m.html", "m", analysis_sections(measured)).read_text()
    assert len(pngs(html)) == 3 and "<th>pred var</th>" not in html and "<h2>Accuracy</h2>" not in html


def test_building_blocks_for_other_sections(tmp_path):
    fig, ax = new_figure()
    ax.plot([0, 1], [1, 0])
    sec = Section("Mine", figure_html(fig, alt="a line") + table_html([[1, 0.5, "x<y"]], ["a", "b", "c"]))
    html = write_report(tmp_path / "b.html", "t", [sec]).read_text()
    assert 'alt="a line"' in html and "<td>x&lt;y</td>" in html and "<td>0.5</td>" in html
    (img,) = pngs(html)
    assert 400 <= img.shape[1] <= 700 and 300 <= img.shape[0] <= 500   # 5.2 x 3.6 inches at 110 dpi, trimmed
    assert html.count('type="image/svg+xml"') == 1                      # vector first, the PNG as fallback


def test_write_report_leaves_nothing_half_written(tmp_path):
    path = tmp_path / "r.html"
    path.write_text("old")

    class Boom:
        title = "x"

        @property
        def html(self):
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        write_report(path, "t", [Boom()])
    assert path.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["r.html"]


@pytest.mark.skipif(shutil.which("chromium") is None, reason="chromium not installed (CI); render by hand")
def test_render_script_makes_a_screenshot(analysed, tmp_path):
    html = write_report(tmp_path / "r.html", "r", analysis_sections(*analysed))
    script = Path(__file__).resolve().parents[1] / "tools" / "render_report.sh"
    shot = tmp_path / "shot.png"
    subprocess.run([str(script), str(html), str(shot), "1000x2000"], check=True, timeout=120,
                   capture_output=True)
    img = mpimg.imread(shot)
    assert img.shape[:2] == (2000, 1000) and img[..., :3].std() > 0.05
