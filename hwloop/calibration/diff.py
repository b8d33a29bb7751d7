"""Has a chip changed between two calibrations?  Term-by-term comparison with the stated uncertainties.

Every calibrated profile carries each fitted term with one standard error
(``uncertainty``).  Two calibrations of one chip differ in a term by
``z = (new - old) / sqrt(se_old^2 + se_new^2)``; if the chip did not change,
z is about standard normal.  A change is *significant* when |z| exceeds the
Bonferroni threshold for the number of terms compared at the family-wise
false-alarm rate ``alpha`` (default 1%: an unchanged chip raises a false alarm
in at most 1 comparison in 100, whatever the number of terms).  A transfer
function that changed family is always reported as a change.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..errors import HwloopError

#: default family-wise false-alarm rate of ``compare_profiles``
ALPHA = 0.01


@dataclass
class TermChange:
    """One term in both calibrations: values, standard errors, z and whether the change is significant."""

    name: str
    old: float
    old_se: float
    new: float
    new_se: float
    z: float = 0.0
    significant: bool = False
    note: str = ""


@dataclass
class ProfileDiff:
    """The comparison of two calibrations: one row per term, the threshold used and the verdict."""

    rows: list[TermChange]
    threshold: float
    alpha: float
    notes: list[str] = field(default_factory=list)

    @property
    def changed(self) -> list[TermChange]:
        return [r for r in self.rows if r.significant]

    def table(self) -> str:
        lines = [f"{'term':<24} {'old':>12} {'±':>9} {'new':>12} {'±':>9} {'z':>7}  changed  check"]
        for r in self.rows:
            lines.append(f"{r.name:<24} {r.old:>12.5g} {r.old_se:>9.2g} {r.new:>12.5g} {r.new_se:>9.2g} "
                         f"{r.z:>+7.2f}  {'YES' if r.significant else 'no ':<7}  {'FAIL' if r.significant else 'pass'}"
                         f"{'  ' + r.note if r.note else ''}")
        lines += self.notes
        n = len(self.changed)
        lines.append(f"significant: |z| > {self.threshold:.2f} (family-wise false-alarm rate {self.alpha:g} over "
                     f"{len(self.rows)} terms); {n} term{'s' if n != 1 else ''} changed"
                     + (f": {', '.join(r.name for r in self.changed)}" if n else "")
                     + f"; verdict: {'FAIL' if n else 'PASS'}")
        return "\n".join(lines)


def profile_terms(data: dict, label: str = "profile") -> dict[str, tuple[float, float]]:
    """Every fitted term of a calibrated profile mapping with its standard error: name -> (value, stderr)."""
    unc = data.get("uncertainty")
    if not isinstance(unc, dict) or "noise" not in unc:
        raise HwloopError(f"{label}: not a calibrated profile (no 'uncertainty' section with the fitted terms)")
    out: dict[str, tuple[float, float]] = {}
    for k, v in unc["noise"].items():
        out[k] = (float(v["estimate"]), float(v["stderr"]))
    if "shot" in out and not unc.get("noise_fit", {}).get("shot_fitted", True):
        del out["shot"]
    go, ugo = data.get("gain_offset", {}), unc.get("gain_offset", {})
    if go.get("gain") is not None:
        out["gain spread"] = (float(go["gain"]), float(ugo["gain"]))
    mg = unc.get("transfer", {}).get("linear_mean_gain")
    if mg:
        out["mean gain"] = (float(mg["value"]), float(mg["stderr"]))
    adc = unc.get("adc", {})
    if adc.get("step"):
        out["ADC step"] = (float(adc["step"]), float(adc["step_stderr"]))
    w = unc.get("weights", {})
    if w.get("significant"):
        out["read noise"] = (float(w["read_noise"]), float(w["read_noise_stderr"]))
    for mode, r in unc.get("transfer", {}).items():
        if isinstance(r, dict) and "function" in r:
            out[f"{mode}: slope"] = (float(r["slope"]), float(r["slope_stderr"]))
            if r["function"] not in ("relu", "linear"):
                out[f"{mode}: scale"] = (float(r["scale"]), float(r["scale_stderr"]))
    return out


def compare_profiles(old: dict, new: dict, alpha: float = ALPHA, labels=("old", "new")) -> ProfileDiff:
    """Compare two calibrated profile mappings term by term (see the module doc)."""
    from scipy.stats import norm

    if not 0 < alpha < 1:
        raise HwloopError(f"calibrate diff: alpha {alpha}: must be between 0 and 1")
    a, b = profile_terms(old, labels[0]), profile_terms(new, labels[1])
    notes = []
    fa = {m: r["function"] for m, r in old["uncertainty"].get("transfer", {}).items() if "function" in r}
    fb = {m: r["function"] for m, r in new["uncertainty"].get("transfer", {}).items() if "function" in r}
    family_changed = {m for m in fa if m in fb and fa[m] != fb[m]}
    for m in sorted(family_changed):
        notes.append(f"{m}: transfer function changed from {fa[m]} to {fb[m]}")
    names = [k for k in a if k in b and not any(k.startswith(f"{m}:") for m in family_changed)]
    only = sorted(set(a) ^ set(b))
    if only:
        notes.append(f"in one calibration only: {', '.join(only)}")
    threshold = float(norm.isf(alpha / 2 / max(1, len(names))))
    rows = []
    for k in names:
        (va, sa), (vb, sb) = a[k], b[k]
        # profiles round to 6 significant digits: that rounding is the least a difference is known to
        se = float(np.sqrt(sa**2 + sb**2 + (1e-6 * max(abs(va), abs(vb))) ** 2))
        z = (vb - va) / se if se > 0 else (0.0 if vb == va else np.inf * np.sign(vb - va))
        rows.append(TermChange(k, va, sa, vb, sb, float(z), bool(abs(z) > threshold)))
    rows += [TermChange(f"{m}: function", np.nan, np.nan, np.nan, np.nan, np.inf, True, f"{fa[m]} -> {fb[m]}")
             for m in sorted(family_changed)]
    return ProfileDiff(rows, threshold, alpha, notes)


def diff_files(old_path, new_path, alpha: float = ALPHA) -> ProfileDiff:
    """Compare two calibrated profile files (YAML, as written by ``hwloop calibrate``)."""
    from ..profiles import load_profile

    old, new = load_profile(old_path), load_profile(new_path)
    return compare_profiles(old.data, new.data, alpha, labels=(str(old_path), str(new_path)))
