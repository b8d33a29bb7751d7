"""scikit-learn's linear models (ONNX-ML LinearClassifier / LinearRegressor) rewritten as standard ops.

skl2onnx writes LogisticRegression, LinearSVC and the linear regressors as one
ONNX-ML node holding the coefficients as attributes; onnxruntime runs it as a
black box.  Written as a Gemm (the product a device runs), the post-transform
(Sigmoid / Softmax) and, for a classifier, ArgMax + Gather of the class labels,
the same model becomes an analog layer with the host ops around it.  Each
rewrite is one function in ``REWRITES``; the result equals onnxruntime's
(checked by the tests).
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ..errors import HwloopError
from .view import attrs, node_label

_POST = {"NONE": None, "LOGISTIC": "Sigmoid", "SOFTMAX": "Softmax"}


def _gemm(node, x: str, out: str, coef: list, intercepts: list, targets: int) -> tuple[list, list]:
    base = node_label(node)
    w = np.asarray(coef, np.float32).reshape(targets, -1)
    b = np.broadcast_to(np.asarray(intercepts or [0.0], np.float32), (targets,))
    inits = [numpy_helper.from_array(w, f"{base}/coefficients"), numpy_helper.from_array(b.copy(), f"{base}/intercepts")]
    return [helper.make_node("Gemm", [x, inits[0].name, inits[1].name], [out], name=f"{base}/Gemm", transB=1)], inits


def _post(node, raw: str, out: str, how: str, path) -> list:
    if how not in _POST:
        raise HwloopError(f"{path}: node {node_label(node)!r} ({node.op_type}): post_transform {how} is not mapped "
                          f"(hwloop maps {', '.join(_POST)})")
    op = _POST[how]
    return [helper.make_node(op or "Identity", [raw], [out], name=f"{node_label(node)}/{op or 'Identity'}",
                             **({"axis": -1} if op == "Softmax" else {}))]


def linear_classifier(node, path, opset: int) -> tuple[list, list]:
    a = attrs(node)
    labels = a.get("classlabels_ints") or a.get("classlabels_strings")
    base, raw = node_label(node), f"{node_label(node)}/raw_scores"
    targets = len(a.get("intercepts", [])) or len(labels)
    if len(labels) == 2 and targets == 1:
        raise HwloopError(f"{path}: node {base!r} (LinearClassifier): one score for two classes is not mapped")
    nodes, inits = _gemm(node, node.input[0], raw, a["coefficients"], a.get("intercepts", []), targets)
    scores = node.output[1] if len(node.output) > 1 and node.output[1] else f"{base}/scores"
    nodes += _post(node, raw, scores, a.get("post_transform", "NONE"), path)
    if node.output[0]:
        lab = np.asarray(labels)
        lab_init = numpy_helper.from_array(lab.astype(np.int64) if lab.dtype.kind in "iu" else lab.astype(object),
                                           f"{base}/classlabels")
        inits.append(lab_init)
        nodes += [helper.make_node("ArgMax", [scores], [f"{base}/argmax"], axis=1, keepdims=0, name=f"{base}/ArgMax"),
                  helper.make_node("Gather", [lab_init.name, f"{base}/argmax"], [node.output[0]], axis=0,
                                   name=f"{base}/label")]
    return nodes, inits


def linear_regressor(node, path, opset: int) -> tuple[list, list]:
    a = attrs(node)
    raw = f"{node_label(node)}/raw"
    nodes, inits = _gemm(node, node.input[0], raw, a["coefficients"], a.get("intercepts", []), int(a.get("targets", 1)))
    return nodes + _post(node, raw, node.output[0], a.get("post_transform", "NONE"), path), inits


def normalizer(node, path, opset: int) -> tuple[list, list]:
    """x / sum|x| (L1), x / sqrt(sum x^2) (L2) or x / max x (MAX), per row."""
    how, base = attrs(node).get("norm", "MAX"), node_label(node)
    reduce = {"L1": "ReduceL1", "L2": "ReduceL2", "MAX": "ReduceMax"}.get(how)
    if reduce is None:
        raise HwloopError(f"{path}: node {base!r} (Normalizer): norm {how} is not mapped")
    axes = numpy_helper.from_array(np.array([1], np.int64), f"{base}/axes")
    as_input = opset >= 18   # reductions take axes as an input from opset 18, as an attribute before
    red = helper.make_node(reduce, [node.input[0]] + ([axes.name] if as_input else []), [f"{base}/norm"],
                           keepdims=1, name=f"{base}/{reduce}", **({} if as_input else {"axes": [1]}))
    div = helper.make_node("Div", [node.input[0], f"{base}/norm"], [node.output[0]], name=f"{base}/Div")
    return [red, div], [axes] if as_input else []


REWRITES = {"LinearClassifier": linear_classifier, "LinearRegressor": linear_regressor, "Normalizer": normalizer}


def rewrite(proto: onnx.ModelProto, path) -> onnx.ModelProto:
    """``proto`` with every node of ``REWRITES`` replaced by standard ops (unchanged when there is none)."""
    if not any(n.op_type in REWRITES and n.domain == "ai.onnx.ml" for n in proto.graph.node):
        return proto
    out = onnx.ModelProto()
    out.CopyFrom(proto)
    del out.graph.node[:]
    opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 1)
    for n in proto.graph.node:
        if n.op_type in REWRITES and n.domain == "ai.onnx.ml":
            nodes, inits = REWRITES[n.op_type](n, path, opset)
            out.graph.node.extend(nodes)
            out.graph.initializer.extend(inits)
        else:
            out.graph.node.append(n)
    return out
