"""Injection sites of an ONNX model and the element-wise noise put there (Walking Noise).

A site is a tensor after an operation: the graph input, then every node output
that carries float activations, in topological order, the logits last.  Pure
data movement (Flatten, Reshape, Transpose, ...) is not a site: noise there is
noise on its input.  A product whose only consumer adds a constant bias
(MatMul -> Add) counts once, after the bias, like a Gemm.

Noise (Borras, Klein, Froening 2024), drawn per element, sample and pass:
additive ``x + N(0, s^2)``, multiplicative ``x * N(1, s^2)``, combined
(multiply then add, amplitude A and ratio r: s_add = A r, s_mul = A (1 - r)).
``correlated`` draws one value per sample shared by all neurons of the site.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from ..errors import HwloopError
from ..inputs import finite_initializers

KINDS = ("additive", "multiplicative", "combined")

#: ops that only move or relabel data: noise after them equals noise before them
MOVEMENT_OPS = {"Flatten", "Reshape", "Squeeze", "Unsqueeze", "Transpose", "Identity", "Dropout", "Cast"}
_FLOATS = {onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16}


@dataclass(frozen=True)
class Noise:
    """One noise setting: ``kind`` in KINDS, standard deviation (or amplitude) ``sigma``."""

    kind: str = "additive"
    sigma: float = 0.0
    ratio: float = 0.5          # combined only: the additive share r
    correlated: bool = False

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise HwloopError(f"noise kind {self.kind!r}: not one of {', '.join(KINDS)}")
        if not (self.sigma >= 0 and np.isfinite(self.sigma)):
            raise HwloopError(f"noise sigma {self.sigma!r}: must be a finite number >= 0")
        if not 0.0 <= self.ratio <= 1.0:
            raise HwloopError(f"noise ratio {self.ratio!r}: must lie in [0, 1]")

    def stds(self) -> tuple[float, float]:
        """(s_add, s_mul): the additive and multiplicative standard deviations."""
        if self.kind == "additive":
            return self.sigma, 0.0
        if self.kind == "multiplicative":
            return 0.0, self.sigma
        return self.sigma * self.ratio, self.sigma * (1.0 - self.ratio)

    def with_sigma(self, sigma: float) -> "Noise":
        return Noise(self.kind, float(sigma), self.ratio, self.correlated)


def draw_shape(shape: tuple[int, ...], correlated: bool) -> tuple[int, ...]:
    """Shape of one noise draw: per element, or one per sample when correlated."""
    return (shape[0],) + (1,) * (len(shape) - 1) if correlated else tuple(shape)


def add_noise(x: np.ndarray, noise: Noise, rng: np.random.Generator, copies: int = 1) -> np.ndarray:
    """``x`` with ``noise``; with ``copies`` = k, the mean of k independent noisy copies
    (what averaging k executions of a noisy site gives).  Returns a new float32 array."""
    s_add, s_mul = noise.stds()
    shape = draw_shape(x.shape, noise.correlated)
    x = np.asarray(x, dtype=np.float32)
    out = None
    for _ in range(copies):   # in place where possible: this is the hot loop of a sweep
        if s_mul > 0:
            y = rng.standard_normal(shape, dtype=np.float32)
            y *= np.float32(s_mul)
            y += np.float32(1.0)
            y = np.multiply(x, y, out=y) if y.shape == x.shape else x * y
        else:
            y = x.copy()
        if s_add > 0:
            a = rng.standard_normal(shape, dtype=np.float32)
            a *= np.float32(s_add)
            y += a
        out = y if out is None else np.add(out, y, out=out)
    if copies > 1:
        out /= np.float32(copies)
    return out


@dataclass(frozen=True)
class Site:
    """A place noise can go: tensor ``name`` (an ONNX tensor or a torch module path)."""

    index: int
    name: str
    op: str                       # "input", an ONNX op type or a torch module class
    shape: tuple[int, ...]        # without the batch dimension (0 where unknown)


def site_table(sites: list[Site]) -> str:
    """The sites as aligned text lines, for ``hwloop walk MODEL --list-sites``."""
    rows = [("site", "op", "shape", "tensor")]
    rows += [(str(s.index), s.op, "x".join(map(str, s.shape)) or "-", s.name) for s in sites]
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    return "\n".join(f"{r[0]:>{widths[0]}}  {r[1]:<{widths[1]}}  {r[2]:<{widths[2]}}  {r[3]}" for r in rows)


def load_onnx(model: str | Path | onnx.ModelProto) -> onnx.ModelProto:
    """Read, check and shape-infer an ONNX model; ``HwloopError`` names the file when it cannot."""
    if isinstance(model, onnx.ModelProto):
        proto, where = model, "model"
    else:
        where = str(model)
        if not Path(model).exists():
            raise HwloopError(f"{where}: no such file")
        try:
            proto = onnx.load(str(model))
        except Exception as e:
            raise HwloopError(f"{where}: not an ONNX model ({e})") from None
    try:
        onnx.checker.check_model(proto)
        proto = onnx.shape_inference.infer_shapes(proto)
    except Exception as e:
        raise HwloopError(f"{where}: invalid ONNX model: {str(e).splitlines()[0]}") from None
    finite_initializers(proto, where)
    inputs = data_inputs(proto)
    if len(inputs) != 1:
        raise HwloopError(f"{where}: Walking Noise needs one data input (has {len(inputs)})")
    return proto if len(proto.graph.output) == 1 else scored_output_only(proto, where)


def scored_output_only(proto: onnx.ModelProto, where: str) -> onnx.ModelProto:
    """A model with several outputs cut to the one accuracy is taken from: an integer label per sample
    (skl2onnx's classifiers: the label is used as the label), else the first float (batch, classes) output."""
    def kind(v: onnx.ValueInfoProto) -> str:
        t = v.type.tensor_type
        dims = len(t.shape.dim) if v.type.HasField("tensor_type") and t.HasField("shape") else -1
        if t.elem_type in (onnx.TensorProto.INT64, onnx.TensorProto.INT32) and dims == 1:
            return "label"
        return "scores" if t.elem_type in (onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE) and dims == 2 else ""

    outs = list(proto.graph.output)
    chosen = next((o for o in outs if kind(o) == "label"), None) or next((o for o in outs if kind(o) == "scores"), None)
    if chosen is None:
        raise HwloopError(f"{where}: no output to score: Walking Noise takes an integer label or float (batch, "
                          f"classes) output (outputs: {', '.join(o.name for o in outs)})")
    needed, keep = {chosen.name}, []
    for node in reversed(proto.graph.node):      # the nodes the chosen output depends on, in graph order
        if any(o in needed for o in node.output):
            keep.append(node)
            needed.update(i for i in node.input if i)
    out = onnx.ModelProto.FromString(proto.SerializeToString())
    del out.graph.node[:]
    out.graph.node.extend(reversed(keep))
    del out.graph.output[:]
    out.graph.output.append(chosen)
    return out


def data_inputs(proto: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    """Graph inputs that are not initializers."""
    inits = {i.name for i in proto.graph.initializer}
    return [v for v in proto.graph.input if v.name not in inits]


def _value_infos(proto: onnx.ModelProto) -> dict[str, onnx.ValueInfoProto]:
    g = proto.graph
    return {v.name: v for v in list(g.input) + list(g.value_info) + list(g.output)}


def _shape(vi: onnx.ValueInfoProto | None) -> tuple[int, ...]:
    if vi is None or not vi.type.tensor_type.HasField("shape"):
        return ()
    return tuple(d.dim_value for d in vi.type.tensor_type.shape.dim[1:])


def dynamic_tensors(proto: onnx.ModelProto) -> set[str]:
    """Names of the tensors that depend on the data input (the rest are constants)."""
    dyn = {v.name for v in data_inputs(proto)}
    for node in proto.graph.node:
        if any(i in dyn for i in node.input if i):
            dyn.update(o for o in node.output if o)
    return dyn


def onnx_sites(proto: onnx.ModelProto) -> list[Site]:
    """The numbered injection sites of a (checked, shape-inferred) ONNX model."""
    g = proto.graph
    infos = _value_infos(proto)
    dyn = dynamic_tensors(proto)
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in g.node:
        for i in node.input:
            consumers.setdefault(i, []).append(node)
    inp = data_inputs(proto)[0]
    out_name = g.output[0].name
    names: list[tuple[str, str]] = [(inp.name, "input")]
    for node in g.node:
        if node.op_type in MOVEMENT_OPS or not node.output:
            continue
        t = node.output[0]
        vi = infos.get(t)
        if t not in dyn or vi is None or vi.type.tensor_type.elem_type not in _FLOATS:
            continue
        users = consumers.get(t, [])
        if (t != out_name and node.op_type in ("MatMul", "Conv") and len(users) == 1
                and users[0].op_type == "Add" and all(i == t or i not in dyn for i in users[0].input)):
            continue  # a constant bias is added next: the site is after the bias
        names.append((t, node.op_type))
    if inp.type.tensor_type.elem_type not in _FLOATS:
        raise HwloopError(f"input {inp.name!r}: not a float tensor, cannot carry noise")
    return [Site(k, n, op, _shape(infos.get(n))) for k, (n, op) in enumerate(names)]
