"""How a layer maps onto a chip: tiles, chunks, exact range scaling and where bias and activation run.

One plan, used by the driver (``VisaDevice``) and by the twin that mirrors it
(``hwloop.bench.twin``), so a calibrated twin runs a layer exactly the way the
chip really did.

Range mapping (docs/own-chip.md, "ranges"): values outside the chip's ranges
are divided by a power of two s, which is exact in float32, and the chip's
outputs multiplied by s on the host.  For LINear and RELU layers that is exact
with the activation on the chip (act(z/s)*s = act(z)).  A SIGMoid/TANH layer
whose weights need it runs LINear on the chip with bias and activation applied
on the host: the chip's noise then lands *before* the activation, and its
additive noise and ADC step grow by s.  The plan says so (``placement``) and
the run's provenance records it.  ``strict_ranges`` refuses instead.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np

from ..errors import HwloopError
from ..layer import AnalogLayer

#: activations unchanged by a positive scale: act(z / s) * s == act(z)
HOMOGENEOUS = ("linear", "relu")


@dataclass(frozen=True)
class Tile:
    """A part of the weight matrix that fits the array."""

    rows: slice     # output neurons
    cols: slice     # inputs


class Chunk(NamedTuple):
    """One measurement's share of a run: a block of input rows and of repetitions."""

    rows: slice
    repeats: slice


@dataclass(frozen=True)
class TilePlan:
    """What is programmed for one tile: weights and bias as sent (scaled), the chip's activation."""

    tile: Tile
    weights: np.ndarray
    bias: np.ndarray
    activation: str           # hwloop name of what the chip applies ("linear" when the host does it)


@dataclass(frozen=True)
class LayerPlan:
    """A layer on a chip: its tiles, the weight scale, and whether bias and activation run on the host."""

    tiles: list[TilePlan]
    weight_scale: float
    host: bool
    reason: str               # why the host applies bias and activation ("" when the chip does)
    bias: np.ndarray          # the layer's bias (added on the host when ``host``)
    activation: str           # the layer's activation
    notes: list[str] = field(default_factory=list)

    @property
    def placement(self) -> dict:
        """Provenance: where bias and activation ran and why, and the weight scale."""
        return {"activation": "host" if self.host else "chip", "bias": "host" if self.host else "chip",
                "reason": self.reason, "scale": self.weight_scale, "tiles": len(self.tiles)}


def pow2_at_least(x: float) -> float:
    """Smallest power of two >= x (>= 1): dividing by it is exact in float32."""
    return 1.0 if x <= 1.0 else float(2.0 ** math.ceil(math.log2(x)))


def tiles_for(n_out: int, n_in: int, max_outputs: int, max_inputs: int) -> list[Tile]:
    """Split an (n_out, n_in) layer into array-sized tiles, row blocks outer."""
    return [Tile(slice(o, min(o + max_outputs, n_out)), slice(i, min(i + max_inputs, n_in)))
            for o in range(0, n_out, max_outputs) for i in range(0, n_in, max_inputs)]


def chunks_for(rows: int, k: int, n_out: int, max_batch: int, max_repeats: int,
               max_block_bytes: int) -> list[Chunk]:
    """The measurements of a run: within max_batch, max_repeats and the block size."""
    k_step = min(k, max_repeats)
    b_step = max(1, min(max_batch, max_block_bytes // (4 * k_step * max(n_out, 1))))
    return [Chunk(slice(b, min(b + b_step, rows)), slice(r, min(r + k_step, k)))
            for b in range(0, rows, b_step) for r in range(0, k, k_step)]


def plan_layer(layer: AnalogLayer, limits: dict, *, scale: bool = True, host_activation: bool = False,
               chip: str = "the chip") -> LayerPlan:
    """Tiles, weight scale and placement of ``layer`` on a chip with ``limits``.

    ``limits``: max_inputs, max_outputs, weight_range, bias_range and ``activations`` (hwloop
    names the chip offers).  ``scale`` False (``strict_ranges``) refuses weights or bias out of range.
    """
    act = layer.activation
    tiles = tiles_for(layer.n_out, layer.n_in, limits["max_outputs"], limits["max_inputs"])
    w = np.ascontiguousarray(layer.weight, dtype=np.float32)
    b = np.ascontiguousarray(layer.bias, dtype=np.float32)
    if not (np.all(np.isfinite(w)) and np.all(np.isfinite(b))):
        raise HwloopError(f"layer {layer.name!r}: weights or bias contain NaN or infinity")
    wmax, bmax = limits["weight_range"], limits["bias_range"]
    s_w = pow2_at_least(float(np.abs(w).max(initial=0)) / wmax)
    reason = ("the layer is split into tiles" if len(tiles) > 1
              else f"{chip} has no {act} activation" if act not in limits["activations"]
              else "bias and activation requested on the host" if host_activation
              else f"weights scaled by 1/{s_w:g} and {act} is not scale-invariant" if s_w > 1 and act not in HOMOGENEOUS
              else "")
    host = bool(reason)
    if not host:
        s_w = max(s_w, pow2_at_least(float(np.abs(b).max(initial=0)) / bmax))
    if s_w > 1 and not scale:
        what = "weights" if np.abs(w).max() > wmax else "bias"
        top = float(np.abs(w if what == "weights" else b).max())
        raise HwloopError(
            f"layer {layer.name!r}: {what} reach {top:.4g} but {chip} accepts "
            f"[-{wmax:g}, {wmax if what == 'weights' else bmax:g}] ({'WEIG' if what == 'weights' else 'BIAS'}:RANG?) "
            "and strict_ranges is set (without it they are scaled exactly by a power of two)")
    out = []
    for t in tiles:
        wt = np.ascontiguousarray(w[t.rows, t.cols] / np.float32(s_w))
        bt = np.zeros(wt.shape[0], np.float32) if host else b[t.rows] / np.float32(s_w)
        out.append(TilePlan(t, wt, bt, "linear" if host else act))
    notes = []
    if s_w > 1:
        notes.append(f"layer {layer.name!r}: weights scaled exactly by 1/{s_w:g} to fit {chip} "
                     f"(WEIG:RANG? {wmax:g}); outputs multiplied by {s_w:g} on the host")
    if host and act not in HOMOGENEOUS:
        notes.append(f"layer {layer.name!r}: {act} runs on the host ({reason}); the chip runs linear, so its "
                     "noise lands before the activation")
    return LayerPlan(out, s_w, host, reason, b, act, notes)


def input_scale(xs: np.ndarray, input_range: tuple[float, float], *, scale: bool, homogeneous: bool,
                layer: str, chip: str = "the chip") -> float:
    """The power of two that brings ``xs`` into ``input_range`` (1 when they fit), or HwloopError.

    ``homogeneous``: whether dividing the inputs is exact for the layer as placed on the chip
    (bias and activation on the host, or a linear/relu activation on the chip)."""
    lo, hi = input_range
    x_min, x_max = float(xs.min(initial=0)), float(xs.max(initial=0))
    if lo <= x_min and x_max <= hi:
        return 1.0
    need = max(x_max / hi if x_max > hi else 1.0, x_min / lo if (x_min < lo and lo < 0) else 1.0)
    problem = f"layer {layer!r}: inputs span [{x_min:.4g}, {x_max:.4g}] but {chip} accepts [{lo:g}, {hi:g}] (INP:RANG?)"
    if (x_min < lo and lo >= 0) or not np.isfinite(need):
        raise HwloopError(problem + "; no positive scale brings them into range")
    if not scale:
        raise HwloopError(problem + " and strict_ranges is set (without it they are scaled exactly by a power of two)")
    if not homogeneous:
        raise HwloopError(problem + "; its activation runs on the chip, where dividing the inputs is not exact: "
                          "set host_activation: true for this device (bias and activation on the host)")
    return pow2_at_least(need)


@dataclass(frozen=True)
class RunTarget:
    """The chip a plan runs on: its limits, whether inputs may be scaled into its range, the block size."""

    limits: dict
    scale: bool = True
    max_block_bytes: int = 32 << 20
    chip: str = "the chip"


def run_planned(plan: LayerPlan, layer: AnalogLayer, x: np.ndarray, repeats: int, measure,
                target: RunTarget) -> np.ndarray:
    """Run checked inputs x (R_in, B, n_in) through ``plan`` on ``target``, one measurement per tile and chunk.

    ``measure(tile_index, chunk_index, xs, s_x, k)`` gets the chunk's inputs as sent (divided by
    ``s_x``) and returns the chip's (k, rows, tile outputs); the products are scaled back, tiles
    summed, and bias and activation applied on the host when the plan puts them there.
    """
    limits, scale, max_block_bytes, chip = target.limits, target.scale, target.max_block_bytes, target.chip
    r_in, b, n_in = x.shape
    rows = x[0] if r_in == 1 else x.reshape(r_in * b, n_in)
    k = repeats if r_in == 1 else 1
    out = np.zeros((k, len(rows), layer.n_out), np.float32)
    exact = plan.host or layer.activation in HOMOGENEOUS
    for t, tp in enumerate(plan.tiles):
        for c, ch in enumerate(chunks_for(len(rows), k, tp.weights.shape[0], limits["max_batch"],
                                          limits["max_repeats"], max_block_bytes)):
            xs = rows[ch.rows, tp.tile.cols]
            s_x = input_scale(xs, limits["input_range"], scale=scale, homogeneous=exact, layer=layer.name, chip=chip)
            y = measure(t, c, xs / np.float32(s_x), s_x, ch.repeats.stop - ch.repeats.start)
            out[ch.repeats, ch.rows, tp.tile.rows] += y * np.float32(s_x * plan.weight_scale)
    if plan.host:
        out = layer.activate(out + plan.bias)
    return out if r_in == 1 else out.reshape(r_in, b, -1)
