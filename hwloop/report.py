"""One self-contained HTML page with inline PNG plots, shared by every part of hwloop.

Other modules build ``Section`` objects (a title and an HTML fragment, usually
``figure_html(fig)`` plus a ``table_html``) and hand them to ``write_report``.
The page embeds every image as a base64 ``data:`` URI and needs no network,
scripts or style sheets from anywhere else, so it can be mailed or archived.

    from hwloop.report import Section, figure_html, table_html, write_report
    fig, ax = new_figure()
    ax.plot(...)
    write_report("report.html", "My run", [Section("Noise", figure_html(fig))],
                 provenance=run.attrs)
"""

from __future__ import annotations

import base64
import datetime as _dt
import html
import io
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import matplotlib

matplotlib.use("Agg")  # headless: no display is ever needed to write a report
import matplotlib.pyplot as plt  # noqa: E402

from .files import atomic_path  # noqa: E402


@dataclass
class Section:
    """One titled block of the page; ``html`` is a trusted fragment built with the helpers below."""

    title: str
    html: str


def new_figure(ncols: int = 1, nrows: int = 1, width: float = 6.4, height: float = 4.0):
    """A matplotlib figure sized for the report (``width`` x ``height`` inches per panel)."""
    fig, axes = plt.subplots(nrows, ncols, figsize=(width * ncols, height * nrows), squeeze=False)
    return fig, (axes[0, 0] if nrows == ncols == 1 else axes)


def figure_png(fig, dpi: int = 100) -> str:
    """Render ``fig`` to PNG and return it base64-encoded; the figure is closed afterwards."""
    buf = io.BytesIO()
    try:
        fig.tight_layout()
        fig.savefig(buf, format="png", dpi=dpi)
    finally:
        plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def figure_html(fig, alt: str = "plot", dpi: int = 100) -> str:
    """An ``<img>`` tag carrying ``fig`` inline (see ``figure_png``)."""
    return (f'<img alt="{html.escape(alt)}" '
            f'src="data:image/png;base64,{figure_png(fig, dpi)}">')


def table_html(rows: Iterable[Sequence[Any]], header: Sequence[str], fmt: str = "{:.4g}") -> str:
    """A plain HTML table; floats are formatted with ``fmt``, everything else with ``str``."""
    def cell(v: Any) -> str:
        if isinstance(v, float):
            return html.escape(fmt.format(v))
        return html.escape(str(v))

    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{cell(v)}</td>" for v in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def text_html(text: str) -> str:
    """A paragraph of plain text (escaped)."""
    return f"<p>{html.escape(text)}</p>"


_STYLE = """
body{font-family:sans-serif;max-width:1100px;margin:1em auto;padding:0 1em;color:#222}
h1{font-size:1.6em}h2{font-size:1.25em;border-bottom:1px solid #ccc;padding-top:.6em}
table{border-collapse:collapse;margin:.5em 0;font-size:.9em}
th,td{border:1px solid #ccc;padding:2px 8px;text-align:right}th{background:#f2f2f2}
img{max-width:100%;height:auto;display:block;margin:.5em 0}
pre{background:#f7f7f7;padding:.5em;overflow-x:auto;font-size:.8em}
"""


def render_html(title: str, sections: Sequence[Section], provenance: dict | None = None) -> str:
    """The whole page as a string (``write_report`` writes it)."""
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
        f"<p>written {_dt.datetime.now(_dt.timezone.utc).strftime('%Y-%m-%d %H:%M:%S UTC')}</p>",
    ]
    for s in sections:
        parts.append(f"<section><h2>{html.escape(s.title)}</h2>{s.html}</section>")
    if provenance:
        text = json.dumps(provenance, indent=1, sort_keys=True, default=str)
        parts.append(f"<section><h2>Provenance</h2><pre>{html.escape(text)}</pre></section>")
    parts.append("</body></html>")
    return "\n".join(parts)


def write_report(path: str | os.PathLike, title: str, sections: Sequence[Section],
                 provenance: dict | None = None) -> Path:
    """Write the page atomically (temporary file, then rename), so no half-written report is left."""
    path = Path(path)
    text = render_html(title, sections, provenance)
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return path


# ---------------------------------------------------------------------------
# Sections for the noise-accumulation analysis (``hwloop analyze --report``)
# ---------------------------------------------------------------------------


def analysis_sections(measured, predicted=None, max_scatter: int = 4000) -> list[Section]:
    """Sections for a measured analysis Dataset (``hwloop.analysis.analyze_run``), optionally vs ``predict``."""
    import numpy as np

    from .analysis.measured import SUMMARY

    depth = np.arange(1, measured.sizes["layer"] + 1)
    names = [str(n) for n in measured["layer_name"].values]
    sections = []

    fig, axs = new_figure(ncols=2, width=5.5)
    ax1, ax2 = axs[0]
    ax1.semilogy(depth, measured["var_mean"], "o-", ms=8, label="measured")
    ax2.plot(depth, measured["snr_db_median"], "o-", ms=8, label="measured (median)")
    ax2.fill_between(depth, measured["snr_db_q25"], measured["snr_db_q75"], alpha=0.25, label="measured q25-q75")
    if predicted is not None:
        ax1.semilogy(depth, predicted["var_mean"], "s--", mfc="none", ms=10, label="predicted")
        ax2.plot(depth, predicted["snr_db_median"], "s--", mfc="none", ms=10, label="predicted (median)")
    ax1.set(xlabel="layer (depth)", ylabel="mean noise variance", title="Noise accumulation")
    ax2.set(xlabel="layer (depth)", ylabel="SNR [dB]", title="Signal-to-noise ratio")
    for ax in (ax1, ax2):
        ax.set_xticks(depth)
        ax.grid(alpha=0.3)
        ax.legend()
    cols = [c for c in SUMMARY if c in measured]
    rows = [[k, names[k]] + [SUMMARY[c][1].format(float(measured[c].values[k])) for c in cols]
            + ([f"{float(predicted['var_mean'].values[k]):.3e}"] if predicted is not None else [])
            for k in range(len(names))]
    header = ["#", "layer"] + [SUMMARY[c][0] for c in cols] + (["pred var"] if predicted is not None else [])
    sections.append(Section("Noise and SNR versus depth",
                            figure_html(fig, "variance and SNR per layer") + table_html(rows, header)))

    fig, axs = new_figure(ncols=2, width=5.5)
    ax1, ax2 = axs[0]
    w = 0.38
    ax1.bar(depth - w / 2, measured["cm_fraction"], w, label="measured")
    if predicted is not None:
        ax1.bar(depth + w / 2, predicted["cm_fraction"], w, label="predicted", alpha=0.7)
    ax1.axhline(0, color="k", lw=0.8)
    ax1.set(xlabel="layer (depth)", ylabel="common-mode share of the variance",
            title="Common-mode share (mean off-diagonal / mean diagonal)")
    for ds, style, who in ((measured, "-", "measured"), (predicted, "--", "predicted")):
        if ds is None:
            continue
        ind, cm = ds["ind_var"].values, ds["cm_var"].values
        ax2.semilogy(depth, np.where(ind > 0, ind, np.nan), "o" + style, color="C0", mfc="none" if who == "predicted"
                     else "C0", label=f"independent ({who})")
        ax2.semilogy(depth, np.where(cm > 0, cm, np.nan), "s" + style, color="C1", mfc="none" if who == "predicted"
                     else "C1", label=f"common-mode ({who})")
    ax2.set(xlabel="layer (depth)", ylabel="variance (positive parts)", title="Independent and common-mode parts")
    for ax in (ax1, ax2):
        ax.set_xticks(depth)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    sections.append(Section("Common-mode and independent noise",
                            figure_html(fig, "covariance split")
                            + text_html("Common-mode: the mean covariance between two different neurons of a layer "
                                        "(noise they share); independent: the mean variance minus that. A negative "
                                        "share means neurons fluctuate against each other.")))

    n = len(names)
    ncols = min(n, 3)
    nrows = -(-n // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.2 * ncols, 3.4 * nrows), squeeze=False)  # grid even for 1
    rng = np.random.default_rng(0)  # subsampling for legibility only
    for k in range(n):
        ax = axes[k // ncols, k % ncols]
        m2 = measured[f"mean_{k}"].values.reshape(-1) ** 2
        v = measured[f"var_{k}"].values.reshape(-1)
        idx = rng.choice(m2.size, size=min(m2.size, max_scatter), replace=False)
        ax.scatter(m2[idx], v[idx], s=3, alpha=0.4)
        a, b = float(measured["fit_additive"].values[k]), float(measured["fit_multiplicative"].values[k])
        if np.isfinite(a) and np.isfinite(b):
            xs = np.linspace(0, m2.max() if m2.size else 1, 50)
            ax.plot(xs, a + b * xs, "r-", label=f"{a:.2e} + {b:.2e} m$^2$")
            ax.legend(fontsize=8)
        ax.set(title=f"{k}: {names[k]}", xlabel="mean$^2$", ylabel="variance")
    for k in range(n, nrows * ncols):
        axes[k // ncols, k % ncols].axis("off")
    sections.append(Section("Variance versus signal",
                            figure_html(fig, "variance versus mean squared")
                            + text_html("Each point is one (sample, neuron); the line is the least-squares fit "
                                        "variance = additive + multiplicative * mean^2.")))

    if "accuracy" in measured:
        acc = measured["accuracy"].values
        fig, ax = new_figure(width=6.0)
        ax.hist(acc, bins=min(30, max(5, acc.size // 5)))
        ax.axvline(acc.mean(), color="k", ls="--", label=f"mean {acc.mean():.4f}")
        ax.set(xlabel="accuracy per repetition", ylabel="repetitions", title="Accuracy distribution")
        ax.legend()
        text = f"accuracy {acc.mean():.4f} +- {measured.attrs.get('accuracy_std', 0.0):.4f} over {acc.size} repetitions"
        if "flip_rate_mean" in measured.attrs:
            text += (f"; the noisy prediction differs from the noise-free one in "
                     f"{measured.attrs['flip_rate_mean']:.2%} of (repetition, sample) pairs")
        sections.append(Section("Accuracy", figure_html(fig, "accuracy histogram") + text_html(text)))
    return sections
