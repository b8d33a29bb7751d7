"""Report sections of a noise analysis (``hwloop analyze --report``, ``hwloop demo``): what a physicist checks.

Per layer (numbered from 0, as in the tables): the mean noise variance with its
standard error over samples, the SNR with its interquartile range, the
common-mode and independent parts (negative estimates shown, not dropped), and
the variance against the squared mean, where the binned data are drawn with
their standard errors and the straight-line fit only where it describes them
(not through the hump that a sigmoid's slope makes downstream).
"""

from __future__ import annotations

import numpy as np

from .. import cf
from ..numbers import pm
from ..plotting import OUT2, auto_log, binned, figure_html, layer_axis, legend, new_figure
from ..report import Section, table_html, text_html
from .measured import FIT_NOTE, SUMMARY, UNITS_NOTE, summary_cell

#: the fit line is drawn only when it explains this share of the binned means' variation
MIN_R2 = 0.9


def var_mean_stderr(ds, k: int) -> float:
    """Standard error of layer k's mean variance: the spread over samples of the per-sample mean."""
    var = cf.layer_array(ds, "var", k)
    if var is None:
        return np.nan
    per_sample = np.asarray(var, np.float64).mean(axis=1)
    return float(per_sample.std(ddof=1) / np.sqrt(per_sample.size)) if per_sample.size > 1 else np.nan


def _two_layer_panels(n: int):
    """A figure of two panels whose x axes are the analog layers 0..n-1: (fig, ax1, ax2, x)."""
    fig, axs = new_figure(ncols=2)
    ax1, ax2 = axs[0]
    x = layer_axis(ax1, n)
    layer_axis(ax2, n)
    return fig, ax1, ax2, x


def _depth_section(measured, predicted) -> Section:
    n = measured.sizes["layer"]
    fig, ax1, ax2, x = _two_layer_panels(n)
    se = [var_mean_stderr(measured, k) for k in range(n)]
    ax1.errorbar(x, measured["var_mean"], yerr=se, fmt="o-", capsize=3, label="measured ± s.e.")
    ax2.plot(x, measured["snr_db_median"], "o-", label="measured median")
    ax2.fill_between(x, measured["snr_db_q25"], measured["snr_db_q75"], alpha=0.2,
                     label="measured interquartile range")
    values = [measured["var_mean"].values]
    if predicted is not None:
        ax1.plot(x, predicted["var_mean"], "s--", mfc="none", ms=9, label="predicted")
        ax2.plot(x, predicted["snr_db_median"], "s--", mfc="none", ms=9, label="predicted median")
        values.append(predicted["var_mean"].values)
    auto_log(ax1, np.concatenate(values))
    ax1.set(ylabel=f"mean noise variance [{OUT2}]", title="Noise accumulation")
    ax2.set(ylabel="SNR = 10 log10(mean²/var) [dB]", title="Signal-to-noise ratio")
    legend(ax1)
    legend(ax2)
    names = [str(v) for v in measured["layer_name"].values]
    cols = [c for c in SUMMARY if c in measured]
    rows = [[k, names[k]] + [summary_cell(measured, c, k) for c in cols]
            + ([f"{float(predicted['var_mean'].values[k]):.3e}"] if predicted is not None else [])
            for k in range(n)]
    header = ["#", "layer"] + [SUMMARY[c][0] for c in cols] + (["pred var"] if predicted is not None else [])
    note = (f"{UNITS_NOTE[0].upper()}{UNITS_NOTE[1:]}. Error bars: one standard error of the mean over samples. "
            + FIT_NOTE + ".")
    return Section("Noise and SNR versus depth", figure_html(fig, "variance and SNR per layer", "noise-vs-depth")
                   + table_html(rows, header) + text_html(note, "note"))


def _split_section(measured, predicted) -> Section:
    n = measured.sizes["layer"]
    fig, ax1, ax2, x = _two_layer_panels(n)
    ax1.plot(x, measured["cm_fraction"], "o-", label="measured")
    if predicted is not None:
        ax1.plot(x, predicted["cm_fraction"], "s--", mfc="none", ms=9, label="predicted")
    ax1.axhline(0, color="k", lw=0.8)
    ax1.set(ylabel="common-mode share of the variance [1]", title="Common-mode share")
    for ds, style, who in ((measured, "-", "measured"), (predicted, "--", "predicted")):
        if ds is None:
            continue
        face = "none" if who == "predicted" else None
        ax2.plot(x, ds["ind_var"], "o" + style, color="C0", mfc=face, label=f"independent ({who})")
        ax2.plot(x, ds["cm_var"], "s" + style, color="C1", mfc=face, label=f"common-mode ({who})")
    parts = np.concatenate([measured["ind_var"].values, measured["cm_var"].values])
    if not auto_log(ax2, parts):
        ax2.axhline(0, color="k", lw=0.8)
    ax2.set(ylabel=f"variance [{OUT2}]", title="Independent and common-mode parts")
    legend(ax1)
    legend(ax2)
    negative = [k for k in range(n) if measured["cm_var"].values[k] < 0]
    text = ("Common-mode: the mean covariance between two different neurons of a layer (noise they share); "
            "independent: the mean variance minus that. A negative share means neurons fluctuate against each "
            "other, or an estimate consistent with zero; negative values are plotted, not dropped.")
    if negative:
        text += f" Negative common-mode estimate in layer(s) {', '.join(map(str, negative))}."
    return Section("Common-mode and independent noise",
                   figure_html(fig, "covariance split", "covariance-split") + text_html(text, "note"))


def _fit_describes(xb: np.ndarray, yb: np.ndarray, a: float, b: float) -> float:
    """R² of the line a + b x against the binned means (how much of their variation it explains)."""
    if xb.size < 3 or not (np.isfinite(a) and np.isfinite(b)):
        return np.nan
    ss = float(np.sum((yb - yb.mean()) ** 2))
    return 1.0 - float(np.sum((yb - (a + b * xb)) ** 2)) / ss if ss > 0 else np.nan


def _signal_section(measured, max_scatter: int) -> Section:
    names = [str(v) for v in measured["layer_name"].values]
    n = len(names)
    ncols = min(n, 3)
    nrows = -(-n // ncols)
    fig, axes = new_figure(ncols=ncols, nrows=nrows, width=4.3, height=3.4)
    axes = np.atleast_1d(axes).reshape(nrows, ncols) if n > 1 else np.array([[axes]])
    rng = np.random.default_rng(0)  # subsampling for legibility only
    notes = []
    for k in range(n):
        ax = axes[k // ncols, k % ncols]
        m2 = cf.layer_array(measured, "mean", k).reshape(-1).astype(np.float64) ** 2
        v = cf.layer_array(measured, "var", k).reshape(-1).astype(np.float64)
        idx = rng.choice(m2.size, size=min(m2.size, max_scatter), replace=False)
        ax.scatter(m2[idx], v[idx], s=3, alpha=0.25, color="0.5", label="(sample, neuron)")
        xb, yb, eb = binned(m2, v)
        ax.errorbar(xb, yb, yerr=eb, fmt="o", color="C0", ms=4, capsize=2, label="binned mean ± s.e.")
        a, b = float(measured["fit_additive"].values[k]), float(measured["fit_multiplicative"].values[k])
        r2 = _fit_describes(xb, yb, a, b)
        if a < 0 or b < 0:
            notes.append(f"layer {k}: a negative fitted term (add {a:.2e}, mult {b:.2e}), so no line drawn")
        elif np.isfinite(r2) and r2 >= MIN_R2:
            xs = np.linspace(0, m2.max() if m2.size else 1, 50)
            ax.plot(xs, a + b * xs, "r-", label="fit add + mult·mean²")
        else:
            notes.append(f"layer {k}: not linear in mean² (R² {r2:.2f}), so no line drawn")
        ax.set(title=f"layer {k}: {names[k]}", xlabel=f"mean² [{OUT2}]", ylabel=f"variance [{OUT2}]")
        legend(ax)
    for k in range(n, nrows * ncols):
        axes[k // ncols, k % ncols].axis("off")
    text = ("Grey: every (sample, neuron); blue: means in bins of mean² with one standard error. The fit "
            f"variance = add + mult·mean² is drawn only where both terms are non-negative and it explains at "
            f"least {MIN_R2:.0%} of the binned means' variation (the noise injected at that layer dominates); "
            "downstream, noise propagated through a sigmoid or tanh follows its slope², which no straight line "
            "describes.")
    if notes:
        text += " " + "; ".join(notes) + "."
    return Section("Variance versus signal", figure_html(fig, "variance versus mean squared", "variance-vs-signal")
                   + text_html(text, "note"))


def _accuracy_section(measured) -> Section:
    acc = measured["accuracy"].values
    fig, ax = new_figure(width=6.0)
    pad = max(0.005, 0.1 * float(np.ptp(acc)))          # accuracies live in [0, 1]: no axis beyond it
    span = (max(0.0, float(acc.min()) - pad), min(1.0, float(acc.max()) + pad))
    ax.hist(acc, bins=min(30, max(5, acc.size // 5)), range=span, color="C0", alpha=0.8)
    ax.set_xlim(*span)
    ax.axvline(acc.mean(), color="k", ls="--", label=f"mean {acc.mean():.4f}")
    ax.set(xlabel="accuracy per repetition [1]", ylabel="repetitions [count]", title="Accuracy distribution")
    legend(ax)
    text = pm(acc)
    if "flip_rate_mean" in measured.attrs:
        text += (f"; the noisy prediction differs from the noise-free one in "
                 f"{measured.attrs['flip_rate_mean']:.2%} of (repetition, sample) pairs")
    return Section("Accuracy", figure_html(fig, "accuracy histogram", "accuracy") + text_html(text))


def analysis_sections(measured, predicted=None, max_scatter: int = 4000) -> list[Section]:
    """Sections for a measured analysis Dataset (``hwloop.analysis.analyze_run``), optionally vs ``predict``."""
    sections = [_depth_section(measured, predicted), _split_section(measured, predicted),
                _signal_section(measured, max_scatter)]
    if "accuracy" in measured:
        sections.append(_accuracy_section(measured))
    return sections
