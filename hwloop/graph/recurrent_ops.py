"""LSTM, GRU and RNN nodes as two products: the input product per time step and the recurrent one.

See ``hwloop.recurrent`` for how the runner steps through time.  What this
cannot map (sequence_lens, peepholes, clip, coupled input/forget gates, a
GRU resetting before the product, non-constant weights) is refused with one
line naming the node.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..layer import TensorMap
from ..recurrent import GATES, ONNX_ACTIVATIONS, RecurrentSpec
from .products import Product, ProductOp, product_op
from .view import GraphView, attrs

_DEFAULT_ACTS = {"LSTM": ("Sigmoid", "Tanh", "Tanh"), "GRU": ("Sigmoid", "Tanh"), "RNN": ("Tanh",)}


@dataclass
class RecurrentProduct:
    """The input product (an ordinary per-token Product) and the recurrent one (weight, bias, cell spec)."""

    inputs: Product
    weight: np.ndarray            # (H*G, H), or (D, H*G, H) for two directions
    bias: np.ndarray              # (D*G*H,)
    spec: RecurrentSpec
    outputs: tuple[str, ...]      # Y, Y_h, Y_c


class _Recurrent(ProductOp):
    def match(self, node, g: GraphView):
        a = attrs(node)
        op = node.op_type
        ins = list(node.input) + [""] * (8 - len(node.input))
        w, r = g.const(ins[1]), g.const(ins[2])
        if w is None or r is None:
            raise g.err(node, f"weight {ins[1] if w is None else ins[2]!r} is not a constant; hwloop maps "
                              "recurrent nodes with constant W and R")
        refuse = {"sequence_lens": bool(ins[4]) and not _all_full(g, ins[4], ins[0]), "peepholes P": bool(ins[7]),
                  "clip": "clip" in a, "input_forget=1": bool(a.get("input_forget", 0)),
                  "layout=1 (batch first)": bool(a.get("layout", 0)),
                  "linear_before_reset=0": op == "GRU" and not a.get("linear_before_reset", 0)}
        bad = [k for k, v in refuse.items() if v]
        if bad:
            raise g.err(node, f"{', '.join(bad)}: hwloop maps {op} nodes without them")
        direction = a.get("direction", "forward")
        if direction not in ("forward", "bidirectional"):
            raise g.err(node, f"direction={direction}: hwloop maps forward and bidirectional {op} nodes")
        d, gates = (2 if direction == "bidirectional" else 1), GATES[op]
        acts = tuple(a.get("activations", _DEFAULT_ACTS[op] * d))
        if any(x not in ONNX_ACTIVATIONS for x in acts) or "activation_alpha" in a:
            raise g.err(node, f"activations {', '.join(acts)}: hwloop maps {', '.join(ONNX_ACTIVATIONS)}")
        initial = None
        ins[5], ins[6] = ("" if ins[5] and g.zeros(ins[5]) else ins[5]), ("" if ins[6] and g.zeros(ins[6]) else ins[6])
        if ins[5] or ins[6]:
            h0, c0 = g.const(ins[5]) if ins[5] else None, g.const(ins[6]) if ins[6] else None
            if (ins[5] and h0 is None) or (ins[6] and c0 is None):
                raise g.err(node, "initial_h / initial_c is not a constant")
            hid0 = int(a["hidden_size"])
            zeros = np.zeros((d, 1, hid0), np.float32)
            initial = (zeros if h0 is None else h0[0], None if c0 is None else c0[0])
        hid = int(a["hidden_size"])
        bias = g.const(ins[3])[0].reshape(d, 2, gates * hid) if ins[3] else np.zeros((d, 2, gates * hid))
        wx = w[0].astype(np.float64).reshape(d * gates * hid, -1)          # all directions stacked
        rank = g.rank(ins[0])
        if rank != 3:
            raise g.err(node, f"input {ins[0]!r} of rank {rank}; expected (sequence, batch, features)")
        inputs = Product(ins[0], wx, bias[:, 0].reshape(-1).astype(np.float64), list(w[1]), feature_axes=(2,),
                         tmap=TensorMap((0, 1), 1, (d * gates * hid,), (0, 1), 1))
        rw = r[0].astype(np.float64)                                       # (D, G*H, H)
        spec = RecurrentSpec(op, hid, d, tuple(ONNX_ACTIVATIONS[x] for x in acts),
                             extra_outputs=(_out(node, 1), _out(node, 2)), initial=initial)
        return RecurrentProduct(inputs, rw if d == 2 else rw[0], bias[:, 1].reshape(-1).astype(np.float64), spec,
                                tuple(node.output))


def _out(node, k: int) -> str:
    return node.output[k] if len(node.output) > k else ""


def _all_full(g: GraphView, lens: str, x: str) -> bool:
    """sequence_lens that is a constant equal to the full length everywhere (exporters write it so)."""
    c, dims = g.const(lens), g.shapes.get(x)
    return c is not None and dims is not None and dims[0] is not None and bool(np.all(c[0] == dims[0]))


@product_op
class LSTM(_Recurrent):
    op_type = "LSTM"


@product_op
class GRU(_Recurrent):
    op_type = "GRU"


@product_op
class RNN(_Recurrent):
    op_type = "RNN"
