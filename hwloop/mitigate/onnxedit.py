"""Write a mitigated model: the original ONNX file with some analog layers replaced by wider or rescaled ones.

A mitigation changes the weights and biases of analog layers (and, for ghost
neurons and duplication, their widths), never the digital glue.  So the
rewrite starts from the original file, removes the nodes that computed each
changed layer (product, bias, BatchNorm, activation: everything on the data
path from the layer's input to its output), puts one ``Gemm(transB=1)`` and
the activation in their place with the same input and output tensor names,
and drops what nothing reads any more.  The result imports into the same
analog layers (same indices and names), so a profile's per-layer overrides and
a bench file still apply, and it runs on the same devices.

Widening a layer is only safe when its output reaches the next analog layer
through pass-through glue alone (``chain_next``); anything else is refused
with one line naming the layer.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ..errors import HwloopError
from ..files import atomic_path
from ..graph import Model
from ..layer import AnalogLayer

#: glue that passes a (batch, features) tensor of any width through unchanged
PASS_THROUGH = ("Flatten", "Identity", "Dropout", "Cast")
_ONNX_ACT = {"sigmoid": "Sigmoid", "tanh": "Tanh", "relu": "Relu"}
#: noise-free outputs of the mitigated model must match the original this closely (relative to max |y|)
TOLERANCE = 1e-5


def chain_next(model: Model, k: int, strategy: str) -> AnalogLayer:
    """The analog layer reading layer ``k``'s output through pass-through glue only; else one clear error."""
    layers = model.layers
    layer = layers[k]
    if layer.conv is not None:
        raise HwloopError(f"layer {k} {layer.name!r} (Conv): {strategy} applies to dense layers only")
    if k == len(layers) - 1:
        raise HwloopError(f"layer {k} {layer.name!r} is the readout: no next analog layer to take up "
                          f"{strategy}; use multi-exec there")
    nxt = layers[k + 1]
    if nxt.conv is not None:
        raise HwloopError(f"layer {k} {layer.name!r}: the next layer {nxt.name!r} is a Conv; {strategy} needs "
                          "a dense next layer")
    g = model.proto.graph
    outputs = {o.name for o in g.output}
    consumers: dict[str, list] = {}
    for n in g.node:
        for t in n.input:
            consumers.setdefault(t, []).append(n)
    t = layer.output
    while t != nxt.input:
        users = consumers.get(t, [])
        if t in outputs or len(users) != 1:
            why = "is a model output" if t in outputs else f"is read by {len(users)} nodes"
            raise HwloopError(f"layer {k} {layer.name!r}: its output {t!r} {why}; {strategy} needs a plain chain "
                              f"to layer {nxt.name!r}")
        node = users[0]
        if node.op_type not in PASS_THROUGH:
            raise HwloopError(f"layer {k} {layer.name!r}: node {node.name or node.op_type!r} ({node.op_type}) "
                              f"before layer {nxt.name!r} is not pass-through glue ({', '.join(PASS_THROUGH)}); "
                              f"{strategy} needs a plain chain")
        t = node.output[0]
    return nxt


def _chain_nodes(g: onnx.GraphProto, src: str, dst: str) -> list[int]:
    """Indices of the nodes on a data path from tensor ``src`` to tensor ``dst``."""
    down, fwd = {src}, set()
    for i, n in enumerate(g.node):
        if any(t in down for t in n.input):
            fwd.add(i)
            down.update(t for t in n.output if t)
    producer = {t: i for i, n in enumerate(g.node) for t in n.output if t}
    up, todo = set(), [dst]
    while todo:
        i = producer.get(todo.pop())
        if i is None or i in up:
            continue
        up.add(i)
        todo += [t for t in g.node[i].input if t and t != src]
    return sorted(fwd & up)


def _layer_nodes(layer: AnalogLayer, dtype: np.dtype) -> tuple[list, list]:
    """Gemm(transB=1) [+ activation] from ``layer.input`` to ``layer.output``, and its initialisers.

    The Gemm keeps the layer's name, so the layer imports under the same name (profile overrides by name)."""
    tag = f"hwloop_mitigated_{layer.index}"
    inits = [numpy_helper.from_array(np.asarray(layer.weight, dtype), f"{tag}_W"),
             numpy_helper.from_array(np.asarray(layer.bias, dtype), f"{tag}_b")]
    act = _ONNX_ACT.get(layer.activation)
    pre = f"{tag}_pre" if act else layer.output
    nodes = [helper.make_node("Gemm", [layer.input, f"{tag}_W", f"{tag}_b"], [pre], name=layer.name, transB=1)]
    if act:
        nodes.append(helper.make_node(act, [pre], [layer.output], name=f"{tag}_{layer.activation}"))
    return nodes, inits


def _prune(g: onnx.GraphProto) -> None:
    """Drop nodes whose outputs nothing reads, then initialisers nothing reads."""
    while True:
        needed = {o.name for o in g.output}
        for n in g.node:
            needed.update(n.input)
            for a in n.attribute:
                for sub in ([a.g] if a.HasField("g") else []) + list(a.graphs):
                    needed.update(t for sn in sub.node for t in sn.input)
        dead = [i for i, n in enumerate(g.node) if not any(t in needed for t in n.output if t)]
        if not dead:
            break
        for i in reversed(dead):
            del g.node[i]
    keep = [i for i in g.initializer if i.name in needed]
    del g.initializer[:]
    g.initializer.extend(keep)


def rewrite(model: Model, layers: Sequence[AnalogLayer], metadata: Mapping[str, str] | None = None) -> onnx.ModelProto:
    """The original model file with every layer of ``layers`` that differs from ``model.layers`` replaced."""
    proto = onnx.load(str(model.path))
    g = proto.graph
    for new, old in zip(layers, model.layers):
        if new is old:
            continue
        idx = _chain_nodes(g, old.input, old.output)
        if not idx:
            raise HwloopError(f"{model.path}: layer {old.name!r}: cannot find its nodes in the graph")
        nodes, inits = _layer_nodes(new, np.dtype(old.meta.get("dtype", "float32")))
        pos = idx[0]
        for i in reversed(idx):
            del g.node[i]
        for j, n in enumerate(nodes):
            g.node.insert(pos + j, n)
        g.initializer.extend(inits)
    _prune(g)
    del g.value_info[:]          # widths changed: shapes are inferred again on import
    for key, value in (metadata or {}).items():
        helper.set_model_props(proto, {**{p.key: p.value for p in proto.metadata_props}, key: value})
    onnx.checker.check_model(proto)
    return proto


def _outputs(proto: onnx.ModelProto, name: str, x: np.ndarray) -> np.ndarray:
    """The float tensor ``name`` of ``proto`` on input ``x`` (added as a graph output when it is internal)."""
    import onnxruntime as ort

    p = onnx.ModelProto()
    p.CopyFrom(proto)
    if name not in {o.name for o in p.graph.output}:
        p.graph.output.append(helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    opts = ort.SessionOptions()
    opts.log_severity_level = 4
    sess = ort.InferenceSession(p.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    feed = {sess.get_inputs()[0].name: x}
    return np.asarray(sess.run([name], feed)[0], dtype=np.float64)


def max_difference(model: Model, proto: onnx.ModelProto, x: np.ndarray) -> float:
    """Largest |noise-free output difference| between the original file and ``proto`` on ``x``, relative to max |y|."""
    ref = _outputs(onnx.load(str(model.path)), model.output_name, x)
    got = _outputs(proto, model.output_name, x)
    if ref.shape != got.shape:
        return float("inf")
    return float(np.max(np.abs(ref - got))) / max(1.0, float(np.max(np.abs(ref))))


def save(model: Model, proto: onnx.ModelProto, x: np.ndarray, path: str | Path) -> float:
    """Check the mitigated model keeps the noise-free function on ``x``, then write it atomically.

    Returns the relative difference; raises (writing nothing) when it exceeds ``TOLERANCE``.
    """
    diff = max_difference(model, proto, x)
    if not diff <= TOLERANCE:
        raise HwloopError(f"{model.path}: the mitigated model changes the noise-free outputs by {diff:.3g} "
                          f"(relative; tolerance {TOLERANCE:g}); nothing written")
    with atomic_path(path) as tmp:
        onnx.save(proto, str(tmp))
    return diff
