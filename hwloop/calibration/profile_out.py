"""From fitted values to a device profile: the same schema as hand-written ones, plus provenance.

Only what the fits show is written: a noise term below ``Z_ZERO`` standard
errors is written as 0 (its estimate and error stay in ``uncertainty``);
transfer slope/scale and drift only when they differ from the ideal by more
than ``z`` standard errors.  Per-neuron gains and offsets go into the
provenance (the schema describes a chip by its spread, and the emulator draws
its neurons from that spread).
"""

from __future__ import annotations

import datetime as _dt
from pathlib import Path

import numpy as np

from .. import __version__
from ..profiles import Profile, dump_profile
from .fit import NOISE_TERMS, CalibrationFit
from .measure import Measurements

#: a fitted deviation from the ideal value is written only beyond this many standard errors
Z_WRITE = 3.0
#: a noise intensity below this many standard errors is written as 0
Z_ZERO = 2.0


def _r(v: float, digits: int = 6) -> float | None:
    """Round to ``digits`` significant digits (a profile is read by people too); None when not finite."""
    v = float(v)
    return float(f"{v:.{digits}g}") if np.isfinite(v) else None


def _rounded(d: dict) -> dict:
    """A mapping with its floats (also in nested mappings, e.g. the competing families) rounded by ``_r``."""
    return {k: _rounded(v) if isinstance(v, dict) else _r(v) if isinstance(v, float) else v for k, v in d.items()}


def _transfer(fit: CalibrationFit, z: float) -> tuple[dict | None, dict]:
    """The transfer section (None when the chip follows the model's activations) and its uncertainties."""
    res = fit.transfer.results_
    go = fit.gain_offset
    unc = {mode: _rounded(r) for mode, r in res.items()}
    unc["linear_mean_gain"] = {"value": _r(go.mean_gain_), "stderr": _r(go.mean_gain_stderr_)}
    odd = [m for m, r in res.items() if r["function"] != m]
    if odd:  # the chip does something else than it was told: write the best family of the first such mode
        r = res[odd[0]]
        return {"function": r["function"], "slope": _r(r["slope"]), "scale": _r(r["scale"])}, unc
    if res:  # every mode is its own family: one common slope and scale (weighted means)
        def wmean(key):
            v = np.array([r[key] for r in res.values()])
            e = np.array([max(r[key + "_stderr"], 1e-12) for r in res.values()])
            w = 1 / e**2
            return float((w * v).sum() / w.sum()), float(1 / np.sqrt(w.sum()))
        (slope, se_sl), (scale, se_sc) = wmean("slope"), wmean("scale")
        for r in res.values():
            if r["function"] in ("relu", "linear"):
                scale, se_sc = 1.0, 0.0   # relu/linear cannot tell scale from slope
    else:  # linear only: an overall gain is all the chip shows
        slope, se_sl, scale, se_sc = 1.0, 0.0, go.mean_gain_, go.mean_gain_stderr_
    if abs(slope - 1) <= z * se_sl and abs(scale - 1) <= z * se_sc:
        return None, unc
    return {"function": "model", "slope": _r(slope), "scale": _r(scale)}, unc


def build_profile(fit: CalibrationFit, meas: Measurements, *, name: str | None = None,
                  store_path: str | None = None, z: float = Z_WRITE) -> dict:
    """The profile mapping for a calibration (validated by ``write_profile``)."""
    chip = meas.plan.chip
    go, adc, dr, rd = fit.gain_offset, fit.adc, fit.drift, fit.read
    serial = chip.idn.split(",")[2].strip() if chip.idn.count(",") >= 2 else "chip"
    prof: dict = {
        "name": name or f"calibrated-{serial}",
        "version": 1,
        "description": f"Calibrated twin of {chip.idn} ({meas.evaluations} evaluations).",
        "provenance": {},
        "noise": _noise(fit),
        "gain_offset": {"gain": _r(go.gain_spread_), "offset": _r(go.offset_rms_)},
    }
    if adc.step_ > 0 or chip.output_range:
        prof["adc"] = {"bits": int(adc.bits_) if adc.bits_ else None, "range": [float(v) for v in adc.range_]}
    if rd.significant_:
        prof["weights"] = {"read_noise": _r(rd.read_noise_), "range": None if rd.relative_ else chip.weight_max}
    transfer, t_unc = _transfer(fit, z)
    if transfer:
        prof["transfer"] = transfer
    if dr.significant_ and dr.n_refs_ >= 3:
        prof["drift"] = {"per": "second", "gain": _r(dr.gain_per_s_), "offset": _r(dr.offset_per_s_)}
    prof["provenance"] = _provenance(fit, meas, store_path)
    prof["uncertainty"] = _uncertainty(fit, t_unc)
    return prof


def _noise(fit: CalibrationFit) -> dict:
    """The noise section: the fitted intensities at the placement found, 0 where not told from zero."""
    nf, go, pl = fit.noise, fit.gain_offset, fit.placement
    noise = {"units": "variance", "placement": pl.placement_}
    # The fits measure the noise at the output, where gains have scaled it.  Noise before the transfer
    # function passes through the neuron's gain (and the transfer's scale * slope): additive terms shrink
    # by the mean squared gain (independent) or the squared mean gain (common mode); the multiplicative
    # ones are relative to the signal and stay.
    unscale = {"D_A": 1.0, "D_M": 1.0, "D_AC": 1.0, "D_MC": 1.0, "shot": 1.0}
    if pl.placement_ == "pre":
        unscale.update(D_A=float(np.mean(go.gain_**2)), D_AC=float(np.mean(go.gain_)) ** 2,
                       shot=float(np.mean(np.abs(go.gain_))))
    for k in NOISE_TERMS:
        v, e = nf.intensities_[k] / unscale[k], nf.stderr_[k] / unscale[k]
        if k == "shot" and not nf.shot_fitted_:
            continue
        # a term the data cannot tell from zero (or a negative estimate) is written as 0
        noise[k] = _r(v) if v > Z_ZERO * e else 0.0
    return noise


def _provenance(fit: CalibrationFit, meas: Measurements, store_path: str | None) -> dict:
    """Who measured what, when, with what plan; the per-neuron gains and offsets."""
    chip, go = meas.plan.chip, fit.gain_offset
    temps = np.array([b.temperature for b in meas.blocks], float)
    return {
        "source": "calibrated",
        "instrument": chip.idn,
        "date": _dt.datetime.now(_dt.timezone.utc).date().isoformat(),
        "calibrated_at": meas.attrs.get("started", ""),
        "temperature_c": _r(float(np.nanmean(temps)), 4) if np.isfinite(temps).any() else None,
        "hwloop_version": __version__,
        "measurements": {"evaluations": meas.evaluations, "blocks": len(meas.blocks),
                         "values": int(sum(b.y.size for b in meas.blocks))},
        "plan": {k: v for k, v in meas.plan.summary().items()},
        "store": store_path,
        "model": "x_i = g_i*scale*f(slope*a) + o_i; y_i = x_i(1 + xi_M,i + xi_MC) + xi_A,i + xi_AC; ADC",
        "per_neuron": {"gain": [_r(v, 5) for v in go.gain_], "offset": [_r(v, 5) for v in go.offset_]},
    }


def _uncertainty(fit: CalibrationFit, transfer: dict) -> dict:
    """Every fitted value's estimate and standard error (and the fits' quality), for people and ``diff``."""
    nf, go, adc, dr, rd, pl = fit.noise, fit.gain_offset, fit.adc, fit.drift, fit.read, fit.placement
    return {
        "convention": "one standard error from sample-size statistics (see docs/calibration.md)",
        "noise": {k: {"estimate": _r(nf.intensities_[k]), "stderr": _r(nf.stderr_[k])} for k in NOISE_TERMS},
        "noise_fit": {"chi2_per_dof": _r(nf.chi2_, 4), "shot_fitted": bool(nf.shot_fitted_),
                      "below_adc_resolution": bool(nf.below_resolution_),
                      "levels": [_r(v) for v in nf.levels_], "skipped_levels": [_r(v) for v in nf.skipped_levels_],
                      "measured_at": "output (estimates above); the profile's values are at its placement"},
        "placement": {"identified": bool(pl.identified_), "chi2_post": _r(pl.chi2_["post"], 4),
                      "chi2_pre": _r(pl.chi2_["pre"], 4)},
        "gain_offset": {"gain": _r(go.gain_spread_stderr_), "offset": _r(go.offset_spread_stderr_),
                        "per_neuron_gain_stderr_max": _r(float(go.gain_stderr_.max())),
                        "per_neuron_offset_stderr_max": _r(float(go.offset_stderr_.max())),
                        "mean_gain": _r(go.mean_gain_), "mean_offset": _r(go.mean_offset_)},
        "adc": {"step": _r(adc.step_), "step_stderr": _r(adc.step_stderr_), "min_seen": _r(adc.min_seen_),
                "max_seen": _r(adc.max_seen_), "clip_fraction": _r(adc.clip_fraction_)},
        "transfer": transfer,
        "weights": {"read_noise": _r(rd.read_noise_), "read_noise_stderr": _r(rd.read_noise_stderr_),
                    "significant": bool(rd.significant_), "full_scale": "the layer's max |W|" if rd.relative_
                    else "the chip's WEIG:RANG?",
                    "D_R_per_weight": {str(w): {"value": _r(v[0]), "stderr": _r(v[1])} for w, v in rd.slopes_.items()}},
        "drift": {k: _r(v) for k, v in dr.rates_.items()} | {"significant": bool(dr.significant_),
                                                              "references": dr.n_refs_},
    }


def write_profile(fit: CalibrationFit, meas: Measurements, path: str | Path, **kw) -> Profile:
    """Write the calibrated profile (validated before anything is written) and return it loaded."""
    header = (f"Calibrated by hwloop {__version__} from {meas.plan.chip.idn}\n"
              "Values are fitted; their standard errors are under 'uncertainty' (docs/calibration.md).")
    return dump_profile(build_profile(fit, meas, **kw), path, header=header)
