"""Validation: does a calibrated twin behave like its chip on a real model?

The model runs twice on the same data with the same number of repetitions:
every analog layer on the chip (one ``VisaDevice`` per layer), and every
analog layer on ``Emulator(profile)``.  Both runs go through
``hwloop.analysis.analyze_run``, and per layer the mean noise variance, the
median SNR and the common-mode share are compared, plus the mean accuracy,
against stated tolerances (``Tolerances``).

``validate_terms`` is the check for scheduled runs: a fresh (short)
calibration of the chip, compared term by term with the stored profile
(``hwloop.calibration.diff``): a term passes when it has not changed
significantly.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Mapping

import numpy as np

from ..devices.base import Device
from ..profiles import Profile


@dataclass(frozen=True)
class Tolerances:
    """What "behaves like its chip" means: the twin passes when every check holds."""

    variance: float = 0.05      # |var_twin / var_chip - 1| per layer
    accuracy: float = 0.01      # |acc_twin - acc_chip| (fraction, i.e. 1 percentage point)
    snr_db: float = 1.0         # |SNR_twin - SNR_chip| per layer, dB (median over samples and neurons)
    cm_share: float = 0.05      # |common-mode share twin - chip| per layer (absolute)


@dataclass
class Validation:
    """Per-layer rows (chip vs twin), accuracies, and the verdict."""

    rows: list[dict]
    accuracy_chip: float
    accuracy_twin: float
    tolerances: Tolerances
    provenance: dict = field(default_factory=dict)

    @property
    def accuracy_ok(self) -> bool:
        return abs(self.accuracy_twin - self.accuracy_chip) <= self.tolerances.accuracy

    @property
    def passed(self) -> bool:
        return self.accuracy_ok and all(r["pass"] for r in self.rows)

    def table(self) -> str:
        """The terminal table (one line per layer, then the accuracy and the verdict)."""
        head = f"{'#':>2} {'layer':<14} {'var chip':>10} {'var twin':>10} {'ratio':>7} {'SNR chip':>8} " \
               f"{'SNR twin':>8} {'cm chip':>7} {'cm twin':>7}  ok"
        units = f"{'':>2} {'':<14} {'[a.u.²]':>10} {'[a.u.²]':>10} {'[1]':>7} {'[dB]':>8} {'[dB]':>8} {'[1]':>7} " \
                f"{'[1]':>7}"
        lines = [head, units]
        for r in self.rows:
            lines.append(f"{r['index']:>2} {r['layer'][:14]:<14} {r['var_chip']:>10.4g} {r['var_twin']:>10.4g} "
                         f"{r['var_ratio']:>7.3f} {r['snr_chip']:>8.2f} {r['snr_twin']:>8.2f} "
                         f"{r['cm_chip']:>7.3f} {r['cm_twin']:>7.3f}  {'yes' if r['pass'] else 'NO'}")
        t = self.tolerances
        lines.append(f"accuracy: chip {100 * self.accuracy_chip:.2f}%, twin {100 * self.accuracy_twin:.2f}% "
                     f"({'ok' if self.accuracy_ok else 'NO'}; tolerance {100 * t.accuracy:g} points)")
        lines.append(f"tolerances: variance {100 * t.variance:g}%, SNR {t.snr_db:g} dB, common-mode share "
                     f"{t.cm_share:g}; verdict: {'PASS' if self.passed else 'FAIL'}")
        lines.append("a.u.: the device's output units; var: noise variance, SNR = 10 log10(mean²/var) (median over "
                     "samples and neurons), cm: common-mode share of the variance")
        return "\n".join(lines)


def compare(chip_run, twin_run, tolerances: Tolerances = Tolerances()) -> Validation:
    """Compare two runs of the same model (stores or in-memory results) layer by layer."""
    from ..analysis import analyze_run

    with np.errstate(invalid="ignore", divide="ignore"):  # a noiseless side has SNR = inf; compared as such
        a, b = analyze_run(chip_run), analyze_run(twin_run)
    t = tolerances
    rows = []
    for k in range(a.sizes["layer"]):
        vc, vt = float(a["var_mean"][k]), float(b["var_mean"][k])
        sc, st = float(a["snr_db_median"][k]), float(b["snr_db_median"][k])
        cc, ct = float(a["cm_fraction"][k]), float(b["cm_fraction"][k])
        ratio = vt / vc if vc > 0 else (1.0 if vt == 0 else np.inf)
        ok = {"variance": abs(ratio - 1) <= t.variance,
              "snr": abs(st - sc) <= t.snr_db or (np.isinf(sc) and sc == st),
              "cm": abs(ct - cc) <= t.cm_share or not (np.isfinite(cc) and np.isfinite(ct))}
        rows.append({"index": k, "layer": str(a["layer_name"].values[k]), "var_chip": vc, "var_twin": vt,
                     "var_ratio": ratio, "snr_chip": sc, "snr_twin": st, "cm_chip": cc, "cm_twin": ct,
                     "checks": ok, "pass": all(ok.values())})
    return Validation(rows, float(a.attrs.get("accuracy_mean", np.nan)), float(b.attrs.get("accuracy_mean", np.nan)),
                      t)


def validate(profile: Profile, chip_devices: Mapping[int, Device], model, data, *, repeats: int = 20,
             seed: int = 0, tolerances: Tolerances = Tolerances(), batch_size: int | None = None) -> Validation:
    """Run ``model`` on the chip's devices and on the twin ``Emulator(profile)``; compare (see ``compare``)."""
    from ..data import Dataset, load_data
    from ..graph import Model, load_model
    from ..runner import run_model

    model = model if isinstance(model, Model) else load_model(model)
    ds = data if isinstance(data, Dataset) else load_data(data)
    from ..bench.twin import twin_of

    profile.check_layers(model.layers)
    # the twin runs each layer as its chip does (scaling, tiles, activation on the host or the chip)
    twin_devices = {i: twin_of(d, profile) for i, d in chip_devices.items()}
    chip = run_model(model, ds, devices=dict(chip_devices), repeats=repeats, seed=seed, batch_size=batch_size)
    twin = run_model(model, ds, devices=twin_devices,
                     repeats=repeats, seed=seed, batch_size=batch_size)
    v = compare(chip, twin, tolerances)
    v.provenance = {"profile": profile.describe() | {"text": None}, "repeats": repeats, "seed": seed,
                    "samples": len(ds), "data": ds.name, "tolerances": asdict(tolerances),
                    "chip_devices": [d.describe() for d in chip_devices.values()][:1]}
    return v


def validate_terms(profile: Profile, chip, *, budget: int = 50_000, seed: int = 0, alpha: float | None = None,
                   store: str | Path | None = None):
    """Calibrate ``chip`` (a ``hwloop.calibration.measure.Chip``) again and compare with ``profile`` per term.

    Returns a ``hwloop.calibration.diff.ProfileDiff``: a term fails when it changed significantly
    (family-wise false-alarm rate ``alpha``).  The measurements go to ``store`` (default: a temporary one).
    """
    import tempfile

    from . import calibrate
    from .diff import ALPHA, compare_profiles

    with tempfile.TemporaryDirectory(prefix="hwloop-validate-") as tmp:
        fresh, _, _ = calibrate(chip, Path(tmp) / "fresh.yaml", store=store or Path(tmp) / "fresh.cal.zarr",
                                budget=budget, seed=seed, overwrite=store is None)
    return compare_profiles(profile.data, fresh.data, ALPHA if alpha is None else alpha,
                            labels=(profile.describe().get("name", "profile"), "fresh calibration"))


def report_sections(v: Validation) -> list:
    """HTML report sections: twin against chip per layer, each check inside its tolerance band, and the table."""
    from ..plotting import OUT2, figure_html, layer_axis, legend, new_figure, tolerance_band
    from ..report import Section, table_html, text_html

    t = v.tolerances
    fig, axs = new_figure(ncols=3, width=4.2)
    checks = ((axs[0][0], "variance", [r["var_ratio"] for r in v.rows], 1.0, t.variance,
               "noise variance twin / chip [1]"),
              (axs[0][1], "snr", [r["snr_twin"] - r["snr_chip"] for r in v.rows], 0.0, t.snr_db,
               "SNR twin − chip [dB]"),
              (axs[0][2], "cm", [r["cm_twin"] - r["cm_chip"] for r in v.rows], 0.0, t.cm_share,
               "common-mode share twin − chip [1]"))
    for ax, key, values, center, tol, label in checks:
        x = layer_axis(ax, len(v.rows))
        tolerance_band(ax, center, tol, f"pass: within ±{tol:g}")
        ok = np.array([r["checks"][key] for r in v.rows], bool)
        values = np.asarray(values, np.float64)
        ax.plot(x[ok], values[ok], "o", color="tab:blue", label="check passes")
        ax.plot(x[~ok], values[~ok], "X", color="tab:red", ms=9, label="check fails")
        ax.set(ylabel=label)
        span = max(tol, np.nanmax(np.abs(values[np.isfinite(values)] - center), initial=0))
        off = ~np.isfinite(values)          # infinite or undefined (a noise-free side): shown at the edge
        ax.plot(x[off], np.full(off.sum(), center + 1.45 * span), "^", color="tab:red", mfc="none", ms=9,
                label="off scale (infinite or undefined)")
        ax.set_ylim(center - 1.6 * span, center + 1.6 * span)
        legend(ax)
    header = ["#", "layer", f"var chip [{OUT2}]", f"var twin [{OUT2}]", "ratio [1]", "SNR chip [dB]", "SNR twin [dB]",
              "cm chip [1]", "cm twin [1]", "pass"]
    rows = [[r["index"], r["layer"], r["var_chip"], r["var_twin"], r["var_ratio"], r["snr_chip"], r["snr_twin"],
             r["cm_chip"], r["cm_twin"], "yes" if r["pass"] else "NO"] for r in v.rows]
    note = (f"Green bands: where a check passes (variance ratio 1 ± {t.variance:g}, SNR ± {t.snr_db:g} dB, "
            f"common-mode share ± {t.cm_share:g}); a layer passes when all three do. Variances in output units², "
            "SNR = 10 log10(mean²/var) (median over samples and neurons).")
    return [Section("Chip versus calibrated twin", figure_html(fig, "chip vs twin per layer", "validate-layers")
                    + text_html(note, "note") + table_html(rows, header))]


def validation_summary(v: Validation) -> list[tuple[str, str]]:
    """Headline numbers of the validation page."""
    t, p = v.tolerances, v.provenance
    failed = [str(r["index"]) for r in v.rows if not r["pass"]]
    return [("profile", str((p.get("profile") or {}).get("name", "-"))),
            ("data", f"{p.get('data', '-')} ({p.get('samples', '?')} samples), {p.get('repeats', '?')} repetitions"),
            ("accuracy", f"chip {100 * v.accuracy_chip:.2f}%, twin {100 * v.accuracy_twin:.2f}% "
                         f"({'ok' if v.accuracy_ok else 'NOT within'} ± {100 * t.accuracy:g} points)"),
            ("layers", f"{len(v.rows) - len(failed)} of {len(v.rows)} within tolerance"
                       + (f"; failing: {', '.join(failed)}" if failed else ""))]


def write_validation_report(v: Validation, path: str | Path) -> Path:
    from ..report import write_report

    return write_report(path, "hwloop validate: chip versus twin", report_sections(v), provenance=v.provenance,
                        summary=validation_summary(v), verdict=v.passed,
                        verdict_text="the twin reproduces the chip" if v.passed else "the twin differs from the chip")
