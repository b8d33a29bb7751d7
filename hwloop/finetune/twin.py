"""The digital twin of each analog layer as a differentiable torch function.

A twin is a device profile (the one ``hwloop calibrate`` writes for a chip),
for every layer or per layer through a bench file whose devices are all
emulators.  Its torch form follows the emulator's order (``physics``): input
DAC -> weighted sum (weight quantisation, programming and read noise) ->
pre-activation noise -> transfer function ``scale * f(slope * a)`` -> gain and
offset per neuron -> neuron noise -> output ADC.  Converters are
straight-through (the value is quantised, the gradient is that of the
clipping); noise is reparametrised, so the gradient flows through the clean
value.  Per-neuron gains and offsets come from the profile's
``provenance.per_neuron`` (calibration writes them there); a profile that only
gives the spread makes them random per step while training the twin (noise-aware
training), and 1 and 0 where the twin is only used for its slope.

Not modelled: drift, and the per-tile gain of a layer larger than the array
(a tiled layer is a linear product with the model's activation applied after).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..errors import HwloopError
from ..graph import Model
from ..profiles import LayerSettings, Profile, load_profile
from ..yamlio import LineMap, load_yaml_file


def ste_quantize(t: torch.Tensor, bits: int | None, lo: float | None, hi: float | None) -> torch.Tensor:
    """Clip to [lo, hi] and round to 2**bits levels (``physics.quantize``'s grid); gradient straight through."""
    if lo is not None:
        t = t.clamp(lo, hi)
    if bits is None or lo is None:
        return t
    step = (hi - lo) / (2 ** bits - 1)
    q = ((t.detach() - lo) / step).round() * step + lo
    return t + (q - t.detach())


def response(name: str, a: torch.Tensor) -> torch.Tensor:
    """``hwloop.layer.response`` in torch (every transfer function a profile may name)."""
    if name == "linear":
        return a
    if name == "sin2":
        return torch.sin(a) ** 2
    if name == "exp_sat":
        return -torch.expm1(-torch.relu(a))
    return {"sigmoid": torch.sigmoid, "tanh": torch.tanh, "relu": torch.relu}[name](a)


def noise(y: torch.Tensor, s, gen: torch.Generator) -> torch.Tensor:
    """``physics.apply_noise`` on rows ``y`` (N, n), differentiable in ``y``."""
    var = s.D_A + s.D_M * y * y + (s.shot * y.abs() if s.shot else 0.0)
    std = torch.sqrt(torch.as_tensor(var).clamp_min(1e-30))      # finite gradient where the variance is 0
    out = y + std * torch.randn(y.shape, generator=gen)
    if s.D_MC:
        out = out + y * (s.D_MC ** 0.5) * torch.randn((len(y), 1), generator=gen)
    if s.D_AC:
        out = out + (s.D_AC ** 0.5) * torch.randn((len(y), 1), generator=gen)
    if s.dither:
        out = out + s.dither * (torch.rand(y.shape, generator=gen) - 0.5)
    return out


@dataclass
class TwinLayer:
    """One layer's twin: its settings (None: the ideal product), per-neuron gain/offset when known."""

    activation: str
    settings: LayerSettings | None = None
    gain: torch.Tensor | None = None
    offset: torch.Tensor | None = None
    source: str = "ideal"

    def __call__(self, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor,
                 gen: torch.Generator | None = None) -> torch.Tensor:
        """Rows ``x`` (N, n_in) -> (N, n_out); ``gen`` draws noise (None: the noise-free mean)."""
        s = self.settings
        if s is None or s.ideal:
            return response(self.activation, torch.addmm(b, x, w.T))
        if s.dac.active:
            x = ste_quantize(x, s.dac.bits, *(s.dac.range or (None, None)))
        fs = float(s.weights.range) if s.weights.range is not None else float(w.detach().abs().max()) or 1.0
        if s.weights.bits or s.weights.range is not None:
            w = ste_quantize(w, s.weights.bits, -fs, fs)
        if gen is not None and s.weights.program_noise:
            w = w + s.weights.program_noise * fs * torch.randn(w.shape, generator=gen)
        tiled = s.array.rows is not None and x.shape[1] > s.array.rows
        a = x @ w.T if tiled else torch.addmm(b, x, w.T)
        if gen is not None and s.weights.read_noise:
            a = a + s.weights.read_noise * fs * x.norm(dim=1, keepdim=True) * torch.randn(a.shape, generator=gen)
        if gen is not None and s.noise.pre and s.noise.active and not tiled:
            a = noise(a, _pre_only(s.noise), gen)
        if tiled:
            y = a
        else:
            f = self.activation if s.transfer.function == "model" else s.transfer.function
            y = s.transfer.scale * response(f, s.transfer.slope * a)
        y = self._gain_offset(y, gen)
        if gen is not None and (s.noise.post or s.noise.shot or s.noise.dither) and s.noise.active:
            y = noise(y, s.noise if s.noise.post else _post_only(s.noise), gen)
        if tiled:
            y = response(self.activation, y + b)
        elif s.adc.active:
            y = ste_quantize(y, s.adc.bits, *(s.adc.range or (None, None)))
        return y

    def _gain_offset(self, y: torch.Tensor, gen: torch.Generator | None) -> torch.Tensor:
        go = self.settings.gain_offset
        if self.gain is not None:
            return y * self.gain + self.offset
        if gen is None or not go.active:
            return y
        n = y.shape[1]
        return y * (1 + go.gain * torch.randn(n, generator=gen)) + go.offset * torch.randn(n, generator=gen)


def _pre_only(n):
    from dataclasses import replace
    return replace(n, dither=0.0, shot=0.0)


def _post_only(n):
    from dataclasses import replace
    return replace(n, D_A=0.0, D_M=0.0, D_AC=0.0, D_MC=0.0)


def load_twin(spec: str | Path | None, model: Model) -> list[TwinLayer]:
    """One ``TwinLayer`` per analog layer of ``model`` from a profile or a bench file of emulators
    (None: the ideal twin); the twin's layers and per-neuron values must match the model."""
    if spec is None:
        return [TwinLayer(L.activation) for L in model.layers]
    path = Path(spec)
    data = load_yaml_file(path, "twin") if path.is_file() else None
    if isinstance(data, LineMap) and "devices" in data:
        profiles = _bench_profiles(path, model)
    else:
        profile = load_profile(spec)
        profile.check_layers(model.layers)
        profiles = [profile] * len(model.layers)
    twins = []
    for L, prof in zip(model.layers, profiles):
        if prof is None:
            twins.append(TwinLayer(L.activation))
            continue
        gain, offset = _per_neuron(prof, L, len(model.layers))
        twins.append(TwinLayer(L.activation, prof.for_layer(L.index, L.name), gain, offset,
                               source=str(prof.path or prof.name)))
    return twins


def _bench_profiles(path: Path, model: Model) -> list[Profile | None]:
    from ..bench import load_bench

    bench = load_bench(path)
    loaded: dict[str, Profile] = {}
    out = []
    for index, name in bench.assignment(model).items():
        spec = bench.devices_spec.get(name) if name else None
        if spec is not None and spec.kind == "chip":
            raise HwloopError(f"{path}:{spec.line}: devices: {name}: a twin is made of profiles (emulators), "
                              "not chips")
        if spec is None or not spec.profile:
            out.append(None)
            continue
        if spec.profile not in loaded:
            loaded[spec.profile] = load_profile(spec.profile)
        out.append(loaded[spec.profile])
    return out


def _per_neuron(prof: Profile, layer, n_layers: int) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Per-neuron gain and offset of ``layer`` from ``provenance.per_neuron``: ``{gain: [...], offset: [...]}``
    (calibration's form, for a profile of one layer) or ``{LAYER_INDEX: {gain:, offset:}, ...}``."""
    table = prof.provenance.get("per_neuron")
    if not table:
        return None, None
    where = f"{prof.path or prof.name}: provenance.per_neuron"
    if not isinstance(table, dict):
        raise HwloopError(f"{where}: a mapping {{gain: [...], offset: [...]}} or {{LAYER: {{gain:, offset:}}}}")
    if "gain" not in table and "offset" not in table:
        keys = {str(k) for k in table}
        extra = sorted(keys - {str(i) for i in range(n_layers)})
        if extra:
            raise HwloopError(f"{where}: layer(s) {', '.join(extra)}: the model has analog layers 0..{n_layers - 1}")
        table = table.get(layer.index, table.get(str(layer.index)))
        where += f".{layer.index}"
        if table is None:
            return None, None
    out = []
    for key, fill in (("gain", 1.0), ("offset", 0.0)):
        v = np.asarray(table.get(key, [fill] * layer.n_out), dtype=np.float64)
        if v.ndim != 1 or len(v) != layer.n_out or not np.all(np.isfinite(v)):
            raise HwloopError(f"{where}.{key}: {v.size} value(s), but layer {layer.index} ({layer.name!r}) has "
                              f"{layer.n_out} neurons")
        out.append(torch.from_numpy(v.astype(np.float32)))
    return out[0], out[1]
