"""An imported model: its analog layers, the digital glue between them, and the table ``hwloop inspect`` shows."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from ..activations import describe
from ..layer import AnalogLayer
from .view import node_label, shapes_of


@dataclass
class Glue:
    """A digital segment: ONNX nodes run on the host by one onnxruntime session."""

    nodes: list[onnx.NodeProto]
    inputs: list[str]
    outputs: list[str]
    input_dtypes: list[np.dtype]
    session: ort.InferenceSession = field(repr=False)
    #: inputs whose first dimension is not the batch (shape inference gave it a fixed size: Shape outputs, ...)
    unbatched: frozenset[str] = frozenset()

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run the segment on ``feeds`` (tensor name -> array); returns its outputs by name."""
        args = {n: np.asarray(feeds[n], dtype=dt) for n, dt in zip(self.inputs, self.input_dtypes)}
        return dict(zip(self.outputs, self.session.run(self.outputs, args)))


@dataclass
class DigitalProduct:
    """A product node with a weight-like operand that stays on the host, and why."""

    node: onnx.NodeProto
    reason: str

    @property
    def name(self) -> str:
        return node_label(self.node)


@dataclass
class Model:
    """An imported model: analog layers and glue, in execution order (``steps``)."""

    path: Path
    sha256: str
    proto: onnx.ModelProto = field(repr=False)   # after shape inference
    layers: list[AnalogLayer]
    steps: list                                   # Glue | AnalogLayer, in execution order
    input_name: str
    input_shape: tuple                            # per-sample dims (int, or None when symbolic)
    input_dtype: np.dtype
    output_name: str
    n_classes: int | None                         # None when the export left it symbolic
    batch_dim: int | None = None                  # the input's first dimension when fixed by the export
    unused: list[onnx.NodeProto] = field(default_factory=list, repr=False)
    digital_products: list[DigitalProduct] = field(default_factory=list)
    input_names: list[str] = field(default_factory=list)      # every graph input (several: ids + mask, ...)
    input_shapes: list[tuple] = field(default_factory=list)
    input_dtypes: list[np.dtype] = field(default_factory=list)
    output_names: list[str] = field(default_factory=list)     # every graph output
    notes: list[str] = field(default_factory=list)            # what the user should know (fixed batch, dtype)
    #: the graph outputs a run records: (graph output name, the tensor holding it; a ZipMap's input)
    recorded_outputs: list[tuple[str, str]] = field(default_factory=list)

    def __post_init__(self):
        self.input_names = self.input_names or [self.input_name]
        self.input_shapes = self.input_shapes or [self.input_shape]
        self.input_dtypes = self.input_dtypes or [self.input_dtype]

    def summary(self) -> str:
        """One line: how many of the model's products run on devices, and which stay digital."""
        n, k, a = len(self.layers) + len(self.digital_products), len(self.digital_products), len(self.layers)
        head = f"{a} analog layer{'' if a == 1 else 's'} on devices ({a} of the model's {n} matrix products)"
        if not k:
            return head
        names = ", ".join(f"{p.name} ({p.node.op_type}: {p.reason})" for p in self.digital_products[:5])
        more = f", and {k - 5} more" if k > 5 else ""
        return f"{head}; {k} stay digital: {names}{more}"

    def table(self) -> list[dict]:
        """One row per step (analog layer or glue node) for ``hwloop inspect``."""
        shapes = shapes_of(self.proto)
        inits = {i.name: int(np.prod(i.dims)) for i in self.proto.graph.initializer}

        def shape(name: str) -> str:
            dims = shapes.get(name)
            if dims is None:
                return "?"
            if not dims:
                return "scalar"
            return "x".join(("N" if i == 0 else "?") if d is None else str(d) for i, d in enumerate(dims))

        digital = {id(p.node): p.reason for p in self.digital_products}
        rows = []
        for step in self.steps:
            if isinstance(step, AnalogLayer):
                where = step.meta.get("activation_on")
                act = describe(step.activation, step.act_params) + (f" ({where})" if where else "")
                rows.append(dict(index=str(step.index), name=step.name, kind="analog", op=step.meta["ops"],
                                 shape=f"{shape(step.input)} -> {shape(step.output)}",
                                 activation=act, weights=str(step.weight.size)))
                continue
            for node in step.nodes:
                rows.append(_node_row(node, "digital", shape, inits, digital.get(id(node), "")))
        rows += [_node_row(node, "unused", shape, inits, "") for node in self.unused]
        return rows


def _node_row(node, kind, shape, inits, reason: str) -> dict:
    data = [t for t in node.input if t and t not in inits]
    n_w = sum(inits.get(t, 0) for t in node.input)
    return dict(index="-", name=node_label(node) if reason else node.name, kind=kind, op=node.op_type,
                shape=f"{shape(data[0]) if data else '-'} -> {shape(node.output[0]) if node.output else '-'}",
                activation="digital product" if reason else "", weights=str(n_w) if n_w else "")


def format_table(rows: list[dict]) -> str:
    """Rows of :meth:`Model.table` as an aligned text table."""
    cols = ["index", "name", "kind", "op", "shape", "activation", "weights"]
    head = {"index": "index", "name": "name", "kind": "kind", "op": "op", "shape": "input -> output",
            "activation": "activation", "weights": "weights"}
    width = {c: max(len(head[c]), *(len(r[c]) for r in rows)) for c in cols}
    lines = ["  ".join(head[c].ljust(width[c]) for c in cols).rstrip()]
    lines.append("  ".join("-" * width[c] for c in cols))
    lines += ["  ".join(r[c].rjust(width[c]) if c == "weights" else r[c].ljust(width[c]) for c in cols).rstrip()
              for r in rows]
    return "\n".join(lines)
