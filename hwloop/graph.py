"""Import an ONNX model: find its analog layers and the digital glue between them.

An analog layer is a product with constant weights (Gemm, MatMul [+ Add], Conv)
plus what a crossbar computes with it: its bias, a BatchNormalization right
after it (folded into weight and bias) and the activation that follows
(Sigmoid, Tanh, Relu; otherwise linear).  Everything else is digital glue,
run on the host by onnxruntime so it keeps exactly ONNX's semantics: the
nodes between two analog layers become one sub-model ("segment") with a
dynamic batch dimension, and each segment gets one InferenceSession when the
model is loaded.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper, numpy_helper

from .errors import HwloopError
from .inputs import finite_initializers
from .layer import AnalogLayer, ConvSpec

_ACTIVATIONS = {"Sigmoid": "sigmoid", "Tanh": "tanh", "Relu": "relu"}
_FLOAT_TYPES = (onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16)
_STANDARD_DOMAINS = ("", "ai.onnx", "ai.onnx.ml", "com.microsoft")
#: ops folded to constants when all their inputs are constant (weights behind a Transpose, ...)
_FOLDABLE = {"Identity", "Transpose", "Reshape", "Cast", "Squeeze", "Unsqueeze", "Flatten",
             "Mul", "Div", "Add", "Sub", "Neg", "Sqrt", "Reciprocal"}


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

    def table(self) -> list[dict]:
        """One row per step (analog layer or glue node) for ``hwloop inspect``."""
        shapes = _shapes(self.proto)
        inits = {i.name: int(np.prod(i.dims)) for i in self.proto.graph.initializer}

        def shape(name: str) -> str:
            dims = shapes.get(name)
            if dims is None:
                return "?"
            if not dims:
                return "scalar"
            return "x".join(("N" if i == 0 else "?") if d is None else str(d) for i, d in enumerate(dims))

        rows = []
        for step in self.steps:
            if isinstance(step, AnalogLayer):
                rows.append(dict(index=str(step.index), name=step.name, kind="analog", op=step.meta["ops"],
                                 shape=f"{shape(step.input)} -> {shape(step.output)}",
                                 activation=step.activation, weights=str(step.weight.size)))
                continue
            for node in step.nodes:
                rows.append(_node_row(node, "digital", shape, inits))
        rows += [_node_row(node, "unused", shape, inits) for node in self.unused]
        return rows


def _node_row(node, kind, shape, inits) -> dict:
    data = [t for t in node.input if t and t not in inits]
    n_w = sum(inits.get(t, 0) for t in node.input)
    return dict(index="-", name=node.name, kind=kind, op=node.op_type,
                shape=f"{shape(data[0]) if data else '-'} -> {shape(node.output[0]) if node.output else '-'}",
                activation="", weights=str(n_w) if n_w else "")


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


def load_model(path: str | Path) -> Model:
    """Load, check and partition ``path``; every problem is one HwloopError naming the file and node."""
    path = Path(path)
    if not path.is_file():
        raise HwloopError(f"{path}: no such model file")
    raw = path.read_bytes()
    try:
        proto = onnx.load_model_from_string(raw)
        if any(i.data_location == onnx.TensorProto.EXTERNAL for i in proto.graph.initializer):
            onnx.external_data_helper.load_external_data_for_model(proto, str(path.parent))
    except Exception as e:
        raise HwloopError(f"{path}: not a readable ONNX model ({_first_line(e)})") from None
    if not proto.graph.node:
        raise HwloopError(f"{path}: not a readable ONNX model (no graph nodes; truncated or not ONNX?)")
    try:
        onnx.checker.check_model(proto)
    except Exception as e:
        raise HwloopError(f"{path}: invalid ONNX model: {_first_line(e)}") from None
    for node in proto.graph.node:
        if node.domain not in _STANDARD_DOMAINS:
            raise HwloopError(f"{path}: node {node.name!r} ({node.op_type}, domain {node.domain!r}): "
                              "not a standard ONNX operator, onnxruntime cannot run it")
    try:
        proto = onnx.shape_inference.infer_shapes(proto, strict_mode=True, data_prop=True)
    except Exception as e:
        raise HwloopError(f"{path}: shape inference failed: {_first_line(e)}") from None
    finite_initializers(proto, path)
    return _Importer(path, proto, hashlib.sha256(raw).hexdigest()).build()


def node_label(node: onnx.NodeProto) -> str:
    """A node's name, or its first output when the exporter left it unnamed."""
    return node.name or (node.output[0] if node.output else node.op_type)


def _first_line(e: Exception) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def _shapes(proto: onnx.ModelProto) -> dict[str, list]:
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


def _elem_types(proto: onnx.ModelProto) -> dict[str, int]:
    g = proto.graph
    out = {vi.name: vi.type.tensor_type.elem_type for vi in list(g.input) + list(g.value_info) + list(g.output)
           if vi.type.HasField("tensor_type")}
    out.update({i.name: i.data_type for i in g.initializer})
    return out


def _per_neuron(c: np.ndarray, dims: list | None) -> np.ndarray | None:
    """``c`` as one value per output neuron/channel when adding it to a (batch, channel, ...) tensor is a
    bias (same value across the spatial positions); None otherwise."""
    if not dims or any(d is None for d in dims[1:]) or c.ndim > len(dims):
        return None
    try:
        full = np.broadcast_to(c, [1] * (len(dims) - c.ndim) + list(c.shape))
        if full.shape[0] != 1:
            return None
        full = np.broadcast_to(full[0], dims[1:]).reshape(dims[1], -1)
    except ValueError:
        return None
    return full[:, 0].astype(np.float64) if np.all(full == full[:, :1]) else None


class _Importer:
    """One pass over the graph: pick the output, find analog layers, cut glue segments."""

    def __init__(self, path: Path, proto: onnx.ModelProto, sha256: str):
        self.path, self.proto, self.sha256 = path, proto, sha256
        g = proto.graph
        self.nodes = list(g.node)
        self.inits = {i.name: i for i in g.initializer}
        self.shapes = _shapes(proto)
        self.types = _elem_types(proto)
        self.producer = {o: n for n in self.nodes for o in n.output if o}
        self.consumers: dict[str, list] = {}
        for n in self.nodes:
            for t in n.input:
                if t:
                    self.consumers.setdefault(t, []).append(n)
        self._const_cache: dict[str, tuple[np.ndarray, list] | None] = {}

    def err(self, node: onnx.NodeProto, why: str) -> HwloopError:
        return HwloopError(f"{self.path}: node {node_label(node)!r} ({node.op_type}): {why}")

    # -- inputs and outputs ------------------------------------------------
    def graph_input(self) -> onnx.ValueInfoProto:
        real = [i for i in self.proto.graph.input if i.name not in self.inits]
        for vi in real:
            if not vi.type.HasField("tensor_type"):
                raise HwloopError(f"{self.path}: graph input {vi.name!r} is not a tensor "
                                  f"({vi.type.WhichOneof('value')}); hwloop feeds one tensor of samples")
        if len(real) != 1:
            raise HwloopError(f"{self.path}: the model has {len(real)} graph inputs "
                              f"({', '.join(v.name for v in real)}); hwloop feeds exactly one")
        if real[0].type.tensor_type.elem_type not in _FLOAT_TYPES:
            raise HwloopError(f"{self.path}: graph input {real[0].name!r} is not a float tensor")
        return real[0]

    def pick_output(self) -> str:
        """The class scores: a float (batch, classes) output, or what feeds skl2onnx's ZipMap."""
        candidates = [o.name for o in self.proto.graph.output]
        candidates += [n.input[0] for n in self.nodes if n.op_type == "ZipMap"]
        for name in candidates:
            if self.types.get(name) in _FLOAT_TYPES and len(self.shapes.get(name, [])) == 2:
                return name
        raise HwloopError(f"{self.path}: no float (batch, classes) output among "
                          f"{', '.join(o.name for o in self.proto.graph.output)}")

    # -- constants -----------------------------------------------------------
    def const(self, name: str) -> tuple[np.ndarray, list] | None:
        """The value of tensor ``name`` if it is constant, with the nodes that computed it."""
        if name in self._const_cache:
            return self._const_cache[name]
        value = None
        if name in self.inits:
            value = (numpy_helper.to_array(self.inits[name]), [])
        elif name in self.producer:
            node = self.producer[name]
            if node.op_type == "Constant" and node.attribute:
                from onnx.reference import ReferenceEvaluator
                value = (ReferenceEvaluator(node).run(None, {})[0], [node])
            elif node.op_type in _FOLDABLE:
                parts = [self.const(t) if t else (None, []) for t in node.input]
                if all(p is not None for p in parts):
                    from onnx.reference import ReferenceEvaluator
                    feeds = {t: p[0] for t, p in zip(node.input, parts) if t}
                    out = ReferenceEvaluator(node).run(None, feeds)
                    value = (out[list(node.output).index(name)], [n for p in parts for n in p[1]] + [node])
        self._const_cache[name] = value
        return value

    def sole_consumer(self, tensor: str) -> onnx.NodeProto | None:
        """The one node reading ``tensor``, when nothing else (not even a graph output) needs it."""
        users = self.consumers.get(tensor, [])
        if len(users) != 1 or tensor in self.outputs_needed:
            return None
        return users[0]

    # -- analog layers ---------------------------------------------------------
    def product(self, node) -> dict | None:
        """weight (n_out, n_in), bias, input tensor and absorbed nodes of a product node; None = glue."""
        a = lambda k, d: next((helper.get_attribute_value(x) for x in node.attribute if x.name == k), d)  # noqa: E731
        if node.op_type == "Gemm":
            x, b = node.input[0], self.const(node.input[1])
            if b is None or self.const(x) is not None:
                return None
            absorbed, chain = list(b[1]), []
            if a("transA", 0):
                t = self.producer.get(x)
                perm = [list(helper.get_attribute_value(p)) for p in t.attribute if p.name == "perm"] if t else []
                perm = perm[0] if perm else []
                if t is None or t.op_type != "Transpose" or perm not in ([], [1, 0]) or self.sole_consumer(x) is None:
                    raise self.err(node, "transA=1 on a non-constant input puts the batch in the second "
                                         "dimension; hwloop maps only (batch, features) products")
                x = t.input[0]
                chain = [t]
            w = b[0].astype(np.float64)
            w = w if a("transB", 0) else w.T                    # -> (n_out, n_in)
            w = w * a("alpha", 1.0)
            bias = np.zeros(w.shape[0])
            if len(node.input) > 2 and node.input[2]:
                c = self.const(node.input[2])
                if c is None:
                    raise self.err(node, "bias C is not a constant")
                if c[0].size not in (1, w.shape[0]):
                    raise self.err(node, f"bias C of shape {list(c[0].shape)} is not per output neuron")
                bias = np.broadcast_to(c[0].reshape(-1), w.shape[:1]) * a("beta", 1.0)
                absorbed += c[1]
            return dict(x=x, w=w, b=bias, nodes=absorbed + chain, chain=chain)
        if node.op_type == "MatMul":
            x, b = node.input[0], self.const(node.input[1])
            if b is None or self.const(x) is not None:
                return None
            if b[0].ndim != 2 or len(self.shapes.get(x, [])) != 2:
                raise self.err(node, f"a product of a rank-{len(self.shapes.get(x, [])) or '?'} input with a "
                                     f"rank-{b[0].ndim} weight; hwloop maps (batch, features) x (in, out)")
            return dict(x=x, w=b[0].T.astype(np.float64), b=np.zeros(b[0].shape[1]), nodes=list(b[1]))
        if node.op_type == "Conv":
            x, wc = node.input[0], self.const(node.input[1])
            if wc is None or self.const(x) is not None:
                return None
            w = wc[0].astype(np.float64)
            if w.ndim not in (3, 4):
                raise self.err(node, f"{w.ndim - 2}-D convolution; hwloop maps 1-D and 2-D convolutions")
            absorbed = list(wc[1])
            bias = np.zeros(w.shape[0])
            if len(node.input) > 2 and node.input[2]:
                c = self.const(node.input[2])
                if c is None:
                    raise self.err(node, "bias is not a constant")
                bias, absorbed = c[0].astype(np.float64), absorbed + c[1]
            group = a("group", 1)
            c_out, c_g = w.shape[:2]
            dense = np.zeros((c_out, c_g * group) + w.shape[2:])
            per = c_out // group   # a group conv is a block-diagonal dense product
            for g in range(group):
                dense[g * per:(g + 1) * per, g * c_g:(g + 1) * c_g] = w[g * per:(g + 1) * per]
            return dict(x=x, w=dense.reshape(c_out, -1), b=bias, nodes=absorbed,
                        conv=self.conv_spec(node, x, w.shape, group))
        return None

    def conv_spec(self, node, x: str, wshape: tuple, group: int) -> ConvSpec:
        a = {x_.name: helper.get_attribute_value(x_) for x_ in node.attribute}
        dims = self.shapes.get(x)
        k = tuple(wshape[2:])
        nd = len(k)
        if dims is None or len(dims) != nd + 2 or any(d is None for d in dims[2:]) or dims[1] is None:
            raise self.err(node, f"input {x!r} has an unknown channel or spatial size; export with a fixed image size")
        strides = tuple(a.get("strides", [1] * nd))
        dil = tuple(a.get("dilations", [1] * nd))
        pads = list(a.get("pads", [0] * 2 * nd))
        auto = a.get("auto_pad", b"NOTSET")
        auto = auto.decode() if isinstance(auto, bytes) else auto
        if auto == "VALID":
            pads = [0] * 2 * nd
        elif auto in ("SAME_UPPER", "SAME_LOWER"):
            for i in range(nd):
                size = dims[2 + i]
                total = max((-(-size // strides[i]) - 1) * strides[i] + (k[i] - 1) * dil[i] + 1 - size, 0)
                small = total // 2
                pads[i], pads[i + nd] = (small, total - small) if auto == "SAME_UPPER" else (total - small, small)
        return ConvSpec(kernel_shape=k, strides=strides, pads=tuple(pads), dilations=dil,
                        in_channels=int(dims[1]), out_channels=int(wshape[0]))

    def absorb(self, node, index: int) -> AnalogLayer | None:
        """The analog layer starting at product ``node``, with everything folded into it."""
        prod = self.product(node)
        if prod is None:
            return None
        w, b, out = prod["w"], prod["b"].astype(np.float64), node.output[0]
        nodes, chain = prod["nodes"] + [node], [node] + prod.get("chain", [])
        ops, act = [node.op_type], "linear"
        allowed = ["Add", "BatchNormalization", *_ACTIVATIONS]   # a bias Add (per neuron / channel) may come first
        while (nxt := self.sole_consumer(out)) is not None and nxt.op_type in allowed:
            i = allowed.index(nxt.op_type)
            if nxt.op_type == "Add":
                other = nxt.input[1] if nxt.input[0] == out else nxt.input[0]
                c = self.const(other)
                per = None if c is None else _per_neuron(c[0], self.shapes.get(out))
                if per is None:
                    break
                b = b + per
                nodes += c[1]
            elif nxt.op_type == "BatchNormalization":
                parts = [self.const(t) for t in nxt.input[1:5]]
                training = any(x.name == "training_mode" and x.i for x in nxt.attribute)
                if any(p is None for p in parts) or len(nxt.output) > 1 or training:
                    break
                scale, beta, mean, var = (p[0].astype(np.float64).reshape(-1) for p in parts)
                eps = next((x.f for x in nxt.attribute if x.name == "epsilon"), 1e-5)
                s = scale / np.sqrt(var + eps)
                w, b = w * s[:, None], (b - mean) * s + beta
                nodes += [n for p in parts for n in p[1]]
            else:
                act = _ACTIVATIONS[nxt.op_type]
            ops.append(nxt.op_type)
            nodes.append(nxt)
            chain.append(nxt)
            out = nxt.output[0]
            allowed = allowed[i + 1:]
            if act != "linear":
                break
        dtype = onnx.helper.tensor_dtype_to_np_dtype(self.types.get(out, onnx.TensorProto.FLOAT))
        layer = AnalogLayer(index=index, name=node.name or out, op=node.op_type,
                            weight=w.astype(np.float32), bias=b.astype(np.float32), activation=act,
                            input=prod["x"], output=out, nodes=tuple(n.name for n in nodes), conv=prod.get("conv"),
                            meta={"ops": "+".join(ops), "dtype": str(np.dtype(dtype))})
        if layer.conv is not None:
            layer.meta["out_spatial"] = list(self.shapes[out][2:]) if out in self.shapes else None
            if layer.meta["out_spatial"] is None or None in layer.meta["out_spatial"]:
                raise self.err(node, "output spatial size unknown after shape inference")
        self._absorbed_nodes[layer.index] = chain  # constant-producing nodes stay available to glue
        return layer

    # -- the plan --------------------------------------------------------------
    def build(self) -> Model:
        gin = self.graph_input()
        self.batch_fixed = (self.shapes.get(gin.name) or [None])[0] is not None
        output = self.pick_output()
        self.outputs_needed = {o.name for o in self.proto.graph.output} | {output}
        self._absorbed_nodes: dict[int, list] = {}
        needed = self.ancestors([output], stop=set())
        layers: list[AnalogLayer] = []
        absorbed: set[int] = set()
        for node in self.nodes:
            if id(node) in needed and id(node) not in absorbed and node.op_type in ("Gemm", "MatMul", "Conv"):
                layer = self.absorb(node, len(layers))
                if layer is not None:
                    layers.append(layer)
                    absorbed |= {id(n) for n in self._absorbed_nodes[layer.index]}
        if not layers:
            raise HwloopError(f"{self.path}: no analog layer (no Gemm, MatMul or Conv with constant weights "
                              f"feeds output {output!r})")
        steps: list = []
        produced_by_layer = {layer.output: layer for layer in layers}
        done: set[int] = set(absorbed)
        for layer in layers:
            seg = self.ancestors([layer.input], stop=done, layer_outputs=produced_by_layer)
            if seg:
                steps.append(seg)
                done |= set(seg)
            steps.append(layer)
        final = self.ancestors([output], stop=done, layer_outputs=produced_by_layer)
        if final:
            steps.append(final)
            done |= set(final)
        glue_steps = self.make_glue(steps, output)
        unused = [n for n in self.nodes if id(n) not in done and id(n) not in needed]
        shape = self.shapes.get(gin.name) or [None]
        return Model(path=self.path, sha256=self.sha256, proto=self.proto, layers=layers, steps=glue_steps,
                     input_name=gin.name, input_shape=tuple(shape[1:]),
                     input_dtype=np.dtype(helper.tensor_dtype_to_np_dtype(gin.type.tensor_type.elem_type)),
                     output_name=output, n_classes=self.shapes[output][1], unused=unused, batch_dim=shape[0])

    def ancestors(self, tensors: list[str], stop: set[int],
                  layer_outputs: dict | None = None) -> dict[int, onnx.NodeProto]:
        """Nodes (by id, in graph order) computing ``tensors``, not crossing ``stop`` nodes or layer outputs."""
        found: dict[int, onnx.NodeProto] = {}
        todo = list(tensors)
        while todo:
            t = todo.pop()
            if layer_outputs and t in layer_outputs:
                continue
            node = self.producer.get(t)
            if node is None or id(node) in stop or id(node) in found:
                continue
            found[id(node)] = node
            todo += [x for x in node.input if x]
            for attr in node.attribute:  # outer-scope names used inside subgraphs (If/Loop bodies)
                for sub in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
                    todo += [x for n in sub.node for x in n.input if x]
        order = {id(n): i for i, n in enumerate(self.nodes)}
        return dict(sorted(found.items(), key=lambda kv: order[kv[0]]))

    def make_glue(self, steps: list, output: str) -> list:
        """Turn each node set in ``steps`` into a :class:`Glue` with its own session."""
        later_needs: list[set[str]] = []
        need: set[str] = {output}
        for step in reversed(steps):  # tensors each step's successors read
            later_needs.append(set(need))
            if isinstance(step, AnalogLayer):
                need.add(step.input)
            else:
                need |= {t for n in step.values() for t in n.input if t}
        later_needs.reverse()
        out = []
        for step, needs in zip(steps, later_needs):
            if isinstance(step, AnalogLayer):
                out.append(step)
                continue
            nodes = list(step.values())
            made = {t for n in nodes for t in n.output if t}
            used = [t for n in nodes for t in n.input if t]
            inputs = list(dict.fromkeys(t for t in used if t not in made and t not in self.inits))
            outputs = [t for t in dict.fromkeys(t for n in nodes for t in n.output if t) if t in needs]
            out.append(self.glue(nodes, inputs, outputs))
        return out

    def glue(self, nodes: list, inputs: list[str], outputs: list[str]) -> Glue:
        used = {t for n in nodes for t in n.input}
        for n in nodes:
            for attr in n.attribute:
                for sub in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
                    used |= {x for sn in sub.node for x in sn.input}

        def vi(name):
            return helper.make_tensor_value_info(name, self.types.get(name, onnx.TensorProto.FLOAT), None)

        graph = helper.make_graph(nodes, "hwloop_glue", [vi(t) for t in inputs], [vi(t) for t in outputs],
                                  initializer=[self.inits[t] for t in used if t in self.inits])
        sub = helper.make_model(graph, opset_imports=self.proto.opset_import, ir_version=self.proto.ir_version)
        sub.functions.extend(self.proto.functions)
        opts = ort.SessionOptions()
        opts.log_severity_level = 4   # failures become one HwloopError, not log lines on stderr
        # glue is light; threads spinning after it would steal the cores the next analog layer needs
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            session = ort.InferenceSession(sub.SerializeToString(), opts, providers=["CPUExecutionProvider"])
        except Exception as e:
            msg = _first_line(e)
            culprit = next((n for n in nodes if n.name and n.name in msg), None)
            culprit = culprit or next((n for n in nodes if n.op_type in msg), nodes[0])
            raise self.err(culprit, f"onnxruntime cannot run it: {msg}") from None
        dtypes = [np.dtype(helper.tensor_dtype_to_np_dtype(self.types.get(t, onnx.TensorProto.FLOAT)))
                  for t in inputs]
        unbatched = frozenset() if self.batch_fixed else frozenset(
            t for t in inputs if (d := self.shapes.get(t)) is not None and (not d or d[0] is not None))
        return Glue(nodes=nodes, inputs=inputs, outputs=outputs, input_dtypes=dtypes, session=session,
                    unbatched=unbatched)
