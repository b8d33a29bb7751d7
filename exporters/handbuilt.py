"""Hand-built ONNX graphs: the one way this project writes a graph node by node with ``onnx.helper``.

Exporters (``torch_onnx``, ``sklearn_onnx``) make most models; a graph is
built by hand only where no exporter produces it (an op on its own, an odd
Gemm attribute, a custom domain, weights chosen exactly).  Every such graph
goes through :func:`onnx_model` so they all get the same opset, IR version
and checking, and tests, tools and ``hwloop.analysis.networks`` share it.

    write_onnx(path, [helper.make_node("Gemm", ["x", "W"], ["y"], transB=1)],
               inputs={"x": ["batch", 4]}, outputs={"y": ["batch", 3]}, initializers={"W": w})
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

Shape = Sequence[int | str | None] | None
Values = Mapping[str, Shape] | Sequence[onnx.ValueInfoProto]
Initializers = Mapping[str, "np.typing.ArrayLike"] | Sequence[TensorProto]

IR_VERSION = 8  # readable by any onnxruntime of the last years; enough for opsets up to 18


def initializer(name: str, value: "np.typing.ArrayLike") -> TensorProto:
    """A constant tensor; plain Python numbers and float64 arrays become float32, integer arrays keep their type."""
    arr = np.asarray(value)
    if arr.dtype.kind == "f" or arr.dtype.kind in "bO":
        arr = arr.astype(np.float32)
    return numpy_helper.from_array(arr, name)


def value_infos(values: Values) -> list[onnx.ValueInfoProto]:
    """Float tensors from ``{name: shape}``; a list of ``ValueInfoProto`` (a sequence, an int tensor) as it is."""
    if not isinstance(values, Mapping):
        return list(values)
    return [helper.make_tensor_value_info(k, TensorProto.FLOAT, s) for k, s in values.items()]


def onnx_model(nodes: Sequence[onnx.NodeProto], inputs: Values, outputs: Values,
               initializers: Initializers = (), *, opset: int = 17, domains: Sequence[str] = (),
               name: str = "handbuilt", check: bool = True) -> onnx.ModelProto:
    """A model of the given inputs/outputs (see :func:`value_infos`; shape ``None``: unknown) and constants.

    ``domains`` adds custom operator domains (version 1).  ``check`` runs ``onnx.checker`` with full shape
    inference; tests that build a graph wrong on purpose pass ``check=False``.
    """
    inits = (list(initializers) if not isinstance(initializers, Mapping)
             else [initializer(k, v) for k, v in initializers.items()])
    graph = helper.make_graph(
        list(nodes), name,
        value_infos(inputs), value_infos(outputs), initializer=inits)
    model = helper.make_model(graph, producer_name="hwloop-handbuilt",
                              opset_imports=[helper.make_opsetid("", opset)] +
                              [helper.make_opsetid(d, 1) for d in domains])
    if opset <= 18:
        model.ir_version = IR_VERSION
    if check:
        onnx.checker.check_model(model, full_check=True)
    return model


def write_onnx(path: str | Path, nodes: Sequence[onnx.NodeProto], inputs: Values, outputs: Values,
               initializers: Initializers = (), **options) -> Path:
    """:func:`onnx_model` saved to ``path`` (one self-contained file); returns the path."""
    path = Path(path)
    onnx.save(onnx_model(nodes, inputs, outputs, initializers, **options), path)
    return path
