"""What folds into a product: a per-neuron bias or scale, BatchNormalization, and the activation after it.

``FOLDS`` maps an op type to a function that folds one node following the
product into its ``Fold`` state (weight, bias, activation) or says no.
Linear folds (bias Add/Sub, per-channel Mul/Div as tf2onnx writes a
BatchNorm, BatchNormalization) may come in any number; an activation ends the
layer.  Activations written as several nodes (SiLU as Sigmoid * x, GELU as
Erf or Tanh arithmetic, HardSwish as x * Relu6(x + 3) / 6) are recognised by
their values on a probe grid, whatever nodes an exporter chose.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import helper

from ..activations import activate
from .view import GraphView, attrs


@dataclass
class Fold:
    """A product with what has been folded into it so far."""

    weight: np.ndarray                 # (n_out, n_in) or (groups, n_out/g, n_in/g), float64
    bias: np.ndarray                   # (n_out,)
    out: str                           # the tensor the layer produces so far
    feature_axes: tuple[int, ...]
    nodes: list = field(default_factory=list)     # every absorbed node (constants included)
    chain: list = field(default_factory=list)     # absorbed nodes on the activation path
    ops: list = field(default_factory=list)
    activation: str = "linear"
    act_params: dict = field(default_factory=dict)

    def affine(self, scale: np.ndarray | None, shift: np.ndarray) -> None:
        """y -> scale * y + shift, per neuron."""
        if scale is not None:
            self.weight = self.weight * scale.reshape(self.weight.shape[:-1])[..., None]
            self.bias = self.bias * scale
        self.bias = self.bias + shift

    def take(self, node, consts: list) -> None:
        self.nodes += consts + [node]
        self.chain.append(node)
        self.ops.append(node.op_type)
        self.out = node.output[0]


def per_neuron(c: np.ndarray, dims: list | None, feature_axes: tuple[int, ...], n_out: int) -> np.ndarray | None:
    """``c`` as one value per neuron when, broadcast onto a tensor of ``dims`` (batch first), it varies only
    along ``feature_axes``; None otherwise."""
    if not dims or c.ndim > len(dims) or any(dims[a] is None for a in feature_axes):
        return None
    c = c.reshape((1,) * (len(dims) - c.ndim) + c.shape)
    if c.shape[0] != 1 or any(d is None and c.shape[i] != 1 for i, d in enumerate(dims)):
        return None
    try:
        full = np.broadcast_to(c, [1] + [1 if d is None else d for d in dims[1:]])
    except ValueError:
        return None
    full = np.moveaxis(full[0], [a - 1 for a in feature_axes], range(-len(feature_axes), 0)).reshape(-1, n_out)
    return full[0].astype(np.float64) if full.shape[1] == n_out and np.all(full == full[:1]) else None


def _other(node, tensor: str) -> str:
    return node.input[1] if node.input[0] == tensor else node.input[0]


def _fold_add(node, f: Fold, g: GraphView) -> bool:
    other = _other(node, f.out)
    c = g.const(other)
    per = None if c is None else per_neuron(c[0], g.shapes.get(f.out), f.feature_axes, len(f.bias))
    if per is None:
        return False
    if node.op_type == "Sub":
        per = per if node.input[0] == f.out else None
        if per is None:
            return False
        per = -per
    f.affine(None, per)
    f.take(node, c[1])
    return True


def _fold_mul(node, f: Fold, g: GraphView) -> bool:
    other = _other(node, f.out)
    c = g.const(other)
    per = None if c is None else per_neuron(c[0], g.shapes.get(f.out), f.feature_axes, len(f.bias))
    if per is None or (node.op_type == "Div" and (node.input[0] != f.out or not np.all(per))):
        return False
    f.affine(1.0 / per if node.op_type == "Div" else per, np.zeros_like(f.bias))
    f.take(node, c[1])
    return True


def _fold_batchnorm(node, f: Fold, g: GraphView) -> bool:
    parts = [g.const(t) for t in node.input[1:5]]
    if f.feature_axes != (1,) or any(p is None for p in parts) or len(node.output) > 1 \
            or attrs(node).get("training_mode", 0):
        return False
    scale, beta, mean, var = (p[0].astype(np.float64).reshape(-1) for p in parts)
    s = scale / np.sqrt(var + attrs(node).get("epsilon", 1e-5))
    f.affine(s, beta - mean * s)
    f.take(node, [n for p in parts for n in p[1]])
    return True


def _scalar(g: GraphView, name: str, default: float) -> float | None:
    if not name:
        return default
    c = g.const(name)
    return float(c[0].reshape(-1)[0]) if c is not None and c[0].size == 1 else None


def _activation(node, f: Fold, g: GraphView) -> bool:
    a = attrs(node)
    op, params, consts = node.op_type, {}, []
    if op in _SIMPLE:
        name = _SIMPLE[op]
    elif op == "LeakyRelu":
        name, params = "leaky_relu", {"alpha": a.get("alpha", 0.01)}
    elif op == "Elu":
        name, params = "elu", {"alpha": a.get("alpha", 1.0)}
    elif op == "Gelu":
        name = "gelu_tanh" if a.get("approximate", "none") == "tanh" else "gelu"
    elif op == "HardSigmoid":
        name, params = "hard_sigmoid", {"alpha": a.get("alpha", 0.2), "beta": a.get("beta", 0.5)}
    elif op == "Clip":
        lo = a["min"] if "min" in a else _scalar(g, node.input[1] if len(node.input) > 1 else "", -np.inf)
        hi = a["max"] if "max" in a else _scalar(g, node.input[2] if len(node.input) > 2 else "", np.inf)
        if lo is None or hi is None:
            return False
        name, params = ("relu", {}) if (lo, hi) == (0.0, np.inf) else ("clip", {"min": lo, "max": hi})
        consts = [n for t in node.input[1:] if t for n in g.const(t)[1]]
    elif op == "PRelu":
        c = g.const(node.input[1])
        per = None if c is None else per_neuron(c[0], g.shapes.get(f.out), f.feature_axes, len(f.bias))
        if per is None:
            return False
        name, params, consts = "prelu", {"slope": per.astype(np.float32)}, list(c[1])
    else:
        return False
    f.activation, f.act_params = name, params
    f.take(node, consts)
    return True


_SIMPLE = {"Relu": "relu", "Sigmoid": "sigmoid", "Tanh": "tanh", "Softplus": "softplus", "HardSwish": "hard_swish"}
#: op type -> fold of one node following the product (False: it does not fold)
FOLDS = {"Add": _fold_add, "Sub": _fold_add, "Mul": _fold_mul, "Div": _fold_mul,
         "BatchNormalization": _fold_batchnorm,
         **{op: _activation for op in (*_SIMPLE, "LeakyRelu", "Elu", "Gelu", "HardSigmoid", "Clip", "PRelu")}}
ACTIVATION_OPS = frozenset(op for op, fn in FOLDS.items() if fn is _activation)

#: elementwise ops an activation written as several nodes may use (other inputs: scalar constants)
_ELEMENTWISE = {"Add", "Sub", "Mul", "Div", "Pow", "Erf", "Tanh", "Sigmoid", "Relu", "Clip", "Min", "Max", "Neg",
                "Sqrt", "Exp", "Log", "Abs", "HardSigmoid", "Softplus", "Reciprocal", "Where", "Greater", "Less",
                "GreaterOrEqual", "LessOrEqual"}
#: what such a composite may turn out to be
_COMPOSITES = ("gelu", "gelu_tanh", "silu", "hard_swish", "softplus", "relu", "sigmoid", "tanh")
_PROBE = np.concatenate([np.linspace(-8, 8, 161), [-30.0, -12.5, 12.5, 30.0]]).astype(np.float32)


def composite(f: Fold, g: GraphView, max_nodes: int = 12) -> bool:
    """Absorb an activation written as several elementwise nodes reading ``f.out``, recognised by its values."""
    region: list = []
    tensors = {f.out}
    frontier = [f.out]
    while frontier and len(region) < max_nodes:
        t = frontier.pop(0)
        for n in g.consumers.get(t, []):
            if n in region or n.op_type not in _ELEMENTWISE or len(n.output) != 1:
                continue
            ok = all(i in tensors or (not i) or ((c := g.const(i)) is not None and c[0].size == 1) for i in n.input)
            if ok:
                region.append(n)
                tensors.add(n.output[0])
                frontier.append(n.output[0])
    order = {id(n): i for i, n in enumerate(g.nodes)}
    region.sort(key=lambda n: order[id(n)])
    for end in reversed(region):       # the largest closed sub-region that is a known activation
        sub = _ancestors_within(end, region, f.out)
        inner = {n.output[0] for n in sub} - {end.output[0]}
        if f.out in g.graph_outputs or any(u not in sub for t in inner for u in g.consumers.get(t, [])) \
                or any(t in g.graph_outputs for t in inner) \
                or any(u not in sub for u in g.consumers.get(f.out, [])):
            continue
        name = _recognise(sub, f.out, end.output[0], g)
        if name is not None:
            f.activation, f.act_params = name, {}
            for n in sub:
                consts = [m for i in n.input if i and i not in tensors for m in g.const(i)[1]]
                f.nodes += consts + [n]
                f.chain.append(n)
            f.ops.append(name)
            f.out = end.output[0]
            return True
    return False


def _ancestors_within(end, region: list, start: str) -> list:
    made = {n.output[0]: n for n in region}
    keep, todo = {}, [end]
    while todo:
        n = todo.pop()
        if id(n) in keep:
            continue
        keep[id(n)] = n
        todo += [made[i] for i in n.input if i in made]
    return [n for n in region if id(n) in keep]


def _recognise(nodes: list, x: str, y: str, g: GraphView) -> str | None:
    from onnx.reference import ReferenceEvaluator

    inits = {i for n in nodes for i in n.input if i and i != x and g.const(i) is not None}
    consts = [onnx.numpy_helper.from_array(np.asarray(g.const(i)[0]), i) for i in inits]
    graph = helper.make_graph(nodes, "probe", [helper.make_tensor_value_info(x, onnx.TensorProto.FLOAT, [None])],
                              [helper.make_tensor_value_info(y, onnx.TensorProto.UNDEFINED, None)], consts)
    try:
        got = np.asarray(ReferenceEvaluator(helper.make_model(graph, opset_imports=g.proto.opset_import))
                         .run(None, {x: _PROBE})[0], np.float64)
    except Exception:
        return None
    if got.shape != _PROBE.shape:
        return None
    for name in _COMPOSITES:
        want = activate(name, _PROBE.astype(np.float64))
        if np.allclose(got, want, rtol=1e-5, atol=1e-6):
            return name
    return None
