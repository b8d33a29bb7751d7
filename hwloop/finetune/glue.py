"""The digital glue as torch functions, so gradients flow through it.

Why a small table and not a converter library: onnx2torch imports
torchvision (which pulls a CUDA build of torch over the pinned CPU one),
onnx2pytorch does the same, and onnxruntime-training is a separate, retired
build of onnxruntime that would replace the installed one.  The glue between
analog layers is a short list of common ops (reshaping, pooling, element-wise
arithmetic with constants, activations, softmax), so each gets a few lines of
torch here.  Every converted segment is checked against onnxruntime (the
``Glue`` session ``run`` uses) on real data before training starts; any other
op is refused up front, naming the node.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from onnx import helper, numpy_helper

from ..errors import HwloopError
from ..graph import Glue, Model, node_label

_Op = Callable[[onnx.NodeProto, list, dict], list]
_OPS: dict[str, _Op] = {}


def _op(*names: str):
    def register(fn: _Op) -> _Op:
        for n in names:
            _OPS[n] = fn
        return fn
    return register


def _attrs(node: onnx.NodeProto) -> dict:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _axis(a: int, rank: int) -> int:
    return a + rank if a < 0 else a


@_op("Identity", "Dropout")
def _identity(node, x, a):
    return [x[0]]


@_op("Relu", "Sigmoid", "Tanh", "Neg", "Abs", "Exp", "Log", "Sqrt", "Reciprocal")
def _unary(node, x, a):
    fn = {"Relu": torch.relu, "Sigmoid": torch.sigmoid, "Tanh": torch.tanh, "Neg": torch.neg, "Abs": torch.abs,
          "Exp": torch.exp, "Log": torch.log, "Sqrt": torch.sqrt, "Reciprocal": torch.reciprocal}[node.op_type]
    return [fn(x[0])]


@_op("LeakyRelu")
def _leaky(node, x, a):
    return [F.leaky_relu(x[0], a.get("alpha", 0.01))]


@_op("Add", "Sub", "Mul", "Div")
def _binary(node, x, a):
    fn = {"Add": torch.add, "Sub": torch.sub, "Mul": torch.mul, "Div": torch.div}[node.op_type]
    return [fn(x[0], x[1])]


@_op("Softmax", "LogSoftmax")
def _softmax(node, x, a):
    t = x[0]
    fn = torch.softmax if node.op_type == "Softmax" else torch.log_softmax
    if a.get("_opset", 13) >= 13:
        return [fn(t, dim=a.get("axis", -1))]
    ax = _axis(a.get("axis", 1), t.dim())                    # before opset 13: over the flattened tail
    flat = t.reshape(int(np.prod(t.shape[:ax])), -1)
    return [fn(flat, dim=1).reshape(t.shape)]


@_op("Flatten")
def _flatten(node, x, a):
    t = x[0]
    ax = _axis(a.get("axis", 1), t.dim())
    return [t.reshape(int(np.prod(t.shape[:ax])), -1)]


@_op("Reshape")
def _reshape(node, x, a):
    t, shape = x[0], [int(v) for v in x[1].tolist()]
    if not a.get("allowzero", 0):
        shape = [t.shape[i] if v == 0 else v for i, v in enumerate(shape)]
    return [t.reshape(shape)]


@_op("Transpose")
def _transpose(node, x, a):
    perm = a.get("perm") or list(range(x[0].dim()))[::-1]
    return [x[0].permute(*perm)]


@_op("Squeeze", "Unsqueeze")
def _squeeze(node, x, a):
    t = x[0]
    axes = a.get("axes") if "axes" in a else ([int(v) for v in x[1].tolist()] if len(x) > 1 and x[1] is not None
                                                else None)
    if node.op_type == "Squeeze":
        if axes is None:
            return [t.squeeze()]
        for ax in sorted((_axis(v, t.dim()) for v in axes), reverse=True):
            t = t.squeeze(ax)
        return [t]
    rank = t.dim() + len(axes)
    for ax in sorted(_axis(v, rank) for v in axes):
        t = t.unsqueeze(ax)
    return [t]


@_op("Concat")
def _concat(node, x, a):
    return [torch.cat(x, dim=a["axis"])]


@_op("Shape")
def _shape(node, x, a):
    dims = list(x[0].shape)[a.get("start", 0):a.get("end", None)]
    return [torch.tensor(dims, dtype=torch.int64)]


@_op("Gather")
def _gather(node, x, a):
    t, idx = x[0], x[1].long()
    ax = _axis(a.get("axis", 0), t.dim())
    idx = torch.where(idx < 0, idx + t.shape[ax], idx)
    return [t.index_select(ax, idx.reshape(-1)).reshape(t.shape[:ax] + idx.shape + t.shape[ax + 1:])]


@_op("Cast")
def _cast(node, x, a):
    dtype = torch.from_numpy(np.zeros(0, helper.tensor_dtype_to_np_dtype(a["to"]))).dtype
    return [x[0].to(dtype)]


@_op("Constant")
def _constant(node, x, a):
    from onnx.reference import ReferenceEvaluator

    return [torch.from_numpy(np.array(ReferenceEvaluator(node).run(None, {})[0]))]


@_op("MaxPool", "AveragePool")
def _pool(node, x, a):
    t = x[0]
    nd = t.dim() - 2
    k = list(a["kernel_shape"])
    strides = list(a.get("strides", [1] * nd))
    pads = list(a.get("pads", [0] * 2 * nd))
    auto = a.get("auto_pad", b"NOTSET")
    if (auto.decode() if isinstance(auto, bytes) else auto) not in ("NOTSET", "VALID") or pads[:nd] != pads[nd:]:
        raise _Unsupported("asymmetric or automatic padding")
    if nd not in (1, 2):
        raise _Unsupported(f"{nd}-D pooling")
    ceil = bool(a.get("ceil_mode", 0))
    if node.op_type == "MaxPool":
        if len(node.output) > 1 and node.output[1]:
            raise _Unsupported("the Indices output")
        fn = F.max_pool1d if nd == 1 else F.max_pool2d
        return [fn(t, k, strides, pads[:nd], list(a.get("dilations", [1] * nd)), ceil_mode=ceil)]
    fn = F.avg_pool1d if nd == 1 else F.avg_pool2d
    return [fn(t, k, strides, pads[:nd], ceil_mode=ceil, count_include_pad=bool(a.get("count_include_pad", 0)))]


@_op("GlobalAveragePool", "GlobalMaxPool")
def _global_pool(node, x, a):
    t = x[0]
    dims = tuple(range(2, t.dim()))
    if node.op_type == "GlobalAveragePool":
        return [t.mean(dim=dims, keepdim=True)]
    return [t.amax(dim=dims, keepdim=True)]


class _Unsupported(Exception):
    """An op of the table used in a form it does not cover."""


SUPPORTED_OPS = tuple(sorted(_OPS))


class TorchGlue:
    """One ``Glue`` segment as a differentiable torch function of its input tensors."""

    def __init__(self, model: Model, glue: Glue, opset: int, need: set[str] | None = None):
        self.glue, self.model = glue, model
        #: the segment's nodes the scored output depends on (a label output beside it is not trained)
        self.nodes = [n for n in glue.nodes if need is None or any(o in need for o in n.output)]
        inits = {i.name: i for i in model.proto.graph.initializer}
        self.consts = {t: torch.from_numpy(np.array(numpy_helper.to_array(inits[t])))
                       for n in self.nodes for t in n.input if t in inits}
        self.opset = opset
        for node in self.nodes:
            if node.op_type not in _OPS or node.domain not in ("", "ai.onnx"):
                raise HwloopError(f"{model.path}: node {node_label(node)!r} ({node.op_type}): digital glue that "
                                  f"finetune cannot differentiate (supported: {', '.join(SUPPORTED_OPS)})")

    def __call__(self, feeds: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        env = dict(self.consts)
        env.update(feeds)
        for node in self.nodes:
            a = _attrs(node)
            a["_opset"] = self.opset
            try:
                outs = _OPS[node.op_type](node, [env[t] if t else None for t in node.input], a)
            except _Unsupported as e:
                raise HwloopError(f"{self.model.path}: node {node_label(node)!r} ({node.op_type}): finetune cannot "
                                  f"differentiate {e}") from None
            env.update(zip(node.output, outs))
        return {t: env[t] for t in self.glue.outputs if t in env}


def scored_tensors(model: Model) -> set[str]:
    """Every tensor the scored output (``model.output_name``) depends on: finetune trains and checks that
    path only (another graph output, e.g. skl2onnx's label, may use ops with no gradient)."""
    need = {model.output_name}
    for step in reversed(model.steps):
        if isinstance(step, Glue):
            for node in reversed(step.nodes):
                if any(o in need for o in node.output):
                    need.update(t for t in node.input if t)
        elif step.output in need:
            need.add(step.input)
    return need


def convert(model: Model) -> dict[int, TorchGlue]:
    """A ``TorchGlue`` for every glue step of ``model`` on the scored output's path (by position in
    ``model.steps``); refuses unknown ops there."""
    opset = next((o.version for o in model.proto.opset_import if o.domain in ("", "ai.onnx")), 13)
    need = scored_tensors(model)
    return {i: TorchGlue(model, s, opset, need) for i, s in enumerate(model.steps)
            if isinstance(s, Glue) and any(o in need for n in s.nodes for o in n.output)}


def check_against_onnxruntime(model: Model, tg: TorchGlue, feeds: dict[str, np.ndarray]) -> None:
    """Run the segment both ways on ``feeds``; a difference beyond float32 rounding is an error naming it."""
    if any(t not in feeds for t in tg.glue.inputs):
        return                           # fed in part by a head off the scored path: the whole-model check covers it
    want = tg.glue.run(feeds)
    got = tg({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in feeds.items()})
    for name, ref in want.items():
        if name not in got:              # off the scored output's path: not trained, not converted
            continue
        out = got[name].detach().numpy()
        ref = np.asarray(ref)
        if out.shape != ref.shape or not np.allclose(out, ref, rtol=1e-4, atol=1e-5 * (1 + np.abs(ref).max())):
            node = tg.glue.nodes[0]
            raise HwloopError(f"{model.path}: digital segment starting at node {node_label(node)!r} "
                              f"({node.op_type}): its torch form differs from onnxruntime on tensor {name!r} "
                              "(please report this model)")
