"""The proof: original and mitigated model run on the same devices, analysed and predicted side by side.

Each model is run with the existing runner (``run_model``, repetitions
carried through, multi-execution by ``MultiExec`` devices), analysed with
``analyze_run`` and predicted with ``predict`` on the rewritten file itself
(second-order terms included), so a mitigation is judged by the same
estimators as any run.  The advisor's closed form is shown beside them.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import xarray as xr

from ..analysis.measured import analyze_run
from ..analysis.predict import predict
from ..data import Dataset, load_data
from ..devices.emulator import emulators
from ..graph import load_model
from ..runner import model_input, run_model
from .advise import as_profile, context
from .decompose import evaluate
from .multiexec import wrap_devices
from .onnxedit import save
from .plan import Plan, Strategy
from .transforms import apply_plan, make_plan


@dataclass
class Side:
    """One model of the comparison: its plan, measured and predicted per-layer statistics, advisor figures."""

    label: str
    plan: Plan
    measured: xr.Dataset
    predicted: xr.Dataset
    advisor: dict
    path: Path


def measure(path: Path, plan: Plan, profile, ds: Dataset, repeats: int, seed: int, advisor: dict) -> Side:
    """Run, analyse and predict the model file at ``path`` (executions per layer from its metadata)."""
    model = load_model(path)
    devices = wrap_devices(model, emulators(profile, model.layers))
    res = run_model(model, ds, devices=devices, repeats=repeats, seed=seed)
    return Side(plan.label, plan, analyze_run(res), predict(model, profile, ds, average=plan.average), advisor, path)


def prove(model_path: str | Path, profile, data, strategies: Sequence[Strategy] | Plan, *, repeats: int = 20,
          seed: int = 0, out: str | Path | None = None) -> tuple[Side, Side]:
    """(original, mitigated): ``strategies`` combined into one plan (or a ``Plan``, e.g. an advisor's row),
    both models run on emulators of ``profile``.  The mitigated file is written to ``out`` (default: a
    temporary folder).
    """
    original, sides = prove_each(model_path, profile, data, [strategies], repeats=repeats, seed=seed, out=out)
    return original, sides[0]


def prove_each(model_path: str | Path, profile, data, variants: Sequence[Sequence[Strategy] | Plan], *,
               repeats: int = 20, seed: int = 0, out: str | Path | None = None) -> tuple[Side, list[Side]]:
    """The original and one mitigated model per variant (strategies combined, or a ``Plan``), all run on
    emulators of ``profile`` with the same seed.  The last variant's file is written to ``out``."""
    prof = as_profile(profile)
    ds = data if isinstance(data, Dataset) else load_data(data)
    model = load_model(model_path)
    x = model_input(model, ds)
    ctx = context(model, prof, x)
    plans = [v if isinstance(v, Plan) else make_plan(model, v, noises=ctx.noises, op=ctx.op, terms=ctx.terms)
             for v in variants]
    base = Plan.identity([(l.n_in, l.n_out) for l in model.layers])
    original = measure(Path(model_path), base, prof, ds, repeats, seed, evaluate(ctx.terms, ctx.op, base))
    sides = []
    with tempfile.TemporaryDirectory(prefix="hwloop-mitigate-") as tmp:
        for i, plan in enumerate(plans):
            last = i == len(plans) - 1
            target = Path(out) if out is not None and last else Path(tmp) / f"mitigated-{i}.onnx"
            save(model, apply_plan(model, plan).proto, x, target)
            sides.append(measure(target, plan, prof, ds, repeats, seed, evaluate(ctx.terms, ctx.op, plan)))
    return original, sides


def _out(side: Side, key: str, kind: str = "measured") -> float:
    ds = side.measured if kind == "measured" else side.predicted
    return float(ds[key].values[-1])


def summary(original: Side, mitigated: Side) -> dict[str, float]:
    """Output SNR gain (linear), common-mode variance ratios and accuracy, measured and predicted."""
    out = {}
    for kind in ("measured", "predicted"):
        d = _out(mitigated, "snr_db_median", kind) - _out(original, "snr_db_median", kind)
        out[f"snr_gain_{kind}"] = 10 ** (d / 10)
    out["snr_gain_advisor"] = 10 ** ((mitigated.advisor["snr_db"] - original.advisor["snr_db"]) / 10)
    out["accuracy_original"] = float(original.measured.attrs.get("accuracy_mean", np.nan))
    out["accuracy_mitigated"] = float(mitigated.measured.attrs.get("accuracy_mean", np.nan))
    out["flip_original"] = float(original.measured.attrs.get("flip_rate_mean", np.nan))
    out["flip_mitigated"] = float(mitigated.measured.attrs.get("flip_rate_mean", np.nan))
    return out


def format_proof(original: Side, mitigated: Side) -> str:
    """Per-layer variance and common-mode share, output SNR, accuracy and flips: measured vs predicted."""
    lines = [f"proof: original vs {mitigated.label} ({int(original.measured.attrs.get('repeats', 0))} repeats each)",
             f"  {'layer':<22} {'var meas':>10} {'var pred':>10} {'cm% meas':>8} {'cm% pred':>8}   "
             f"{'var meas':>10} {'var pred':>10} {'cm% meas':>8} {'cm% pred':>8}",
             f"  {'':<22} {'-- original':<40}   {'-- ' + mitigated.label:<40}"]
    for k in range(original.measured.sizes["layer"]):
        cells = []
        for side in (original, mitigated):
            m, p = side.measured, side.predicted
            cells.append(f"{float(m.var_mean[k]):10.3e} {float(p.var_mean[k]):10.3e} "
                         f"{float(m.cm_fraction[k]):8.1%} {float(p.cm_fraction[k]):8.1%}")
        lines.append(f"  {k:>2} {str(original.predicted.layer_name.values[k]):<19} {cells[0]}   {cells[1]}")
    s = summary(original, mitigated)
    lines += [f"output SNR (median dB)  original {_out(original, 'snr_db_median'):.2f} measured, "
              f"{_out(original, 'snr_db_median', 'predicted'):.2f} predicted; mitigated "
              f"{_out(mitigated, 'snr_db_median'):.2f} measured, {_out(mitigated, 'snr_db_median', 'predicted'):.2f} "
              "predicted",
              f"output SNR gain        {s['snr_gain_measured']:.3f}x measured, {s['snr_gain_predicted']:.3f}x "
              f"predicted, {s['snr_gain_advisor']:.3f}x advisor",
              f"accuracy               {s['accuracy_original']:.4f} -> {s['accuracy_mitigated']:.4f}",
              f"flip rate              {s['flip_original']:.2%} -> {s['flip_mitigated']:.2%} measured; "
              f"{original.advisor['flip_rate']:.2%} -> {mitigated.advisor['flip_rate']:.2%} advisor",
              "cost                   " + ", ".join(f"{k} {v:.4g}" for k, v in mitigated.plan.cost().items())]
    return "\n".join(lines)
