"""Write fine-tuned weights back into the ONNX file: same graph, new initializer values.

An analog layer's weights are what the importer folded together: the
product's weight (Gemm alpha and transB, MatMul, Conv), scaled per neuron by a
BatchNormalization after it, and a bias that may sit in the Gemm/Conv, in an
Add, or in the BatchNormalization.  ``plan`` finds those tensors before
training (so a model that cannot be written back is refused up front), and
``write_model`` inverts the fold: the product's weight becomes
``W / (alpha * s)``, the change of the bias goes into the first bias tensor of
the layer.  The written file is imported again and its layers compared with
the trained ones before it replaces anything.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ..errors import HwloopError
from ..files import atomic_path
from ..graph import Model, load_model, node_label


@dataclass
class LayerPlan:
    """Where layer ``index``'s weights live in the ONNX graph."""

    index: int
    weight: str                  # initializer of the product's weight
    transpose: bool              # weight stored (n_in, n_out)
    per_out: np.ndarray          # W_eff = per_out[:, None] * stored (after transpose/reshape)
    bias: str | None             # initializer that takes the bias change (None: the bias is not trainable)
    bias_scale: np.ndarray | None = None    # b_eff change = bias_scale * change of that initializer


def plan(model: Model) -> list[LayerPlan]:
    """The write-back plan of every analog layer; refuses layers whose weights are not plain initializers."""
    g = model.proto.graph
    inits = {i.name: i for i in g.initializer}
    consumers: dict[str, list] = {}
    for n in g.node:
        for t in n.input:
            consumers.setdefault(t, []).append(n)
    out = []
    for L in model.layers:
        node = next((n for n in g.node if n.op_type == L.op and (n.name == L.name or n.output[0] == L.name)), None)
        if node is None:
            raise HwloopError(f"{model.path}: analog layer {L.index} ({L.name!r}): its product node was not found")

        def exclusive(t: str) -> bool:
            return t in inits and len(consumers.get(t, ())) == 1

        a = {x.name: helper.get_attribute_value(x) for x in node.attribute}
        if not exclusive(node.input[1]):
            raise HwloopError(f"{model.path}: node {node_label(node)!r} ({node.op_type}): its weight is not an "
                              "initializer of its own; finetune writes new weights only into such tensors")
        if node.op_type == "Conv" and a.get("group", 1) != 1:
            raise HwloopError(f"{model.path}: node {node_label(node)!r} (Conv): grouped convolution; finetune "
                              "trains only group=1 convolutions")
        alpha = float(a.get("alpha", 1.0)) if node.op_type == "Gemm" else 1.0
        transpose = node.op_type == "MatMul" or (node.op_type == "Gemm" and not a.get("transB", 0))
        bias_cands: list[tuple[str, np.ndarray]] = []       # (initializer, d b_eff / d value) before BN
        if node.op_type in ("Gemm", "Conv") and len(node.input) > 2 and exclusive(node.input[2]):
            if int(np.prod(inits[node.input[2]].dims)) == L.n_out:
                bias_cands.append((node.input[2], np.full(L.n_out, float(a.get("beta", 1.0)))))
        s = np.ones(L.n_out)
        t = node.output[0]
        for op in L.meta["ops"].split("+")[1:]:
            nxt = next(n for n in consumers[t] if n.op_type == op)
            if op == "Add":
                other = nxt.input[1] if nxt.input[0] == t else nxt.input[0]
                if exclusive(other) and int(np.prod(inits[other].dims)) == L.n_out:
                    bias_cands.append((other, np.ones(L.n_out)))
            elif op == "BatchNormalization":
                scale, beta, mean, var = (numpy_helper.to_array(inits[x]).astype(np.float64).reshape(-1)
                                          for x in nxt.input[1:5])
                eps = next((x.f for x in nxt.attribute if x.name == "epsilon"), 1e-5)
                bn = scale / np.sqrt(var + eps)
                s = s * bn
                bias_cands = [(n_, d * bn) for n_, d in bias_cands]
                if exclusive(nxt.input[2]):
                    bias_cands.append((nxt.input[2], np.ones(L.n_out)))
            t = nxt.output[0]
        if np.any(alpha * s == 0):
            raise HwloopError(f"{model.path}: analog layer {L.index} ({L.name!r}): a neuron's weight scale is 0 "
                              "(BatchNormalization scale or Gemm alpha); its weights cannot be written back")
        bias = next(((n_, d) for n_, d in bias_cands if np.all(d != 0)), (None, None))
        out.append(LayerPlan(L.index, node.input[1], transpose, alpha * s, bias[0], bias[1]))
    return out


def _set(init: onnx.TensorProto, value: np.ndarray) -> None:
    dtype = helper.tensor_dtype_to_np_dtype(init.data_type)
    new = numpy_helper.from_array(value.reshape(tuple(init.dims)).astype(dtype), init.name)
    init.CopyFrom(new)


def write_model(model: Model, plans: list[LayerPlan], weights: list[np.ndarray], biases: list[np.ndarray],
                path: str | Path) -> Path:
    """``model`` with layer k's folded weight ``weights[k]`` and bias ``biases[k]``, saved atomically to ``path``."""
    proto = onnx.load(str(model.path))
    inits = {i.name: i for i in proto.graph.initializer}
    for p, L in zip(plans, model.layers):
        stored = weights[p.index].astype(np.float64) / p.per_out[:, None]
        if p.transpose:
            stored = stored.T
        _set(inits[p.weight], stored)
        db = biases[p.index].astype(np.float64) - L.bias.astype(np.float64)
        if p.bias is not None and np.any(db):
            old = numpy_helper.to_array(inits[p.bias]).astype(np.float64).reshape(-1)
            _set(inits[p.bias], old + db / p.bias_scale)
    path = Path(path)
    with atomic_path(path) as tmp:
        onnx.save(proto, str(tmp))
        _verify(load_model(tmp), weights, biases, path)
    return path


def _verify(got: Model, weights: list[np.ndarray], biases: list[np.ndarray], path: Path) -> None:
    """The written model must import to the trained layers (float32 rounding of the inverse fold aside)."""
    import onnxruntime as ort

    for L, w, b in zip(got.layers, weights, biases):
        tol = 1e-5 * (1 + float(np.abs(w).max()))
        if L.weight.shape != w.shape or not (np.allclose(L.weight, w, atol=tol) and np.allclose(L.bias, b, atol=tol)):
            raise HwloopError(f"{path}: layer {L.index} ({L.name!r}) does not import to the trained weights "
                              "(please report this model)")
    ort.InferenceSession(str(got.path), providers=["CPUExecutionProvider"])
