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
        lines = [head]
        for r in self.rows:
            lines.append(f"{r['index']:>2} {r['layer'][:14]:<14} {r['var_chip']:>10.4g} {r['var_twin']:>10.4g} "
                         f"{r['var_ratio']:>7.3f} {r['snr_chip']:>8.2f} {r['snr_twin']:>8.2f} "
                         f"{r['cm_chip']:>7.3f} {r['cm_twin']:>7.3f}  {'yes' if r['pass'] else 'NO'}")
        t = self.tolerances
        lines.append(f"accuracy: chip {100 * self.accuracy_chip:.2f}%, twin {100 * self.accuracy_twin:.2f}% "
                     f"({'ok' if self.accuracy_ok else 'NO'}; tolerance {100 * t.accuracy:g} points)")
        lines.append(f"tolerances: variance {100 * t.variance:g}%, SNR {t.snr_db:g} dB, common-mode share "
                     f"{t.cm_share:g}; verdict: {'PASS' if self.passed else 'FAIL'}")
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
    """HTML report sections: the table and the per-layer comparison plots."""
    from ..report import Section, figure_html, new_figure, table_html, text_html

    k = np.arange(len(v.rows))
    fig, axs = new_figure(ncols=3, width=4.4)
    ax1, ax2, ax3 = axs[0]
    w = 0.38
    for ax, key, label in ((ax1, "var", "mean noise variance"), (ax2, "snr", "median SNR [dB]"),
                           (ax3, "cm", "common-mode share")):
        ax.bar(k - w / 2, [r[f"{key}_chip"] for r in v.rows], w, label="chip")
        ax.bar(k + w / 2, [r[f"{key}_twin"] for r in v.rows], w, label="twin", alpha=0.75)
        ax.set(xlabel="analog layer", ylabel=label, xticks=k)
        ax.grid(alpha=0.3)
        ax.legend()
    ax1.set_yscale("log")
    header = ["#", "layer", "var chip", "var twin", "ratio", "SNR chip", "SNR twin", "cm chip", "cm twin", "pass"]
    rows = [[r["index"], r["layer"], r["var_chip"], r["var_twin"], r["var_ratio"], r["snr_chip"], r["snr_twin"],
             r["cm_chip"], r["cm_twin"], "yes" if r["pass"] else "NO"] for r in v.rows]
    t = v.tolerances
    verdict = (f"Verdict: {'PASS' if v.passed else 'FAIL'}. Accuracy: chip {100 * v.accuracy_chip:.2f}%, twin "
               f"{100 * v.accuracy_twin:.2f}% (tolerance {100 * t.accuracy:g} points). Tolerances per layer: "
               f"variance {100 * t.variance:g}%, SNR {t.snr_db:g} dB, common-mode share {t.cm_share:g}.")
    return [Section("Chip versus calibrated twin", text_html(verdict) + figure_html(fig, "chip vs twin per layer")
                    + table_html(rows, header))]


def write_validation_report(v: Validation, path: str | Path) -> Path:
    from ..report import write_report

    return write_report(path, "hwloop validate: chip versus twin", report_sections(v), provenance=v.provenance)
