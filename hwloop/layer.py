"""The analog layer: the unit of work a device executes.

Every analog layer is a dense product ``y = act(x @ W.T + b)``.  A Conv is
lowered to that form by the runner (its input patches are unfolded into rows,
as a crossbar array would see them), so devices only ever see dense layers.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

ACTIVATIONS = ("linear", "sigmoid", "tanh", "relu")
#: what a chip's neurons may really do (``f`` in ``scale * f(slope * a)``): the activations, plus
#: sin^2 (an optical modulator) and 1 - exp(-a) (a saturating detector)
TRANSFER_FUNCTIONS = ACTIVATIONS + ("sin2", "exp_sat")


@dataclass
class ConvSpec:
    """Geometry of a Conv layer (ONNX attribute names), kept so the runner can unfold inputs."""

    kernel_shape: tuple[int, ...]
    strides: tuple[int, ...]
    pads: tuple[int, ...]          # ONNX order: begin_0, begin_1, ..., end_0, end_1, ...
    dilations: tuple[int, ...]
    in_channels: int
    out_channels: int


@dataclass
class AnalogLayer:
    """One analog layer found in an ONNX graph.

    ``weight`` is (n_out, n_in) float32 with any Gemm transpose/alpha and folded
    BatchNorm already applied; ``bias`` is (n_out,) float32 (beta applied).
    For a Conv, n_in = C_in * prod(kernel_shape) and the row order matches the
    unfolding done by the runner (channel-major, then kernel positions).
    """

    index: int                       # position among the model's analog layers, 0-based
    name: str                        # ONNX name of the product node (Gemm / MatMul / Conv)
    op: str                          # "Gemm" | "MatMul" | "Conv"
    weight: np.ndarray
    bias: np.ndarray
    activation: str = "linear"       # one of ACTIVATIONS
    input: str = ""                  # ONNX tensor consumed by the product
    output: str = ""                 # ONNX tensor produced after bias/BN/activation
    nodes: tuple[str, ...] = ()      # names of every ONNX node absorbed into this layer
    conv: ConvSpec | None = None
    meta: dict = field(default_factory=dict)

    @property
    def n_in(self) -> int:
        return int(self.weight.shape[1])

    @property
    def n_out(self) -> int:
        return int(self.weight.shape[0])


def activate(name: str, a: np.ndarray) -> np.ndarray:
    """The model's activation on a numpy array (float32 in, float32 out).

    relu and sigmoid work in place when ``a`` is writable (no second large
    array); pass a copy to keep ``a``.
    """
    if name == "linear":
        return a
    if name == "relu":
        return np.maximum(a, 0, out=a) if a.flags.writeable else np.maximum(a, 0)
    if name == "tanh":
        return np.tanh(a)
    if name == "sigmoid":
        # torch's kernel: stable for large |a| and ~20x faster than sign-split numpy (no masked copies)
        import torch

        return torch.from_numpy(a if a.flags.writeable else a.copy()).sigmoid_().numpy()
    raise ValueError(f"unknown activation {name!r}")


def response(name: str, a: np.ndarray) -> np.ndarray:
    """``f(a)`` for any of ``TRANSFER_FUNCTIONS``, in ``a``'s dtype (may reuse ``a``'s memory, like ``activate``)."""
    if name == "sin2":
        y = np.sin(a)
        y *= y
        return y
    if name == "exp_sat":
        return -np.expm1(-np.maximum(a, 0))
    return activate(name, a)


def activation_slope(name: str, a: np.ndarray) -> np.ndarray:
    """d act / d a at pre-activation ``a`` (used by the analytic noise prediction)."""
    if name == "linear":
        return np.ones_like(a)
    if name == "relu":
        return (a > 0).astype(a.dtype)
    if name == "tanh":
        t = np.tanh(a)
        return 1 - t * t
    if name == "sigmoid":
        s = activate("sigmoid", a.copy())
        return s * (1 - s)
    raise ValueError(f"unknown activation {name!r}")
