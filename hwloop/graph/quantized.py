"""onnxruntime's dynamic quantisation rewritten so the dequantised weights are the product's weights.

``quantize_dynamic`` writes each product as DynamicQuantizeLinear(x) ->
MatMulInteger / ConvInteger(xq, Wq) -> Cast -> Mul(x_scale * w_scale).  That
is (xq - x_zp) x_scale times (Wq - w_zp) w_scale: a DequantizeLinear of the
quantised input (run on the host, exact) and a float product with the
dequantised weights, which a device runs.  QDQ graphs need no rewrite: their
DequantizeLinear of constant weights folds like any constant.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from .view import GraphView, attrs, node_label


def rewrite_dynamic(proto: onnx.ModelProto, path) -> onnx.ModelProto:
    """``proto`` with every integer product of ``quantize_dynamic`` turned into DequantizeLinear + float product."""
    if not any(n.op_type in ("MatMulInteger", "ConvInteger") for n in proto.graph.node):
        return proto
    g = GraphView(path, proto)
    replace: dict[int, list] = {}
    drop: set[int] = set()
    inits = []
    for n in g.nodes:
        if n.op_type not in ("MatMulInteger", "ConvInteger"):
            continue
        found = _pattern(n, g)
        if found is None:
            continue
        cast, mul, x_scale, w = found
        base = node_label(n)
        wd = numpy_helper.from_array(w.astype(np.float32), f"{base}/dequantized_weight")
        inits.append(wd)
        xd = f"{base}/dequantized_input"
        nodes = [helper.make_node("DequantizeLinear", [n.input[0], x_scale] + ([n.input[2]] if len(n.input) > 2 and
                                  n.input[2] else []), [xd], name=f"{base}/DequantizeLinear")]
        if n.op_type == "MatMulInteger":
            nodes.append(helper.make_node("MatMul", [xd, wd.name], [mul.output[0]], name=base))
        else:
            nodes.append(helper.make_node("Conv", [xd, wd.name], [mul.output[0]], name=base, **attrs(n)))
        replace[id(n)] = nodes
        drop |= {id(cast), id(mul)}
    if not replace:
        return proto
    out = onnx.ModelProto()
    out.CopyFrom(proto)
    del out.graph.node[:]
    for n in g.nodes:
        if id(n) in replace:
            out.graph.node.extend(replace[id(n)])
        elif id(n) not in drop:
            out.graph.node.append(n)
    out.graph.initializer.extend(inits)
    return out


def _pattern(n, g: GraphView):
    """(Cast, Mul, x_scale tensor, dequantised weight) of an integer product, or None when it is not the pattern."""
    wq = g.const(n.input[1])
    cast = g.sole_consumer(n.output[0])
    mul = g.sole_consumer(cast.output[0]) if cast is not None and cast.op_type == "Cast" else None
    if wq is None or mul is None or mul.op_type != "Mul":
        return None
    scale = g.producer.get(mul.input[1] if mul.input[0] == cast.output[0] else mul.input[0])
    if scale is None or scale.op_type != "Mul":
        return None
    k = next((i for i in (0, 1) if g.const(scale.input[i]) is not None), None)
    if k is None:
        return None
    w_scale, x_scale = g.const(scale.input[k])[0].astype(np.float64), scale.input[1 - k]
    w = wq[0].astype(np.float64)
    zp = g.const(n.input[3])[0].astype(np.float64) if len(n.input) > 3 and n.input[3] else np.zeros(1)
    if n.op_type == "MatMulInteger":        # W (K, N): zero point and scale per column or per tensor
        return cast, mul, x_scale, (w - zp.reshape(-1)) * w_scale.reshape(-1)
    per = (-1,) + (1,) * (w.ndim - 1)       # Conv W (C_out, ...): per output channel or per tensor
    return cast, mul, x_scale, (w - zp.reshape(per)) * w_scale.reshape(per)
