"""The software emulator of an analog chip.

With no profile (or an ideal one) it is exact float32 arithmetic, the
reference every other device is compared against.  Otherwise it applies the
profile's noise and non-idealities through ``hwloop.physics``, in the order a
chip would: input DAC -> weighted sum (programmed weights, read noise) ->
pre-activation noise -> transfer function -> gain/offset (with drift) ->
neuron noise, shot noise, dither -> output ADC.

Static effects (weight programming, gain/offset spread) are drawn at
``program(seed=)`` and stay until the next ``program``; every other draw comes
from ``run(key=)`` (with no key, calls are numbered from ``program``).

``device="cuda"`` runs the products, convolutions and noise draws in torch on a
GPU (``hwloop.physics.compute_device``); the rest (converters, transfer,
gain/offset) stays on the host.  ``device="cpu"`` is the default path itself.
"""

from __future__ import annotations

import os
import time
from dataclasses import replace
from typing import Sequence

import numpy as np

from .. import physics
from ..errors import HwloopError
from ..layer import AnalogLayer
from ..profiles import LayerSettings, NoiseSettings, Profile, load_profile
from .base import Device, check_input

_STATIC_TAG = 0x57A71C  # separates static draws from any run key with the same numbers


class Emulator(Device):
    """Runs a layer as ``act(x @ W.T + b)`` in float32, plus the physics of ``profile`` when given."""

    def __init__(self, profile: Profile | str | os.PathLike | None = None, name: str = "emulator",
                 mismatch_seed: int | None = None, device: str | None = None):
        #: a chip's per-neuron gain/offset is its silicon's, the same at every programming: when set, it is
        #: drawn from this seed instead of ``program``'s (the simulated bench controller sets it)
        self.mismatch_seed = mismatch_seed
        self.profile = profile if profile is None or isinstance(profile, Profile) else load_profile(profile)
        self.name = name
        #: where the torch work runs (None: the CPU); refused at once when unusable here
        self.device = physics.compute_device(device)
        self.layer = None
        self.settings: LayerSettings | None = None
        self.stats: dict[str, int] = {}

    @property
    def ideal(self) -> bool:
        """True when the profile changes nothing for any layer (the runner then skips its reference pass)."""
        if self.profile is None:
            return True
        keys = list(self.profile.data.get("layers") or {})
        return self.profile.defaults.ideal and all(
            self.profile.for_layer(k if isinstance(k, int) else None, str(k)).ideal for k in keys)

    def program(self, layer: AnalogLayer, *, seed: int = 0) -> None:
        """Load the layer; draw programming noise and gain/offset spread from ``seed`` (and the layer index)."""
        self.layer = layer
        self._seed = int(seed)
        self._calls = 0
        self._t0 = time.monotonic()
        self.stats = {"runs": 0, "dac_values": 0, "dac_clipped": 0, "adc_values": 0, "adc_clipped": 0,
                      "weights_clipped": 0}
        self.settings = self.profile.for_layer(layer.index, layer.name) if self.profile is not None else None
        self._b = layer.bias.astype(np.float32)
        self._conv_w = None
        if self.settings is None or self.settings.ideal:
            self._wt = _transposed(layer.weight)
            self._conv_w = _conv_kernel(layer, self._wt, row_exact=False)
            return
        s = self.settings
        rng = physics.static_rng(self._seed, layer.index, _STATIC_TAG)
        w, self.stats["weights_clipped"] = physics.program_weights(layer.weight, s.weights, rng)
        self._wt = _transposed(w)
        self._read_std = (s.weights.read_noise * physics.weight_full_scale(layer.weight, s.weights)
                          if s.weights.read_noise else 0.0)
        self._rows = _tiles(layer.n_in, s.array.rows)
        if layer.groups > 1:   # each group is its own small array; its inputs must fit the rows
            if len(_tiles(layer.weight.shape[-1], s.array.rows)) > 1:
                raise HwloopError(f"layer {layer.name!r}: a group's {layer.weight.shape[-1]} inputs exceed the "
                                  f"profile's {s.array.rows} array rows; row tiles of grouped layers are not modelled")
            self._rows = [slice(0, layer.n_in)]
        self._cols = _tiles(layer.n_out, s.array.cols)
        n = s.noise
        only_out = replace(n, D_A=0.0, D_M=0.0, D_AC=0.0, D_MC=0.0)  # shot and dither act on the output only
        pre = replace(n, dither=0.0, shot=0.0)
        self._pre_noise = pre if n.pre and pre.active else None
        self._post_noise = n if n.post and n.active else (only_out if only_out.active else None)
        self._tile_noise = n if n.active else None
        # one static gain/offset per row tile (each tile is its own piece of silicon)
        if self.mismatch_seed is not None:
            rng = physics.static_rng(self.mismatch_seed, layer.index, _STATIC_TAG, 1)
        self._gain, self._offset = physics.gain_offset_draw(layer.n_out, s.gain_offset.gain, s.gain_offset.offset,
                                                            rng, shape=(len(self._rows),))
        self._conv_w = _conv_kernel(layer, self._wt, _needs_rows(s, layer))

    def run(self, x: np.ndarray, *, repeats: int, key: Sequence[int] = ()) -> np.ndarray:
        x = check_input(self, x, repeats)
        s = self.settings
        if s is None or s.ideal:
            return self._exact(x, repeats)
        gen, t = self._session(key, repeats)
        if s.dac.active:
            x = x.copy()
            self.stats["dac_clipped"] += physics.convert(x, s.dac)
            self.stats["dac_values"] += x.size
        if len(self._rows) == 1:
            y = self._analog(x, self._wt, self._b, 0, (gen, t), repeats, s.transfer.function)
            return self.layer.activate(np.array(y)) if s.transfer.on_host(self.layer.activation) else y
        # Tiled: every tile runs linearly; partial sums are combined, then bias and activation, digitally.
        y = None
        for k, rows in enumerate(self._rows):
            part = self._analog(x[:, :, rows], self._wt[rows], None, k, (gen, t), repeats, "linear")
            y = np.array(part, dtype=np.float32) if y is None else np.add(y, part, out=y)
        y += self._b
        return self.layer.activate(y)

    def run_conv(self, x: np.ndarray, *, repeats: int, key: Sequence[int] = ()) -> np.ndarray | None:
        """A Conv layer on its un-unfolded input x (R_in, B, C_in, *spatial) -> (repeats, B, C_out * positions),
        channel-major as recorded; None when this device needs the unfolded rows themselves (an input DAC,
        weight read noise, row tiles), and the caller unfolds them for ``run``.

        Every deterministic step gives ``run``'s numbers on the unfolded rows (up to float32 rounding:
        a direct convolution sums in another order, well within 1e-5 of onnxruntime).  The noise has
        the same distribution (a row is one output position: common-mode terms are shared by the
        channels of a position) but is drawn in channel-major order, (R, B, C_out, positions), in blocks of
        samples (``physics.apply_noise_blocks``), not in row order (R, B * positions, C_out): the same
        seed gives other draws than ``run`` on the rows.
        """
        if self._conv_w is None:
            return None
        r_in, b = x.shape[:2]
        y = physics.conv(x.reshape(r_in * b, *x.shape[2:]), self._conv_w, self._b, self.layer.conv, self.device)
        y = y.reshape(r_in, b, y.shape[1], -1)            # (R_in, B, C_out, positions): neurons on axis 2
        s = self.settings
        if s is None or s.ideal:
            y = self._activate_channels(y).reshape(r_in, b, -1)
            return y if r_in == repeats else np.broadcast_to(y, (repeats, *y.shape[1:]))
        gen, t = self._session(key, repeats)
        out = self._analog(None, None, self._b, 0, (gen, t), repeats, s.transfer.function, y)
        if s.transfer.on_host(self.layer.activation):
            out = self._activate_channels(np.array(out))
        return out.reshape(repeats, b, -1)

    def takes_conv_whole(self, layer: AnalogLayer) -> bool:
        """Whether ``run_conv`` takes ``layer`` whole once this device is programmed with it (no unfolded
        rows are made: what a run's memory estimate counts); known before programming."""
        s = self.profile.for_layer(layer.index, layer.name) if self.profile is not None else None
        return _plain_conv(layer) and (s is None or s.ideal or not _needs_rows(s, layer))

    def _activate_channels(self, y: np.ndarray) -> np.ndarray:
        """The layer's activation (with its parameters, per-neuron ones included) on channel-major
        (..., C_out, positions) values: applied with the channels last, as on the rows."""
        return np.moveaxis(self.layer.activate(np.moveaxis(y, -2, -1)), -1, -2)

    def _session(self, key: Sequence[int], repeats: int):
        """One run's random generator (from ``key``, else the call count) and drift time."""
        key = tuple(key) if len(key) else (self._seed, self.layer.index, self._calls)
        self._calls += 1
        self.stats["runs"] += 1
        return physics.generator(key, self.device), self._drift_time(key, repeats)

    def _exact(self, x: np.ndarray, repeats: int) -> np.ndarray:
        r_in, b, n_in = x.shape
        a = physics.affine(x.reshape(r_in * b, n_in), self._wt, self._b, self.device)
        y = self.layer.activate(a).reshape(r_in, b, -1)
        if r_in != repeats:
            y = np.broadcast_to(y, (repeats, b, y.shape[2]))
        return y

    def _analog(self, x: np.ndarray | None, wt: np.ndarray | None, bias: np.ndarray | None, tile: int, session,
                repeats: int, function: str, products: np.ndarray | None = None) -> np.ndarray:
        """One pass through the array: products, noise, transfer, gain/offset, ADC -> (repeats, B, n_out).

        ``bias is None`` marks a row tile: it runs linearly and all its noise lands on the partial sums.
        Deterministic steps run on the R_in copies they get; the first random step expands to ``repeats``.
        ``products`` (R_in, B, n_out): the weighted sums plus bias, already computed (``x`` is then unused).
        ``session``: this run's (generator, drift time), from ``_session``.
        """
        (gen, t), s, tiled = session, self.settings, bias is None
        if products is None:
            r_in, b, n_in = x.shape
            y = physics.affine(x.reshape(r_in * b, n_in), wt, bias, self.device).reshape(r_in, b, -1)
        else:
            y = products
        if self._read_std:
            y = physics.apply_read_noise(y, x, self._read_std, gen, repeats, self.layer.groups)
        if self._pre_noise is not None and not tiled:
            y = self._noise(y, self._pre_noise, gen, repeats)
        if not tiled:
            act = _identity if s.transfer.on_host(self.layer.activation) else \
                self._activate_channels if y.ndim == 4 else self.layer.activate
            y = physics.transfer(y, function, s.transfer.slope, s.transfer.scale, act)
        if s.gain_offset.active or s.drift.active:
            g, o = self._gain[tile], self._offset[tile]
            if y.ndim == 4:      # a Conv taken whole: per-channel values along axis 2, positions after
                g, o, t = g[:, None], o[:, None], np.expand_dims(t, -1) if np.ndim(t) else t
            if s.drift.active:
                g = g * (1 + s.drift.gain * t)
                o = o + s.drift.offset * t
            y = y * g
            y += o
        post = self._tile_noise if tiled else self._post_noise
        if post is not None:
            y = self._noise(y, post, gen, repeats)
        if y.shape[0] != repeats:
            y = np.broadcast_to(y, (repeats, *y.shape[1:]))
        if s.adc.active:
            y = np.array(y, dtype=np.float32)
            self.stats["adc_clipped"] += physics.convert(y, s.adc)
            self.stats["adc_values"] += y.size
        return y

    def _noise(self, y: np.ndarray, noise: NoiseSettings, gen, repeats: int) -> np.ndarray:
        """Neuron noise, drawn separately for every column tile (correlated terms are per tile)."""
        if len(self._cols) == 1:
            if y.ndim == 4:     # a Conv taken whole (run_conv): every term in one pass per block
                return physics.apply_noise_blocks(y, noise, gen, repeats)
            return physics.apply_noise(y, noise, gen, repeats)
        out = np.empty((repeats, *y.shape[1:]), np.float32)
        for cols in self._cols:
            out[:, :, cols] = physics.apply_noise(y[:, :, cols], noise, gen, repeats)
        return out

    def _drift_time(self, key: tuple, repeats: int):
        d = self.settings.drift
        if not d.active:
            return 0.0
        if d.per == "repeat":
            return np.arange(repeats, dtype=np.float32).reshape(repeats, 1, 1)
        if d.per == "batch":
            return np.float32(key[-1])
        return np.float32(time.monotonic() - self._t0)

    def describe(self) -> dict:
        where = {} if self.device is None else {"device": str(self.device)}
        if self.profile is None:
            return {"type": "Emulator", "name": self.name, "profile": "ideal", **where}
        return {"type": "Emulator", "name": self.name, "profile": self.profile.describe(), **where}


def _identity(a: np.ndarray) -> np.ndarray:
    return a


def host_activations(profile: Profile, layers: Sequence[AnalogLayer]) -> list[str]:
    """One line per layer whose activation the profile's neurons lack (it then runs on the host)."""
    out = []
    for L in layers:
        tr = profile.for_layer(L.index, L.name).transfer
        if tr.on_host(L.activation):
            out.append(f"layer {L.index} ({L.name}): {L.activation} runs on the host after the device "
                       f"(the profile's neurons implement {', '.join(tr.activations) or 'none'})")
    return out


def _transposed(w: np.ndarray) -> np.ndarray:
    """(n_out, n_in) -> (n_in, n_out) float32; a grouped (g, o, i) -> (g, i, o)."""
    return np.ascontiguousarray(np.swapaxes(w, -1, -2), dtype=np.float32)


def _conv_kernel(layer: AnalogLayer, wt: np.ndarray, row_exact: bool) -> np.ndarray | None:
    """The conv kernel for ``run_conv``, or None: not a plain Conv (grouped (g, o, i) weights and transposed
    convolutions go as rows), or the device must see the unfolded rows."""
    if row_exact or not _plain_conv(layer):
        return None
    return physics.conv_weight(wt, layer.conv)


def _plain_conv(layer: AnalogLayer) -> bool:
    """A Conv that ``physics.conv`` computes whole: ungrouped, not transposed, 1-D or 2-D."""
    c = layer.conv
    return (c is not None and layer.groups == 1 and not c.transposed and len(c.kernel_shape) in (1, 2)
            and c.in_channels * int(np.prod(c.kernel_shape)) == layer.n_in)


def _needs_rows(s, layer: AnalogLayer) -> bool:
    """Whether a (non-ideal) device's inputs reach the array as whole rows: an input DAC, weight read
    noise, or row tiles."""
    read = bool(s.weights.read_noise) and physics.weight_full_scale(layer.weight, s.weights) != 0
    return s.dac.active or read or len(_tiles(layer.n_in, s.array.rows)) > 1


def _tiles(n: int, size: int | None) -> list[slice]:
    """Consecutive slices of at most ``size`` (one slice when unlimited or when it fits)."""
    if size is None or n <= size:
        return [slice(0, n)]
    return [slice(i, min(i + size, n)) for i in range(0, n, size)]


def emulators(profile: Profile, layers: Sequence[AnalogLayer], name: str = "emulator",
              device: str | None = None) -> dict[int, Emulator]:
    """One ``Emulator(profile)`` per analog layer, for ``run_model(devices=...)``.

    The profile's per-layer overrides are checked against the layers first, so a
    misspelt layer name fails here instead of being silently ignored.
    """
    profile.check_layers(layers)
    return {layer.index: Emulator(profile, name=name, device=device) for layer in layers}
