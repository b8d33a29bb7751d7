"""hwloop's figures in one house style, fit for a paper and for the HTML reports.

Rules every figure follows (checked by eye in headless Chromium, see tools/render_report.sh):

- units on every axis (``OUT`` and ``OUT2`` name the device's output units);
- error bars or bands from the estimators' standard errors, tolerance bands
  where a pass/fail is shown (``errorband``, ``tolerance_band``);
- legends readable at page width (9 pt, never smaller);
- log axes only where the data span decades (``auto_log``);
- analog layers numbered from 0, as in every table (``layer_axis``).

Figures go into a report as SVG with a PNG fallback (``figure_html``) and,
when ``save_figures(DIR)`` was called (``--figures DIR``), also to DIR as
NAME.svg and NAME.png.
"""

from __future__ import annotations

import base64
import html
import io
import re
from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")  # headless: no display is ever needed to write a report
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

#: axis-label units of the device's outputs and their variances
OUT, OUT2 = "output units", "output units²"

STYLE = {
    "font.size": 10, "axes.titlesize": 11, "axes.labelsize": 10, "legend.fontsize": 9,
    "xtick.labelsize": 9, "ytick.labelsize": 9, "axes.grid": True, "grid.alpha": 0.3,
    "lines.markersize": 6, "legend.framealpha": 0.85, "figure.dpi": 100, "svg.fonttype": "none",
    "axes.spines.top": False, "axes.spines.right": False,
}

_figure_dir: Path | None = None
_saved = 0


def save_figures(folder: str | Path | None) -> None:
    """From now on every figure put in a report is also written to ``folder`` (None: stop)."""
    global _figure_dir
    _figure_dir = None if folder is None else Path(folder)
    if _figure_dir is not None:
        _figure_dir.mkdir(parents=True, exist_ok=True)


def new_figure(ncols: int = 1, nrows: int = 1, width: float = 5.2, height: float = 3.6):
    """A house-style figure (``width`` x ``height`` inches per panel): (fig, ax) or (fig, axes[rows][cols])."""
    with plt.rc_context(STYLE):
        fig, axes = plt.subplots(nrows, ncols, figsize=(width * ncols, height * nrows), squeeze=False)
    for ax in axes.ravel():
        _style(ax)
    return fig, (axes[0, 0] if nrows == ncols == 1 else axes)


def _style(ax) -> None:
    for k in ("top", "right"):
        ax.spines[k].set_visible(False)
    ax.grid(alpha=0.3)
    ax.ticklabel_format(useOffset=False)         # 1.0002, not "+1" above the axis
    ax.tick_params(labelsize=9)
    ax.xaxis.label.set_size(10)
    ax.yaxis.label.set_size(10)
    ax.title.set_size(11)


def layer_axis(ax, n: int, label: str = "analog layer (index from 0)") -> np.ndarray:
    """x ticks 0..n-1 for per-layer plots; returns those positions."""
    x = np.arange(n)
    ax.set_xticks(x)
    ax.set_xlabel(label)
    ax.set_xlim(-0.5, n - 0.5)
    return x


def auto_log(ax, values, axis: str = "y", decades: float = 1.0) -> bool:
    """Log scale on ``axis`` only when the positive finite ``values`` span at least ``decades`` decades."""
    v = np.asarray(values, dtype=np.float64).ravel()
    v = v[np.isfinite(v)]
    if v.size and (v > 0).all() and np.log10(v.max() / v.min()) >= decades:
        from matplotlib.ticker import FuncFormatter, NullFormatter

        (ax.set_yscale if axis == "y" else ax.set_xscale)("log")
        target = ax.yaxis if axis == "y" else ax.xaxis
        plain = FuncFormatter(lambda t, _: f"{t:g}")            # 0.01, 1, 100: no 10^x glyphs
        some = FuncFormatter(lambda t, _: f"{t:g}" if t > 0 and round(t / 10 ** np.floor(np.log10(t))) in (2, 5)
                             else "")                          # minor ticks: only 2 and 5 labelled
        target.set_major_formatter(plain)
        target.set_minor_formatter(some if np.log10(v.max() / v.min()) < 2 else NullFormatter())
        return True
    return False


def errorband(ax, x, mean, stderr, label: str, marker: str = "o", **kw):
    """Points joined by a line with a shaded band of ± one standard error; returns the line."""
    mean, stderr = np.asarray(mean, np.float64), np.asarray(stderr, np.float64)
    (line,) = ax.plot(x, mean, marker=marker, label=label, **kw)
    ok = np.isfinite(stderr)
    if ok.any():
        ax.fill_between(np.asarray(x)[ok], (mean - stderr)[ok], (mean + stderr)[ok], color=line.get_color(),
                        alpha=0.2, lw=0)
    return line


def tolerance_band(ax, center: float, tol: float, label: str = "tolerance") -> None:
    """A shaded horizontal band center ± tol (where a check passes) with its centre line."""
    ax.axhspan(center - tol, center + tol, color="tab:green", alpha=0.15, lw=0, label=label)
    ax.axhline(center, color="tab:green", lw=0.8)


def legend(ax, n_entries: int | None = None, **kw) -> None:
    """A legend at 9 pt; many entries go outside the axes, to the right."""
    handles, labels = ax.get_legend_handles_labels()
    if not handles:
        return
    if (n_entries or len(handles)) > 6:
        ax.legend(fontsize=9, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0, **kw)
    else:
        ax.legend(fontsize=9, **kw)


def _render(fig, fmt: str, dpi: int = 110) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format=fmt, dpi=dpi, bbox_inches="tight")
    return buf.getvalue()


def figure_html(fig, alt: str = "plot", name: str | None = None, caption: str | None = None) -> str:
    """``fig`` inline as SVG with a PNG fallback (a ``<picture>``), then closed; saved too under ``--figures``."""
    try:
        fig.tight_layout()
        svg, png = _render(fig, "svg"), _render(fig, "png")
    finally:
        plt.close(fig)
    if _figure_dir is not None:
        global _saved
        _saved += 1
        stem = f"{_saved:02d}-{_slug(name or alt)}"      # numbered: two runs' figures of one page both stay
        (_figure_dir / f"{stem}.svg").write_bytes(svg)
        (_figure_dir / f"{stem}.png").write_bytes(png)
    b64 = lambda data: base64.b64encode(data).decode("ascii")  # noqa: E731
    cap = f"<figcaption>{html.escape(caption)}</figcaption>" if caption else ""
    return (f'<figure><picture><source type="image/svg+xml" srcset="data:image/svg+xml;base64,{b64(svg)}">'
            f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{b64(png)}"></picture>{cap}</figure>')


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-").lower() or "figure"


def binned(x: np.ndarray, y: np.ndarray, bins: int = 12) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Means of ``y`` in quantile bins of ``x``: (bin mean x, mean y, standard error of mean y)."""
    x, y = np.asarray(x, np.float64).ravel(), np.asarray(y, np.float64).ravel()
    edges = np.unique(np.quantile(x, np.linspace(0, 1, bins + 1)))
    idx = np.clip(np.searchsorted(edges, x, side="right") - 1, 0, max(len(edges) - 2, 0))
    out = []
    for b in range(max(len(edges) - 1, 1)):
        sel = idx == b
        if sel.sum() >= 2:
            out.append((x[sel].mean(), y[sel].mean(), y[sel].std(ddof=1) / np.sqrt(sel.sum())))
    if not out:
        return np.array([]), np.array([]), np.array([])
    a = np.array(out)
    return a[:, 0], a[:, 1], a[:, 2]


def sequence_colors(n: int) -> Sequence:
    """``n`` distinguishable colours (tab10, then viridis for more)."""
    cmap = plt.get_cmap("tab10" if n <= 10 else "viridis")
    return [cmap(i if n <= 10 else i / max(n - 1, 1)) for i in range(n)]
