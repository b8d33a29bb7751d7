"""The product ops: one small class per ONNX op that multiplies activations by constant weights.

Built like onnx's reference evaluator: ``PRODUCT_OPS`` maps an op type to one
instance of its class, and ``match`` turns a node into a typed ``Product``
(weight as (n_out, n_in), or (groups, n_out/g, n_in/g) for a grouped
convolution, bias, input tensor, how its tensors map to device rows) or into a
sentence saying why it stays digital (a product of two activations, ...).
Input a product cannot take at all raises one HwloopError naming the node.
Adding an op is adding a class with ``@product_op``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx

from ..layer import ConvSpec, TensorMap
from .view import GraphView, attrs

PRODUCT_OPS: dict[str, "ProductOp"] = {}


def product_op(cls):
    """Register ``cls`` (a ProductOp subclass) for its ``op_type``."""
    PRODUCT_OPS[cls.op_type] = cls()
    return cls


@dataclass
class Product:
    """What a product node computes, before bias / BatchNorm / activation folds."""

    x: str                              # the activation tensor it reads
    weight: np.ndarray                  # float64 (n_out, n_in), or (groups, n_out/g, n_in/g)
    bias: np.ndarray                    # float64 (n_out,)
    nodes: list = field(default_factory=list)   # constant-producing nodes it absorbs
    chain: list = field(default_factory=list)   # activation-side nodes it absorbs (a Transpose before it)
    feature_axes: tuple[int, ...] = (1,)        # axes of its output (batch first) holding the neurons
    conv: ConvSpec | None = None
    tmap: TensorMap | None = None

    @property
    def n_out(self) -> int:
        return int(np.prod(self.weight.shape[:-1]))


class ProductOp:
    """One op type; ``match`` gives a Product, or a reason (str) why the node stays digital."""

    op_type = ""

    def match(self, node: onnx.NodeProto, g: GraphView) -> Product | str:
        raise NotImplementedError

    @staticmethod
    def operands(node, g: GraphView, i: int = 0, j: int = 1):
        """(x, weight constant or None, x constant or None) for inputs i (activation side) and j (weight)."""
        return node.input[i], g.const(node.input[j]), g.const(node.input[i])


def _bias(node, g: GraphView, index: int, n_out: int, scale: float = 1.0) -> tuple[np.ndarray, list]:
    if len(node.input) <= index or not node.input[index]:
        return np.zeros(n_out), []
    c = g.const(node.input[index])
    if c is None:
        raise g.err(node, f"bias {node.input[index]!r} is not a constant")
    if c[0].size not in (1, n_out):
        raise g.err(node, f"bias of shape {list(c[0].shape)} is not one value per output neuron")
    return np.broadcast_to(c[0].reshape(-1).astype(np.float64), (n_out,)) * scale, list(c[1])


@product_op
class Gemm(ProductOp):
    op_type = "Gemm"

    def match(self, node, g):
        a = attrs(node)
        x, wc, xc = self.operands(node, g)
        if wc is None:
            if g.const(x) is not None:
                return "the weight is operand A: the samples run along B's columns, not its rows"
            return "product of two activations"
        chain = []
        if a.get("transA", 0):
            t = g.producer.get(x)
            perm = list(attrs(t).get("perm", [])) if t is not None else None
            if t is None or t.op_type != "Transpose" or perm not in ([], [1, 0]) or g.sole_consumer(x) is None:
                raise g.err(node, "transA=1 on a non-constant input puts the batch in the second "
                                  "dimension; hwloop maps only (batch, features) products")
            x, chain = t.input[0], [t]
        w = wc[0].astype(np.float64)
        w = (w if a.get("transB", 0) else w.T) * a.get("alpha", 1.0)      # -> (n_out, n_in)
        bias, bn = _bias(node, g, 2, w.shape[0], a.get("beta", 1.0))
        return Product(x, w, bias, list(wc[1]) + bn, chain, tmap=None if chain else flattened_rows(g, x, w.shape[0]))


@product_op
class MatMul(ProductOp):
    """x @ W (a Linear, per token on rank >= 3) or W @ x (the weight first: columns are the positions)."""

    op_type = "MatMul"

    def match(self, node, g):
        x, wc, xc = self.operands(node, g)
        if wc is None and xc is None:
            return "product of two activations"
        if wc is not None:
            return self._x_w(node, g, x, wc)
        return self._w_x(node, g, node.input[1], xc)

    @staticmethod
    def _x_w(node, g, x, wc):
        w = wc[0]
        if w.ndim != 2:
            return f"a rank-{w.ndim} weight (one matrix per leading index) is not one product per row"
        rank = g.rank(x)
        if rank is None:
            raise g.err(node, f"input {x!r} has an unknown rank after shape inference")
        if rank < 2:
            return "a rank-1 input has no batch dimension"
        n_out = w.shape[1]
        tmap = flattened_rows(g, x, n_out)
        if rank > 2:   # a Linear applied per token / position: positions become rows
            r, b = rank - 1, g.batch_axis(x)
            if b == rank - 1:
                return "the batch is the contracted axis"
            tmap = TensorMap(tuple(range(r)), r - 1, (n_out,), tuple(range(r)), b)
        return Product(x, w.T.astype(np.float64), np.zeros(n_out), list(wc[1]), feature_axes=(rank - 1,),
                       tmap=tmap)

    @staticmethod
    def _w_x(node, g, x, wc):
        w = wc[0]
        rank = g.rank(x)
        if w.ndim != 2:
            return f"a rank-{w.ndim} weight as the first operand is not one product per column"
        if rank is None or rank < 3:
            return ("the weight is the first operand of a rank-2 input: the samples run along the columns, "
                    "not the batch dimension")
        r, b = rank - 1, g.batch_axis(x)              # per-sample axes (..., K, M) -> rows (..., M), K contracted
        if b >= rank - 2:
            return "the batch is one of the two multiplied axes"
        perm = tuple(range(r - 2)) + (r - 1, r - 2)
        return Product(x, w.astype(np.float64), np.zeros(w.shape[0]), list(wc[1]), feature_axes=(rank - 2,),
                       tmap=TensorMap(perm, r - 1, (w.shape[0],), perm, b))


def flattened_rows(g: GraphView, x: str, n_out: int) -> TensorMap | None:
    """A rank-2 input whose first axis is not just the batch: rows that a Reshape merged from (pre, batch,
    post) axes of an earlier tensor.  None when the first axis is the batch (or nothing says otherwise)."""
    syms = g.symbols.get(x) or [None]
    if g.batch_symbol is None or syms[0] == g.batch_symbol:
        return None
    node = g.producer.get(x)
    if node is None or node.op_type not in ("Reshape", "Flatten"):
        return None
    src = node.input[0]
    dims, src_syms = g.shapes.get(src), g.symbols.get(src) or []
    if dims is None or src_syms.count(g.batch_symbol) != 1:
        return None
    b = src_syms.index(g.batch_symbol)
    n_in = (g.shapes.get(x) or [None, None])[1]
    for k in range(b + 1, len(dims)):
        tail = [d for d in dims[k:] if d is not None]
        if None in dims[:b] + dims[b + 1:k] or (n_in is not None and (not tail or n_in % int(np.prod(tail)))):
            continue
        pre, post = int(np.prod(dims[:b])), int(np.prod(dims[b + 1:k]))
        if pre == post == 1:
            return None
        return TensorMap((0, 1, 2), 2, (n_out,), (0, 1, 2), 1, rows=(pre, post))
    return None


def conv_geometry(node, g: GraphView, x: str, kernel: tuple, out_channels: int, group: int,
                  transposed: bool = False, in_channels: int | None = None) -> ConvSpec:
    """Strides, pads (auto_pad resolved from the input size), dilations of a Conv node.  The channel count
    is the weight's (``in_channels``) where shape inference leaves it unknown; an unknown height and width
    are taken from the data when the layer runs."""
    a = attrs(node)
    nd = len(kernel)
    dims = g.shapes.get(x) or [None] * (nd + 2)
    if len(dims) != nd + 2:
        raise g.err(node, f"input {x!r} has rank {len(dims)}, not {nd + 2} as its {nd}-D kernel needs")
    if dims[1] is None:
        dims = [dims[0], in_channels] + list(dims[2:])
    if dims[1] is None:
        raise g.err(node, f"input {x!r} has an unknown channel count; export with a fixed channel count")
    strides = tuple(a.get("strides", [1] * nd))
    dil = tuple(a.get("dilations", [1] * nd))
    pads = list(a.get("pads", [0] * 2 * nd))
    auto = a.get("auto_pad", "NOTSET")
    if auto == "VALID":
        pads = [0] * 2 * nd
    elif auto in ("SAME_UPPER", "SAME_LOWER") and not transposed:
        for i in range(nd):
            size = dims[2 + i]
            if size is None:
                raise g.err(node, f"auto_pad={auto} with an unknown spatial size of input {x!r}; export with a "
                                  "fixed image size or explicit pads")
            total = max((-(-size // strides[i]) - 1) * strides[i] + (kernel[i] - 1) * dil[i] + 1 - size, 0)
            small = total // 2
            pads[i], pads[i + nd] = (small, total - small) if auto == "SAME_UPPER" else (total - small, small)
    elif auto != "NOTSET":
        raise g.err(node, f"auto_pad={auto} on a transposed convolution; export with explicit pads")
    return ConvSpec(kernel_shape=tuple(kernel), strides=strides, pads=tuple(pads), dilations=dil,
                    in_channels=int(dims[1]), out_channels=int(out_channels), groups=group, transposed=transposed)


def _grouped(w: np.ndarray, group: int) -> np.ndarray:
    """(C_out, C_in/g, k...) -> (C_out, n_in) or, grouped, (g, C_out/g, C_in/g * prod(k))."""
    if group == 1:
        return w.reshape(w.shape[0], -1)
    return w.reshape(group, w.shape[0] // group, -1)


@product_op
class Conv(ProductOp):
    """1-, 2- and 3-D convolutions; a grouped (depthwise) one keeps one weight block per group."""

    op_type = "Conv"

    def match(self, node, g):
        x, wc, xc = self.operands(node, g)
        if wc is None:
            return "product of two activations (the kernel is not a constant)"
        w = wc[0].astype(np.float64)
        if w.ndim not in (3, 4, 5):
            raise g.err(node, f"{w.ndim - 2}-D convolution; hwloop maps 1-, 2- and 3-D convolutions")
        group = int(attrs(node).get("group", 1))
        bias, bn = _bias(node, g, 2, w.shape[0])
        spec = conv_geometry(node, g, x, w.shape[2:], w.shape[0], group, in_channels=w.shape[1] * group)
        return Product(x, _grouped(w, group), bias, list(wc[1]) + bn, conv=spec)


@product_op
class ConvTranspose(ProductOp):
    """A transposed convolution: a Conv, stride 1, over the input dilated by the strides, with the kernel
    flipped and its channel axes swapped; pads become (k - 1) d - pad (+ output_padding at the end)."""

    op_type = "ConvTranspose"

    def match(self, node, g):
        x, wc, xc = self.operands(node, g)
        if wc is None:
            return "product of two activations (the kernel is not a constant)"
        a = attrs(node)
        w = wc[0].astype(np.float64)                       # (C_in, C_out/g, k...)
        nd = w.ndim - 2
        if nd not in (1, 2, 3):
            raise g.err(node, f"{nd}-D transposed convolution; hwloop maps 1-, 2- and 3-D ones")
        if "output_shape" in a:
            raise g.err(node, "output_shape is set; export with explicit pads instead")
        group = int(a.get("group", 1))
        c_in, c_og = w.shape[:2]
        k = w.shape[2:]
        flipped = w[(slice(None), slice(None)) + (slice(None, None, -1),) * nd]
        conv_w = flipped.reshape(group, c_in // group, c_og, *k).swapaxes(1, 2).reshape(group * c_og, c_in // group, *k)
        spec = conv_geometry(node, g, x, k, group * c_og, group, transposed=True, in_channels=c_in)
        out_pad = list(a.get("output_padding", [0] * nd))
        pads = [(k[i] - 1) * spec.dilations[i] - spec.pads[i] for i in range(nd)]
        pads += [(k[i] - 1) * spec.dilations[i] - spec.pads[i + nd] + out_pad[i] for i in range(nd)]
        if min(pads) < 0:
            raise g.err(node, "pads larger than the dilated kernel; hwloop cannot map this transposed convolution")
        spec.pads = tuple(pads)
        bias, bn = _bias(node, g, 2, group * c_og)
        return Product(x, _grouped(conv_w, group), bias, list(wc[1]) + bn, conv=spec)


@product_op
class Einsum(ProductOp):
    """A linear contraction of one activation tensor with one constant: ``btk,kn->btn``, ``bk,nk->bn``, ...

    The activation's axes that reach the output are positions (rows), the ones it shares with the
    weight are contracted, the weight's own axes are the neurons."""

    op_type = "Einsum"

    def match(self, node, g):
        eq = attrs(node)["equation"].replace(" ", "")
        if len(node.input) != 2:
            raise g.err(node, f"{eq!r} has {len(node.input)} operands; hwloop maps one input times one weight")
        consts = [g.const(t) for t in node.input]
        if consts[0] is None and consts[1] is None:
            return "product of two activations"
        k = 0 if consts[0] is None else 1            # the activation operand
        x, wc = node.input[k], consts[1 - k]
        lhs, _, out = eq.partition("->")
        terms = lhs.split(",")
        if "." in eq:
            return self._refuse(node, g, eq, "uses an ellipsis; write the axes out")
        if not out and "->" not in eq:
            out = "".join(sorted(c for c in lhs if c != "," and lhs.count(c) == 1))
        xs, ws = terms[k], terms[1 - k]
        for t in (xs, ws, out):
            if len(set(t)) != len(t):
                return self._refuse(node, g, eq, f"repeats an index in {t!r} (a diagonal or trace)")
        if set(xs) - set(ws) - set(out):
            return self._refuse(node, g, eq, f"sums x over {''.join(sorted(set(xs) - set(ws) - set(out)))!r} "
                                             "without a weight")
        if set(ws) - set(xs) - set(out):
            return self._refuse(node, g, eq, "sums the weight over an index of its own")
        if set(xs) & set(ws) & set(out):
            return f"{eq!r}: one weight matrix per index {''.join(sorted(set(xs) & set(ws) & set(out)))!r}"
        b = g.batch_axis(x)
        if b >= len(xs) or xs[b] not in out or out.index(xs[b]) != b:
            return f"{eq!r}: the batch index is not in the same place in input and output"
        kept = [c for c in xs if c in out and c != xs[b]]
        contracted = [c for c in xs if c in ws]
        feats = [c for c in ws if c not in xs]
        w = np.asarray(wc[0], np.float64).transpose([ws.index(c) for c in contracted + feats])
        n_in = int(np.prod(w.shape[:len(contracted)]))
        w = w.reshape(n_in, -1).T                                    # (n_out, n_in)
        per_x = [c for c in xs if c != xs[b]]
        per_out = [c for c in out if c != xs[b]]
        rows_order = kept + feats
        tmap = TensorMap(tuple(per_x.index(c) for c in kept + contracted), len(kept),
                         tuple(int(wc[0].shape[ws.index(c)]) for c in feats),
                         tuple(rows_order.index(c) for c in per_out), b)
        return Product(x, w, np.zeros(w.shape[0]), list(wc[1]), feature_axes=tuple(out.index(c) for c in feats),
                       tmap=tmap)

    @staticmethod
    def _refuse(node, g, eq, why):
        raise g.err(node, f"equation {eq!r} is not a linear contraction of the input with a weight: {why}")
