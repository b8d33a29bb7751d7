"""The analog layer: the unit of work a device executes.

Every analog layer is a product ``y = act(x @ W.T + b)`` on rows of inputs.
Other products are lowered to rows by the runner: a Conv's input patches are
unfolded (as a crossbar array would see them), a product applied per token or
per position (a rank-3 MatMul, ``W @ x``, an Einsum contraction) has its
positions stacked as rows (``TensorMap``).  A grouped convolution keeps one
small weight block per group (``weight`` is (groups, n_out/groups,
n_in/groups)): group g's outputs see only group g's inputs, and no zero block
is ever programmed.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

from .activations import BASIC as ACTIVATIONS
from .activations import activate as _activate
from .activations import slope as _slope
from .recurrent import RecurrentSpec

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
    groups: int = 1
    transposed: bool = False       # ConvTranspose: runs as a Conv over the input dilated by the strides


@dataclass
class TensorMap:
    """How a per-position product's tensors become device rows and back.

    The batch is axis ``batch_axis`` of input and output (torch's attention
    works on (tokens, batch, features)); the other axes are the per-sample
    axes.  They are permuted by ``in_perm`` so the ``n_kept`` position axes
    come first and the contracted axes last; each position is a row of n_in
    values.  The device's (positions, n_out) result is reshaped to (kept...,
    ``out_features``...) and permuted by ``out_perm`` into the output's
    per-sample axis order.
    """

    in_perm: tuple[int, ...]
    n_kept: int
    out_features: tuple[int, ...]
    out_perm: tuple[int, ...]
    batch_axis: int = 0
    #: a rank-2 input whose rows merge (pre, batch, post) axes of an earlier tensor (torch's attention
    #: flattens (tokens, batch, features) to (tokens * batch, features)): those (pre, post) sizes
    rows: tuple[int, int] | None = None


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
    act_params: dict = field(default_factory=dict)   # the activation's parameters (alpha, slope, min/max, ...)
    tmap: TensorMap | None = None    # per-position product (rank-3 MatMul, W @ x, Einsum); None: one row per sample
    recurrent: RecurrentSpec | None = None   # the recurrent product of an LSTM/GRU/RNN: run once per time step

    @property
    def groups(self) -> int:
        """Independent products sharing the layer (a grouped convolution); ``weight`` is 3-D when > 1."""
        return int(self.weight.shape[0]) if self.weight.ndim == 3 else 1

    @property
    def n_in(self) -> int:
        return int(self.weight.shape[-1]) * self.groups

    @property
    def n_out(self) -> int:
        return int(self.weight.shape[-2]) * self.groups

    @property
    def positions(self) -> int | None:
        """Rows per sample (a Conv's output positions, a sequence's tokens); None when known only from data."""
        if self.conv is not None:
            spatial = self.meta.get("out_spatial")
            return None if spatial is None else int(np.prod(spatial))
        if self.tmap is not None:
            kept = self.meta.get("kept")
            return int(np.prod(kept)) if kept is not None and None not in kept else None
        return 1

    def activate(self, a: np.ndarray) -> np.ndarray:
        """This layer's activation (with its parameters) on pre-activations ``a`` (neurons last)."""
        return _activate(self.activation, a, self.act_params)

    def slope(self, a: np.ndarray) -> np.ndarray:
        """The activation's slope at ``a`` (for the analytic prediction)."""
        return _slope(self.activation, a, self.act_params)

    def linear(self) -> "AnalogLayer":
        """The same product and bias without the activation (the analysis applies it, or none follows)."""
        return replace(self, activation="linear", act_params={})

    def dense_weight(self) -> np.ndarray:
        """(n_out, n_in): a grouped weight as the block-diagonal matrix it equals (for analysis, never programmed)."""
        if self.groups == 1:
            return self.weight
        g, o, i = self.weight.shape
        dense = np.zeros((g * o, g * i), self.weight.dtype)
        for k in range(g):
            dense[k * o:(k + 1) * o, k * i:(k + 1) * i] = self.weight[k]
        return dense


def activate(name: str, a: np.ndarray, params: dict | None = None) -> np.ndarray:
    """The model's activation on a numpy array (see ``hwloop.activations.activate``)."""
    return _activate(name, a, params)


def response(name: str, a: np.ndarray) -> np.ndarray:
    """``f(a)`` for any of ``TRANSFER_FUNCTIONS``, in ``a``'s dtype (may reuse ``a``'s memory, like ``activate``)."""
    if name == "sin2":
        y = np.sin(a)
        y *= y
        return y
    if name == "exp_sat":
        return -np.expm1(-np.maximum(a, 0))
    return activate(name, a)


def activation_slope(name: str, a: np.ndarray, params: dict | None = None) -> np.ndarray:
    """d act / d a at pre-activation ``a`` (used by the analytic noise prediction)."""
    return _slope(name, a, params)
