"""The calibration's HTML report: what was measured, what was fitted, how well the model fits.

Plots: the two noise statistics of every linear level (independent part W and
common mode U) against the mean squared signal, with the fitted model; the
per-neuron gains and offsets with their errors; the transfer curve of every
activation mode with its fitted family.  Built with ``hwloop.report``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..numbers import with_error
from .fit import NOISE_TERMS, CalibrationFit


def term_units() -> dict[str, str]:
    """Units of the fitted noise terms: additive ones are variances of the output, multiplicative ones relative."""
    from ..plotting import OUT, OUT2

    return {"D_A": OUT2, "D_AC": OUT2, "D_M": "1", "D_MC": "1", "shot": OUT}


def _noise_section(nf):
    from ..plotting import OUT2, figure_html, legend, new_figure
    from ..report import Section, text_html

    fig, axs = new_figure(ncols=2)
    for ax, key, title in ((axs[0][0], "W", "independent part W"), (axs[0][1], "U", "common mode U")):
        st = sorted(nf.level_stats_, key=lambda d: d["s2"])
        x = np.array([d["s2"] for d in st])
        ax.errorbar(x, [d[key] for d in st], yerr=[d[key + "_err"] for d in st], fmt="o", capsize=3,
                    label="measured ± s.e.")
        ax.plot(x, [d[key + "_fit"] for d in st], "-", label="fitted model")
        ax.set(xlabel=f"mean squared signal s² [{OUT2}]", ylabel=f"variance [{OUT2}]", title=title)
        legend(ax)
    return Section("Noise against signal", figure_html(fig, "noise statistics per level", "cal-noise")
                   + text_html("W: mean variance of the deviations from the neuron average; U: variance of the "
                               "neuron average. Additive terms are the intercepts, multiplicative ones the "
                               "slopes; all intensities are variances D (a standard deviation is sqrt(D)).",
                               "note"))


def _gain_offset_sections(go) -> list:
    from ..plotting import OUT, figure_html, new_figure
    from ..report import Section, csv_text, download_html, table_html, text_html

    fig, axs = new_figure(ncols=2)
    k = np.arange(len(go.gain_))
    for ax, val, err, what, unit in ((axs[0][0], go.gain_, go.gain_stderr_, "gain", "1"),
                                     (axs[0][1], go.offset_, go.offset_stderr_, "offset", OUT)):
        ax.errorbar(k, val, yerr=err, fmt=".", capsize=2, label="fitted ± s.e.")
        ax.axhline(float(np.mean(val)), color="k", lw=0.8, ls="--", label="mean over neurons")
        ax.set(xlabel="neuron (index from 0)", ylabel=f"{what} [{unit}]", title=f"per-neuron {what}")
    axs[0][0].legend(fontsize=9)
    header = ["neuron", "gain", "gain_stderr", "offset", "offset_stderr"]
    rows = [[int(i), float(go.gain_[i]), float(go.gain_stderr_[i]), float(go.offset_[i]),
             float(go.offset_stderr_[i])] for i in k]
    spread = (f"gain spread {with_error(go.gain_spread_, go.gain_spread_stderr_)}, offset spread "
              f"{with_error(go.offset_spread_, go.offset_spread_stderr_)} {OUT} (standard deviations over neurons, "
              "± one standard error).")
    return [Section("Gains and offsets", figure_html(fig, "gains and offsets", "cal-gains") + text_html(spread)),
            Section(f"Per-neuron gains and offsets ({len(k)} neurons)",
                    download_html("gains_offsets.csv", csv_text(rows, header)) + table_html(rows, header),
                    collapsed=True)]


def _transfer_section(tf):
    from ..plotting import OUT, figure_html, new_figure
    from ..report import Section, table_html, text_html
    from .fit import FAMILIES

    fig, axs = new_figure(ncols=len(tf.curves_), width=4.4)
    for ax, (mode, (a, h, err)) in zip(np.atleast_1d(axs).ravel(), tf.curves_.items()):
        r = tf.results_[mode]
        grid = np.linspace(a.min(), a.max(), 200)
        ax.errorbar(a, h, yerr=err, fmt="o", ms=4, capsize=2, label="measured (neuron mean ± s.e.)")
        ax.plot(grid, r["scale"] * FAMILIES[r["function"]](r["slope"] * grid) + r["offset"], "-",
                label=f"{r['function']}: slope {r['slope']:.3g}, scale {r['scale']:.3g}")
        ax.set(xlabel=f"pre-activation a [{OUT}]", ylabel=f"output [{OUT}]", title=f"ACT {mode}")
        ax.legend(fontsize=9)
    rows = [[mode, fam, c["chi2"], c["dof"], c["delta_qaic"], c["slope"], c["scale"], c["status"]]
            for mode, r in tf.results_.items() for fam, c in r.get("candidates", {}).items()]
    notes = "; ".join(f"{mode}: {r['note']}" for mode, r in tf.results_.items() if r.get("note"))
    return Section("Transfer functions", figure_html(fig, "transfer curves", "cal-transfer") + text_html(
        "Every family's fit (quasi-AIC difference to the chosen one; see docs/calibration.md). " + notes, "note")
        + table_html(rows, ["mode", "family", "chi²", "dof", "delta QAIC", "slope", "scale", "status"]))


def fitted_values(fit: CalibrationFit) -> list[tuple[str, float, float, str]]:
    """(quantity, value, standard error, units) of the headline fit: noise intensities, spreads, ADC step."""
    from ..plotting import OUT

    nf, go = fit.noise, fit.gain_offset
    units = term_units()
    rows = [(k, nf.intensities_[k], nf.stderr_[k], units[k]) for k in NOISE_TERMS if k != "shot" or nf.shot_fitted_]
    return rows + [("gain spread", go.gain_spread_, go.gain_spread_stderr_, "1"),
                   ("offset spread", go.offset_spread_, go.offset_spread_stderr_, OUT),
                   ("ADC step", fit.adc.step_, fit.adc.step_stderr_, OUT)]


def calibration_sections(fit: CalibrationFit) -> list:
    from ..report import Section, table_html, text_html

    nf, go, tf = fit.noise, fit.gain_offset, fit.transfer
    rows = [[name, with_error(v, se), unit] for name, v, se, unit in fitted_values(fit)]
    intro = (f"Noise measured at the output; placement identified as '{fit.placement.placement_}'"
             f"{'' if fit.placement.identified_ else ' (by default: no saturating activation to tell)'}; "
             f"GLS chi² per degree of freedom {nf.chi2_:.3g} (errors widened by it when above 1). "
             "Noise intensities D are variances (additive in output units², multiplicative relative).")
    sections = [Section("Fitted values (one standard error)",
                        text_html(intro) + table_html(rows, ["quantity", "value ± standard error", "units"]))]
    if nf.level_stats_:
        sections.append(_noise_section(nf))
    sections += _gain_offset_sections(go)
    if tf.curves_:
        sections.append(_transfer_section(tf))
    return sections


def calibration_summary(fit: CalibrationFit, provenance: dict | None) -> list[tuple[str, str]]:
    """The headline of the calibration page: which chip, how much measured, the noise in one line."""
    p = provenance or {}
    nf = fit.noise
    units = term_units()
    noise = ", ".join(f"{k} {with_error(nf.intensities_[k], nf.stderr_[k])} [{units[k]}]" for k in NOISE_TERMS
                      if k != "shot" or nf.shot_fitted_)
    return [("chip", str(p.get("instrument") or p.get("idn") or "-")),
            ("noise intensities D (variances)", noise),
            ("noise placement", fit.placement.placement_ + ("" if fit.placement.identified_ else " (default)")),
            ("neurons", f"{len(fit.gain_offset.gain_)} (gain spread "
                        f"{with_error(fit.gain_offset.gain_spread_, fit.gain_offset.gain_spread_stderr_)})"),
            ("transfer", ", ".join(f"{m}: {r['function']}" for m, r in fit.transfer.results_.items()) or "-"),
            ("fit quality", f"GLS chi² per degree of freedom {nf.chi2_:.3g}")]


def write_calibration_report(fit: CalibrationFit, path: str | Path, provenance: dict | None = None) -> Path:
    from ..report import write_report

    return write_report(path, "hwloop calibrate", calibration_sections(fit), provenance=provenance,
                        summary=calibration_summary(fit, provenance))
