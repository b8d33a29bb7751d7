"""The model as a torch computation whose analog layers run on devices, on the twin, or ideally.

``Network.forward`` walks ``model.steps`` like ``runner`` does: glue through
its torch form (``glue``), each analog layer through

- ``chip``: the device's measured output as the value, the twin's gradient,
  evaluated at the input the chip really got (the physics-aware training
  rule: ``y = twin(x) + (chip(x) - twin(x)).detach()``), so the chip's noise
  and errors reach the next layer and the loss;
- ``twin``: the twin alone, noise drawn from the batch's key;
- ``ideal``: the noise-free product and the model's activation.

A Conv reaches the device unfolded into rows (``F.unfold``: channel-major,
then kernel positions, as ``runner.im2col``) and comes back as (B, C, *spatial).
"""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..devices import Device
from ..graph import Glue, Model
from ..layer import AnalogLayer
from ..physics import generator
from ..runner import derive_seed
from .glue import TorchGlue, scored_tensors
from .twin import TwinLayer


class Network:
    """Trainable weights and biases of the analog layers, and the forward pass through ``model.steps``."""

    def __init__(self, model: Model, twins: list[TwinLayer], glue: dict[int, TorchGlue],
                 trainable: Sequence[int], seed: int = 0):
        self.model, self.twins, self.glue, self.seed = model, twins, glue, seed
        self.need = scored_tensors(model)
        self.weights = [torch.tensor(L.weight, dtype=torch.float32) for L in model.layers]
        self.biases = [torch.tensor(L.bias, dtype=torch.float32) for L in model.layers]
        self.trainable = sorted(set(trainable))
        for k in self.trainable:
            self.weights[k].requires_grad_(True)
            self.biases[k].requires_grad_(True)
        self.devices: list[Device] | None = None
        self.chip_s = 0.0                     # wall time inside the devices (programming and measuring)
        self.programmings = 0
        self._programmed: list[int | None] = [None] * len(model.layers)
        self._version = 0                     # bumped at every weight update

    def parameters(self) -> list[torch.Tensor]:
        return [p for k in self.trainable for p in (self.weights[k], self.biases[k])]

    def updated(self) -> None:
        """The weights changed: devices are reprogrammed before their next measurement."""
        self._version += 1

    def layer(self, k: int) -> AnalogLayer:
        """Analog layer ``k`` with the current weights."""
        L = self.model.layers[k]
        return replace(L, weight=self.weights[k].detach().numpy().copy(), bias=self.biases[k].detach().numpy().copy())

    def attach(self, devices: list[Device] | None) -> None:
        self.devices = devices
        self._programmed = [None] * len(self.model.layers)

    def forward(self, xb: np.ndarray, mode: str, key: tuple[int, ...], noise: bool = True) -> torch.Tensor:
        """Logits (B, C) for input batch ``xb``; ``key`` numbers the batch's random draws."""
        model = self.model
        env: dict[str, torch.Tensor] = {model.input_name: torch.from_numpy(np.ascontiguousarray(xb))}
        gen = generator((self.seed, 0x7771, *key)) if noise and mode == "twin" else None
        for i, step in enumerate(model.steps):
            if i in self.glue:
                g = self.glue[i]
                env.update(g({t: env[t] for t in g.glue.inputs if t in env}))
            elif not isinstance(step, Glue) and step.output in self.need:     # a head off the scored path: skipped
                env[step.output] = self.run_layer(step, env[step.input], mode, key, gen)
        return env[model.output_name].reshape(len(xb), -1)

    def run_layer(self, L: AnalogLayer, x: torch.Tensor, mode: str, key: tuple,
                  gen: torch.Generator | None) -> torch.Tensor:
        """Analog layer ``L`` on its input tensor in ``mode``; ``gen`` draws the twin's noise (None: none)."""
        k = L.index
        B = x.shape[0]
        rows = unfold(x, L) if L.conv is not None else x.reshape(B, -1)
        rows = rows.to(torch.float32)
        twin = self.twins[k] if mode != "ideal" else TwinLayer(L.activation)
        y = twin(rows, self.weights[k], self.biases[k], gen)
        if mode == "chip":
            measured = torch.from_numpy(np.ascontiguousarray(self._measure(k, rows.detach().numpy(), key)))
            y = y + (measured - y).detach()
        if L.conv is None:
            return y
        spatial = tuple(L.meta["out_spatial"])
        return y.reshape(B, -1, L.n_out).transpose(1, 2).reshape((B, L.n_out) + spatial)

    def _measure(self, k: int, rows: np.ndarray, key: tuple) -> np.ndarray:
        dev = self.devices[k]
        t0 = time.perf_counter()
        try:
            if self._programmed[k] != self._version:
                dev.program(self.layer(k), seed=derive_seed(self.seed, k))
                self._programmed[k] = self._version
                self.programmings += 1
            return dev.run(rows[None], repeats=1, key=(self.seed, k, *key))[0]
        finally:
            self.chip_s += time.perf_counter() - t0


def unfold(x: torch.Tensor, L: AnalogLayer) -> torch.Tensor:
    """(B, C, *spatial) -> (B * positions, C * prod(kernel)), the rows a crossbar sees (``runner.im2col``'s order)."""
    spec = L.conv
    nd = len(spec.kernel_shape)
    if nd == 1:
        x = x.unsqueeze(2)
        k, s, d = (1, *spec.kernel_shape), (1, *spec.strides), (1, *spec.dilations)
        pads = (spec.pads[0], spec.pads[1], 0, 0)
    else:
        k, s, d = spec.kernel_shape, spec.strides, spec.dilations
        pads = (spec.pads[1], spec.pads[3], spec.pads[0], spec.pads[2])
    if any(pads):
        x = F.pad(x, pads)
    cols = F.unfold(x, kernel_size=k, dilation=d, stride=s)          # (B, C*kh*kw, positions)
    return cols.transpose(1, 2).reshape(-1, cols.shape[1])
