"""Harder physics: chips the calibration must see through, recovered within their stated uncertainties.

``PhysicsChip`` below is a TEST HELPER: an independent numpy implementation of
the chip model of docs/calibration.md with what the emulator does not have or
does differently: a transfer function per activation mode (the linear mode stays
linear, as on a chip whose sigmoid is a separate circuit), per-neuron mismatch
of the transfer slope, noise before a curved transfer, shot noise, an ADC whose
step is about the noise, a chip made of several row tiles (each with its own
gains, offsets and noise, partial sums added), and drift of gain and offset
with time.  It is a plain ``Device`` calibrated through ``chip_from_device``.

Two chips per combination; over the whole set, at least 90% of the estimates
(intensities, transfer slopes and scales, drift; and separately every neuron's gain) must
lie within 2 of their stated standard errors of the truth (expected ~95%).
"""

from __future__ import annotations

import time

import numpy as np
import pytest

from hwloop.calibration import calibrate, chip_from_device
from hwloop.devices import Device
from hwloop.devices.base import check_input
from hwloop.layer import response

TERMS = ("D_A", "D_M", "D_AC", "D_MC", "shot")


class PhysicsChip(Device):
    """TEST HELPER (see the module doc).  ``modes``: activation -> (family, slope, scale)."""

    def __init__(self, n=16, D=(0, 0, 0, 0), shot=0.0, placement="post", modes=None, gain=0.0, offset=0.0,
                 mismatch=0.0, bits=16, out_range=(-8.0, 8.0), tile_rows=None, drift=(0.0, 0.0), eval_s=20e-6):
        self.n, self.D, self.shot, self.placement = n, D, shot, placement
        self.modes = modes or {}
        self.spread = (gain, offset, mismatch)
        self.step = (out_range[1] - out_range[0]) / (2**bits - 1)
        self.out_range, self.tile_rows, self.drift, self.eval_s = out_range, tile_rows or n, drift, eval_s
        self.capabilities = {"idn": "Test,PhysicsChip,1,1", "max_inputs": n, "max_outputs": n, "weight_max": 1.0,
                             "input_range": (-1.0, 1.0), "output_range": out_range, "output_bits": bits,
                             "activations": ("linear", *self.modes)}
        self.programs = 0

    def program(self, layer, *, seed=0):
        rng = np.random.default_rng([seed, 7])
        tiles = -(-layer.n_in // self.tile_rows)
        gain, offset, mismatch = self.spread
        self.g = 1 + gain * rng.standard_normal((tiles, layer.n_out))
        self.o = offset * rng.standard_normal((tiles, layer.n_out))
        self.slope_factor = 1 + mismatch * rng.standard_normal(layer.n_out)
        self.layer, self.t0 = layer, time.monotonic()
        self.programs += 1

    def _noise(self, x, rng):
        D_A, D_M, D_AC, D_MC = self.D
        r, b, n = x.shape
        mult = np.sqrt(D_M) * rng.standard_normal(x.shape) + np.sqrt(D_MC) * rng.standard_normal((r, b, 1))
        y = x * (1 + mult) + np.sqrt(D_A) * rng.standard_normal(x.shape) + np.sqrt(D_AC) * rng.standard_normal((r, b, 1))
        if self.shot:
            y += np.sqrt(self.shot * np.abs(x)) * rng.standard_normal(x.shape)
        return y

    def run(self, x, *, repeats, key=()):
        x = check_input(self, x, repeats).astype(np.float64)
        rng = np.random.default_rng([abs(int(k)) for k in key] or [0])
        x = np.broadcast_to(x, (repeats, *x.shape[1:]))
        if self.drift != (0.0, 0.0):   # a drifting chip takes its time (the manual's 20 us per evaluation)
            time.sleep(x.shape[0] * x.shape[1] * self.eval_s)
        t = time.monotonic() - self.t0      # seconds since programming, as the calibration records them
        w = self.layer.weight.astype(np.float64)
        family, slope, scale = self.modes.get(self.layer.activation, ("linear", 1.0, 1.0))
        g_t, o_t = 1 + self.drift[0] * t, self.drift[1] * t
        y = 0.0
        for k, start in enumerate(range(0, w.shape[1], self.tile_rows)):
            a = x[..., start:start + self.tile_rows] @ w[:, start:start + self.tile_rows].T
            if k == 0:
                a = a + self.layer.bias
            if self.placement == "pre":
                a = self._noise(a, rng)
            mismatch = self.slope_factor if self.layer.activation in self.modes else 1.0   # its own circuit
            h = scale * response(family, slope * mismatch * a)
            part = (self.g[k] * g_t) * h + self.o[k] + o_t
            y = y + (self._noise(part, rng) if self.placement == "post" else part)
        lo, hi = self.out_range
        return (lo + np.round((np.clip(y, lo, hi) - lo) / self.step) * self.step).astype(np.float32)


STEP8 = 8.0 / 255
CHIPS = {
    # noise before a curved transfer (sigmoid and tanh flatter and taller than the model's)
    "pre-curved": dict(D=(2e-4, 5e-4, 5e-5, 1e-4), placement="pre", gain=0.03, offset=0.02,
                       modes={"sigmoid": ("sigmoid", 0.7, 1.3), "tanh": ("tanh", 0.7, 1.3)}),
    # an optical modulator's sin^2 and a saturating detector's 1 - exp(-a) in place of sigmoid and relu
    "sin2-and-saturating": dict(D=(2e-4, 5e-4, 5e-5, 1e-4), gain=0.03, offset=0.02,
                                modes={"sigmoid": ("sin2", 0.25, 1.5), "relu": ("exp_sat", 0.3, 4.0)}),
    "shot": dict(D=(1e-4, 0, 0, 2.5e-5), shot=1e-3, gain=0.03, offset=0.02),
    # noise std 0.7 ADC steps (8 bits over [-4, 4]): Sheppard's correction is off by ~1e-4 relative there
    "near-adc-resolution": dict(D=((0.7 * STEP8) ** 2, 1e-3, 0, 0), bits=8, out_range=(-4.0, 4.0), gain=0.03),
    # 5% per-neuron mismatch of the sigmoid's slope
    "transfer-mismatch": dict(D=(2e-4, 5e-4, 5e-5, 1e-4), gain=0.03, offset=0.02, mismatch=0.05,
                              modes={"sigmoid": ("sigmoid", 0.8, 1.0)}),
    # two row tiles of 8 inputs each: the +w half on one, the -w half on the other (no D_M: per-tile
    # multiplicative noise reads as weight read noise with these probes, see docs/calibration.md)
    "two-tiles": dict(D=(2e-4, 0, 5e-5, 1e-4), gain=0.02, offset=0.02, tile_rows=8),
    # gain and offset drift with time since programming, during the calibration
    "drift": dict(D=(4e-4, 0, 1e-4, 0), gain=0.03, offset=0.02, drift=(0.01, 0.005)),
}


def truth(name: str, device: PhysicsChip) -> dict[str, float]:
    """The intensities the calibration measures at the output (before any unscaling for placement)."""
    spec = CHIPS[name]
    D_A, D_M, D_AC, D_MC = spec["D"]
    t = {"D_A": D_A, "D_M": D_M, "D_AC": D_AC, "D_MC": D_MC, "shot": spec.get("shot", 0.0)}
    if name == "two-tiles":
        # per tile the partial sum carries half the signal (a/2 each way) and its own noise
        g = device.g                      # (tile, neuron) of the level probes' programming
        t.update(D_A=2 * D_A, D_AC=2 * D_AC, D_MC=D_MC * float(np.mean(g, 1) @ np.mean(g, 1) / np.mean(g.sum(0)) ** 2))
    return t


def calibrate_chip(name: str, tmp_path, seed: int | None = None):
    device = PhysicsChip(**CHIPS[name])
    seed = list(CHIPS).index(name) if seed is None else seed    # every chip its own draws
    prof, fit, meas = calibrate(chip_from_device(device), tmp_path / f"{name}.yaml",
                                store=tmp_path / f"{name}.zarr", budget=60_000, seed=seed)
    return device, prof, fit


def zscores(name: str, device: PhysicsChip, prof, fit) -> tuple[dict[str, float], np.ndarray]:
    """z of every estimate with a truth, and (separately) of every neuron's gain."""
    spec, nf, go = CHIPS[name], fit.noise, fit.gain_offset
    z = {}
    t = truth(name, device)
    for k in TERMS:
        if k == "shot" and not nf.shot_fitted_:
            continue
        est = prof.data["uncertainty"]["noise"][k]
        z[k] = (est["estimate"] - t[k] * (_unscale(fit, k) if spec.get("placement") == "pre" else 1)) / est["stderr"]
    gains = np.array([])
    g = device.g[0]
    if name not in ("two-tiles", "drift"):   # there a neuron's gain is a sum over tiles, or moves with time
        gains = (go.gain_ - g) / go.gain_stderr_    # (their errors are correlated by the common-mode noise)
    for mode, (family, slope, scale) in spec.get("modes", {}).items():
        r = fit.transfer.results_[mode]
        assert r["function"] == family, (name, mode, r["note"])
        if family not in ("relu", "linear"):
            z[f"{mode} slope"] = (r["slope"] - mean_curve_slope(device, family, slope, fit.transfer.curves_[mode][0])
                                  ) / r["slope_stderr"]
            # the scale's error includes the neuron sample's (gain spread / sqrt(N)): against the hidden scale
            z[f"{mode} scale"] = (r["scale"] - scale) / r["scale_stderr"]
    if name == "drift":
        z["offset drift"] = (fit.drift.offset_per_s_ - spec["drift"][1]) / fit.drift.offset_per_s_stderr_
        z["gain drift"] = (fit.drift.gain_per_s_ - spec["drift"][0]) / fit.drift.gain_per_s_stderr_
    return z, gains


def mean_curve_slope(device: PhysicsChip, family: str, slope: float, a: np.ndarray) -> float:
    """With per-neuron slope mismatch the neuron-averaged curve is not f at the mean slope (a mean of sigmoids
    is flatter): what a calibration can recover, and what a twin of identical neurons must have, is the slope of
    the best ``scale * f(slope * a)`` through that mean curve (noise-free, from the chip's own neurons)."""
    from scipy.optimize import least_squares

    if np.all(device.slope_factor == 1.0):
        return slope
    mean = np.mean(response(family, slope * device.slope_factor[None, :] * a[:, None]), 1)
    return float(least_squares(lambda p: p[0] * response(family, p[1] * a) - mean, [1.0, slope]).x[1])


def _unscale(fit, k):
    """Noise before the transfer reaches the output scaled by the gains (the profile divides it back)."""
    g = fit.gain_offset.gain_
    return {"D_A": float(np.mean(g**2)), "D_AC": float(np.mean(g)) ** 2, "shot": float(np.mean(np.abs(g)))}.get(k, 1.0)


@pytest.mark.slow
def test_hidden_physics_recovered_within_stated_uncertainties(tmp_path):
    zs, gains = {}, []
    for name, seed in ((name, i + 10 * rep) for rep in range(2) for i, name in enumerate(CHIPS)):
        device, prof, fit = calibrate_chip(name, tmp_path / str(seed), seed)
        z, g = zscores(name, device, prof, fit)
        zs.update({f"{name} (seed {seed}): {k}": v for k, v in z.items()})
        gains.append(g)
        if name == "pre-curved":
            assert fit.placement.identified_ and fit.placement.placement_ == "pre"
        if name == "shot":
            assert fit.noise.shot_fitted_
        if name == "drift":
            assert fit.drift.significant_
    z, g = np.abs(np.array(list(zs.values()))), np.abs(np.concatenate(gains))
    report = {k: round(float(v), 2) for k, v in zs.items()}
    # ~80 estimates (two chips of each kind): at a true 95% rate, fewer than 90% within 2 se happens with
    # probability ~0.02; no single estimate may be off by more than 5 se (a wrong model, not sampling)
    assert np.mean(z <= 2) >= 0.9, report
    assert np.all(z <= 5), report
    # ~160 per-neuron gains, each against the chip's own draw
    assert np.mean(g <= 2) >= 0.9 and np.all(g <= 5), np.round(g, 2)
