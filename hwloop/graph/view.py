"""Read-only lookups on an ONNX graph after shape inference: shapes, types, producers, consumers, constants.

Shared by the product ops, the folds and the partitioner, so each of them asks
the same questions the same way ("is this tensor a constant, and which nodes
computed it?", "does anything else read this tensor?").
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ..errors import HwloopError

FLOAT_TYPES = (onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16)
#: ops folded to constants when all their inputs are constant (weights behind a Transpose, a DequantizeLinear, ...)
FOLDABLE = {"Identity", "Transpose", "Reshape", "Cast", "Squeeze", "Unsqueeze", "Flatten", "Mul", "Div", "Add",
            "Sub", "Neg", "Sqrt", "Reciprocal", "DequantizeLinear", "Concat", "Slice", "Gather", "Expand", "Split",
            "Shape", "ConstantOfShape"}


def node_label(node: onnx.NodeProto) -> str:
    """A node's name, or its first output when the exporter left it unnamed."""
    return node.name or (node.output[0] if node.output else node.op_type)


def first_line(e: Exception) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def attrs(node: onnx.NodeProto) -> dict:
    """A node's attributes as Python values (strings decoded)."""
    out = {}
    for a in node.attribute:
        v = helper.get_attribute_value(a)
        if isinstance(v, list):
            v = [x.decode() if isinstance(x, bytes) else x for x in v]
        out[a.name] = v.decode() if isinstance(v, bytes) else v
    return out


def shapes_of(proto: onnx.ModelProto) -> dict[str, list]:
    """Tensor name -> dims (int or None) for every tensor whose shape is known."""
    out = {}
    g = proto.graph
    for vi in list(g.input) + list(g.value_info) + list(g.output):
        t = vi.type.tensor_type
        if vi.type.HasField("tensor_type") and t.HasField("shape"):
            out[vi.name] = [d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim]
    for init in g.initializer:
        out[init.name] = list(init.dims)
    return out


def elem_types(proto: onnx.ModelProto) -> dict[str, int]:
    g = proto.graph
    out = {vi.name: vi.type.tensor_type.elem_type for vi in list(g.input) + list(g.value_info) + list(g.output)
           if vi.type.HasField("tensor_type")}
    out.update({i.name: i.data_type for i in g.initializer})
    return out


class GraphView:
    """Lookups on one graph; ``const`` folds constant subgraphs (cached)."""

    def __init__(self, path: Path, proto: onnx.ModelProto):
        self.path, self.proto = path, proto
        g = proto.graph
        self.nodes = list(g.node)
        self.inits = {i.name: i for i in g.initializer}
        self.shapes = shapes_of(proto)
        self.types = elem_types(proto)
        self.producer = {o: n for n in self.nodes for o in n.output if o}
        self.consumers: dict[str, list] = {}
        for n in self.nodes:
            for t in n.input:
                if t:
                    self.consumers.setdefault(t, []).append(n)
        self.graph_outputs = {o.name for o in g.output}
        self.symbols = {vi.name: [d.dim_param or None for d in vi.type.tensor_type.shape.dim]
                        for vi in list(g.input) + list(g.value_info) + list(g.output)
                        if vi.type.HasField("tensor_type") and vi.type.tensor_type.HasField("shape")}
        self.batch_symbol: str | None = None   # the graph input's symbolic batch dimension, set by the importer
        self.opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 17)
        self._const_cache: dict[str, tuple[np.ndarray, list] | None] = {}

    def err(self, node: onnx.NodeProto, why: str) -> HwloopError:
        return HwloopError(f"{self.path}: node {node_label(node)!r} ({node.op_type}): {why}")

    def rank(self, name: str) -> int | None:
        dims = self.shapes.get(name)
        return None if dims is None else len(dims)

    def batch_axis(self, name: str) -> int:
        """The axis of tensor ``name`` holding the batch: the one named like the graph input's batch (0 if none)."""
        syms = self.symbols.get(name) or []
        hits = [i for i, s in enumerate(syms) if s is not None and s == self.batch_symbol]
        return hits[0] if len(hits) == 1 else 0

    def const(self, name: str) -> tuple[np.ndarray, list] | None:
        """The value of tensor ``name`` if it is constant, with the nodes that computed it."""
        if not name:
            return None
        if name in self._const_cache:
            return self._const_cache[name]
        value = None
        if name in self.inits:
            value = (numpy_helper.to_array(self.inits[name]), [])
        elif name in self.producer:
            node = self.producer[name]
            if node.op_type == "Constant" and node.attribute:
                value = (self._evaluate(node, {})[0], [node])
            elif node.op_type == "CastLike" and (c := self.const(node.input[0])) is not None:
                value = (c[0].astype(self.np_dtype(node.input[1])), c[1] + [node])   # only the type of input 1
            elif node.op_type in FOLDABLE:
                parts = [self.const(t) if t else (None, []) for t in node.input]
                if all(p is not None for p in parts):
                    feeds = {t: p[0] for t, p in zip(node.input, parts) if t}
                    out = self._evaluate(node, feeds)
                    value = (out[list(node.output).index(name)], [n for p in parts for n in p[1]] + [node])
        self._const_cache[name] = value
        return value

    def _evaluate(self, node: onnx.NodeProto, feeds: dict) -> list:
        from onnx.reference import ReferenceEvaluator

        graph = helper.make_graph([node], "c", [helper.make_tensor_value_info(k, helper.np_dtype_to_tensor_dtype(
            v.dtype), v.shape) for k, v in feeds.items()],
            [helper.make_tensor_value_info(o, onnx.TensorProto.UNDEFINED, None) for o in node.output if o])
        model = helper.make_model(graph, opset_imports=self.proto.opset_import)
        return ReferenceEvaluator(model).run(None, feeds)

    def zeros(self, name: str, depth: int = 8) -> bool:
        """True when tensor ``name`` is all zeros whatever its shape (a ConstantOfShape(0) of the batch size,
        expanded or reshaped: how exporters write an initial state)."""
        c = self.const(name)
        if c is not None:
            return not np.any(c[0])
        node = self.producer.get(name)
        if node is None or depth == 0:
            return False
        if node.op_type == "ConstantOfShape":
            value = attrs(node).get("value")
            return value is None or not np.any(numpy_helper.to_array(value))
        if node.op_type in ("Expand", "Identity", "Cast", "Reshape", "Unsqueeze", "Squeeze", "Slice", "Transpose",
                            "Tile", "Gather"):
            return self.zeros(node.input[0], depth - 1)
        if node.op_type == "Concat":
            return all(self.zeros(t, depth - 1) for t in node.input)
        return False

    def sole_consumer(self, tensor: str) -> onnx.NodeProto | None:
        """The one node reading ``tensor``, when nothing else (not even a graph output) needs its values
        (a CastLike reading only its type does not count)."""
        users = [u for u in self.consumers.get(tensor, [])
                 if not (u.op_type == "CastLike" and list(u.input).index(tensor) == 1)]
        if len(users) != 1 or tensor in self.graph_outputs:
            return None
        return users[0]

    def np_dtype(self, name: str) -> np.dtype:
        return np.dtype(helper.tensor_dtype_to_np_dtype(self.types.get(name, onnx.TensorProto.FLOAT)))
