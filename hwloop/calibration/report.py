"""The calibration's HTML report: what was measured, what was fitted, how well the model fits.

Plots: the two noise statistics of every linear level (independent part W and
common mode U) against the mean squared signal, with the fitted model; the
per-neuron gains and offsets with their errors; the transfer curve of every
activation mode with its fitted family.  Built with ``hwloop.report``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .fit import NOISE_TERMS, CalibrationFit


def calibration_sections(fit: CalibrationFit) -> list:
    from ..report import Section, figure_html, new_figure, table_html, text_html

    nf, go, tf = fit.noise, fit.gain_offset, fit.transfer
    sections = []
    rows = [[k, float(nf.intensities_[k]), float(nf.stderr_[k])] for k in NOISE_TERMS
            if k != "shot" or nf.shot_fitted_]
    rows += [["gain spread", go.gain_spread_, go.gain_spread_stderr_],
             ["offset spread", go.offset_spread_, go.offset_spread_stderr_],
             ["ADC step", fit.adc.step_, fit.adc.step_stderr_]]
    intro = (f"Noise measured at the output; placement identified as '{fit.placement.placement_}'"
             f"{'' if fit.placement.identified_ else ' (by default: no saturating activation to tell)'}; "
             f"GLS chi^2 per degree of freedom {nf.chi2_:.3g} (errors widened by it when above 1).")
    sections.append(Section("Fitted values (one standard error)",
                            text_html(intro) + table_html(rows, ["quantity", "value", "stderr"])))
    if nf.level_stats_:
        fig, axs = new_figure(ncols=2, width=5.2)
        for ax, key, title in ((axs[0][0], "W", "independent part W"), (axs[0][1], "U", "common mode U")):
            st = sorted(nf.level_stats_, key=lambda d: d["s2"])
            x = np.array([d["s2"] for d in st])
            ax.errorbar(x, [d[key] for d in st], yerr=[d[key + "_err"] for d in st], fmt="o", label="measured")
            ax.plot(x, [d[key + "_fit"] for d in st], "-", label="fitted model")
            ax.set(xlabel="mean squared signal s^2", ylabel="variance", title=title)
            ax.grid(alpha=0.3)
            ax.legend()
        sections.append(Section("Noise against signal", figure_html(fig, "noise statistics per level")
                                + text_html("W: mean variance of the deviations from the neuron average; U: variance "
                                            "of the neuron average. Additive terms are the intercepts, "
                                            "multiplicative ones the slopes.")))
    fig, axs = new_figure(ncols=2, width=5.2)
    k = np.arange(len(go.gain_))
    axs[0][0].errorbar(k, go.gain_, yerr=go.gain_stderr_, fmt=".")
    axs[0][0].set(xlabel="neuron", ylabel="gain", title="per-neuron gain")
    axs[0][1].errorbar(k, go.offset_, yerr=go.offset_stderr_, fmt=".")
    axs[0][1].set(xlabel="neuron", ylabel="offset", title="per-neuron offset")
    for ax in axs[0]:
        ax.grid(alpha=0.3)
    sections.append(Section("Gains and offsets", figure_html(fig, "gains and offsets")))
    if tf.curves_:
        from .fit import FAMILIES

        fig, axs = new_figure(ncols=len(tf.curves_), width=4.4)
        for ax, (mode, (a, h, err)) in zip(axs[0] if len(tf.curves_) > 1 else [axs], tf.curves_.items()):
            r = tf.results_[mode]
            grid = np.linspace(a.min(), a.max(), 200)
            ax.errorbar(a, h, yerr=err, fmt="o", label="measured (neuron mean)")
            ax.plot(grid, r["scale"] * FAMILIES[r["function"]](r["slope"] * grid) + r["offset"], "-",
                    label=f"{r['function']}: slope {r['slope']:.3g}, scale {r['scale']:.3g}")
            ax.set(xlabel="pre-activation a", ylabel="output", title=f"ACT {mode}")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
        rows = [[mode, fam, c["chi2"], c["dof"], c["delta_qaic"], c["slope"], c["scale"], c["status"]]
                for mode, r in tf.results_.items() for fam, c in r.get("candidates", {}).items()]
        notes = "; ".join(f"{mode}: {r['note']}" for mode, r in tf.results_.items() if r.get("note"))
        sections.append(Section("Transfer functions", figure_html(fig, "transfer curves") + text_html(
            "Every family's fit (quasi-AIC difference to the chosen one; see docs/calibration.md). " + notes)
            + table_html(rows, ["mode", "family", "chi^2", "dof", "delta QAIC", "slope", "scale", "status"])))
    return sections


def write_calibration_report(fit: CalibrationFit, path: str | Path, provenance: dict | None = None) -> Path:
    from ..report import write_report

    return write_report(path, "hwloop calibrate", calibration_sections(fit), provenance=provenance)
