"""The pages people read: summary first, provenance folded (no wall of JSON), figures as SVG + PNG and
savable on their own, every page kind rendered in headless Chromium where it is installed."""

from __future__ import annotations

import base64
import re
import shutil
import subprocess
from pathlib import Path

import matplotlib.image as mpimg
import numpy as np
import pytest

from hwloop.cli import main

RENDER = Path(__file__).resolve().parents[1] / "tools" / "render_report.sh"


def check_page(html: str) -> None:
    """Summary before the first section; provenance only inside <details> and as a JSON download."""
    assert html.index('class="summary"') < html.index("<section")
    assert "<pre>" not in html                                   # no dump of nested dicts
    prov = html[html.index('id="provenance"'):]
    assert "<details>" in prov and 'download="provenance.json"' in prov
    blob = re.search(r'download="provenance.json" href="data:application/json;base64,([^"]+)"', html)[1]
    assert base64.b64decode(blob).decode().startswith("{")
    n_svg, n_png = html.count('type="image/svg+xml"'), html.count('src="data:image/png;base64,')
    assert n_svg == n_png >= 1                                    # every figure: vector plus PNG fallback


def render(html_path: Path, tmp_path: Path) -> np.ndarray:
    shot = tmp_path / (html_path.stem + ".png")
    subprocess.run([str(RENDER), str(html_path), str(shot), "1200x2400"], check=True, timeout=120,
                   capture_output=True)
    return mpimg.imread(shot)


@pytest.fixture(scope="module")
def sweep_page(demo_onnx, tmp_path_factory):
    out = tmp_path_factory.mktemp("pages")
    assert main(["walk", str(demo_onnx), "--sigmas", "0.1,1,10", "--data", "digits@60", "--repeats", "2",
                 "--out", str(out / "s.zarr"), "--report", str(out / "walk.html"), "--figures", str(out / "fig")]) == 0
    return out


def test_walk_page_reads_top_down_and_saves_its_figures(sweep_page):
    html = (sweep_page / "walk.html").read_text()
    check_page(html)
    assert "most fragile site" in html and "standard deviation" in html
    saved = sorted(p.name for p in (sweep_page / "fig").iterdir())
    assert [n for n in saved if n.endswith(".svg")] and len(saved) == 2 * html.count('type="image/svg+xml"')
    svg = next((sweep_page / "fig").glob("*walk-accuracy.svg")).read_text()
    assert "test accuracy [1]" in svg and "chance (1/10)" in svg          # labels kept as text (svg.fonttype none)


def test_analysis_page_with_summary(demo_onnx, tmp_path, capsys):
    run = tmp_path / "r.zarr"
    assert main(["run", str(demo_onnx), "--data", "digits@50", "--repeats", "4", "--profile", "semenova",
                 "--out", str(run)]) == 0
    assert main(["analyze", str(run), "--report", str(tmp_path / "a.html")]) == 0
    html = (tmp_path / "a.html").read_text()
    check_page(html)
    summary = html[html.index('class="summary"'):html.index("<section")]
    assert "standard error over 4 repeats" in summary and "semenova" in summary      # accuracy ± s.e.m., devices
    assert "meaningful only in layers where the device injects noise" in html         # the note on add/mult


@pytest.mark.skipif(shutil.which("chromium") is None, reason="chromium not installed (apt-get install chromium)")
def test_pages_render_in_chromium(sweep_page, tmp_path):
    img = render(sweep_page / "walk.html", tmp_path)
    assert img.shape[:2] == (2400, 1200)
    top = img[:400, :, :3]
    assert top.std() > 0.05                                      # the summary box and title are drawn
    rows = np.flatnonzero(img[..., :3].std(axis=(1, 2)) > 0.01)
    assert rows.max() > 900                                      # the figures below it rendered too
