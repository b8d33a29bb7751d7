"""Walking Noise with chips in the loop: the bench file's layers run on their hardware, the walk elsewhere.

An evaluation-only sweep (``hwloop walk MODEL --bench BENCH.yaml [--sites ...]``):
every point runs the whole model through the runner, the analog layers the
bench file maps to devices on those devices (a chip's own noise included), and
the swept noise at the chosen sites, which must be outputs of analog layers
that run off the hardware (their activations, as ``--list-sites`` numbers them);
without ``--sites`` the walk visits all of those.
The noise there is the emulator's neuron noise after the activation, the same
element-wise noise as the walk on ONNX (additive: ``D_A = sigma^2``,
multiplicative: ``D_M = sigma^2``, combined: both with the amplitude split by
the ratio; ``--correlated``: the common-mode terms).  Points run one after the
other in this process: hardware is not shipped to Dask workers.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from ..errors import HwloopError
from .sites import Noise


def noise_profile(noise: Noise):
    """A device profile whose neuron noise is ``noise`` (post-activation, as a walking site)."""
    from ..profiles import parse_profile

    add, mul = {"additive": (noise.sigma, 0.0), "multiplicative": (0.0, noise.sigma),
                "combined": (noise.sigma * noise.ratio, noise.sigma * (1 - noise.ratio))}[noise.kind]
    a, m = ("D_AC", "D_MC") if noise.correlated else ("D_A", "D_M")
    return parse_profile(f"name: walk-{noise.kind}\nversion: 1\nprovenance: {{source: assumption, notes: walking sweep}}\n"
                         f"noise: {{units: variance, {a}: {add * add!r}, {m}: {mul * mul!r}, placement: post}}\n",
                         "<walking noise>")


@dataclass
class HardwareJob:
    """Points of a walking sweep run through the runner with the bench file's devices."""

    settings: object
    model_path: Path
    bench_path: Path
    sha256: str
    _state: dict = field(default_factory=dict)

    @classmethod
    def create(cls, settings, model_path, bench_path) -> "HardwareJob":
        """The job; without ``--sites`` it walks every site it can (``walkable``), recorded in its settings."""
        if settings.mode != "walk":
            raise HwloopError("a walk with --bench walks one site at a time: --mode global is not available")
        raw = Path(model_path).read_bytes()
        job = cls(settings, Path(model_path), Path(bench_path), hashlib.sha256(raw).hexdigest())
        if settings.sites is None:
            job.settings = replace(settings, sites=tuple(job.walkable()))
        return job

    def walkable(self) -> list[int]:
        """The sites a walk can visit: outputs of analog layers that run off the hardware."""
        from ..bench import load_bench
        from ..graph import load_model
        from .sites import load_onnx, onnx_sites

        if "layer_of" not in self._state:
            model = load_model(self.model_path)
            names = {s.name: s.index for s in onnx_sites(load_onnx(self.model_path))}
            on_hw = {k for k, d in load_bench(self.bench_path).assignment(model).items() if d}
            layer_of = {names[L.output]: L.index for L in model.layers if L.output in names}
            self._state.update(model=model, on_hw=on_hw, layer_of=layer_of)
        on_hw, layer_of = self._state["on_hw"], self._state["layer_of"]
        sites = sorted(k for k, v in layer_of.items() if v not in on_hw)
        if not sites:
            raise HwloopError(f"{self.bench_path}: every analog layer runs on hardware; no site is left to walk")
        return sites

    def open(self):
        """Model, data, the hardware devices by layer, and site index -> analog layer (built once)."""
        if "hardware" not in self._state:
            from ..bench import load_bench
            from ..data import load_data

            choices = self.walkable()
            model, on_hw, layer_of = self._state["model"], self._state["on_hw"], self._state["layer_of"]
            for site in self.settings.sites:
                if site not in choices:
                    where = "runs on hardware" if layer_of.get(site) in on_hw else "is not an analog layer's output"
                    raise HwloopError(f"--sites {site}: site {site} {where}; choose among {choices}")
            devices = load_bench(self.bench_path).devices(model)
            self._state.update(data=load_data(self.settings.data),
                               hardware={k: d for k, d in devices.items() if k in on_hw})
        s = self._state
        return s["model"], s["data"], s["hardware"], s["layer_of"]

    def point(self, site: int, sigma_index: int, repeat: int) -> dict:
        """Accuracy with the walking noise at ``site`` and the hardware layers on their devices."""
        from ..devices.emulator import Emulator
        from ..runner import run_model
        from .points import point_seed

        model, data, hardware, layer_of = self.open()
        st = self.settings
        noisy = Emulator(noise_profile(Noise(st.noise, st.sigmas[sigma_index], st.ratio, st.correlated)))
        devices = {L.index: hardware.get(L.index) or (noisy if L.index == layer_of[site] else Emulator(None))
                   for L in model.layers}
        res = run_model(model, data, devices=devices, repeats=1, seed=point_seed(st.seed, site, sigma_index, repeat))
        return {"accuracy": float(np.mean(res.accuracy))}

    def clean_accuracy(self) -> float:
        model, data, hardware, _ = self.open()
        from ..devices.emulator import Emulator
        from ..runner import run_model

        res = run_model(model, data, devices={L.index: hardware.get(L.index) or Emulator(None)
                                              for L in model.layers}, repeats=1, seed=self.settings.seed)
        return float(np.mean(res.accuracy))

    def close(self) -> None:
        for d in {id(d): d for d in self._state.get("hardware", {}).values()}.values():
            d.close()
