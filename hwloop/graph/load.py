"""Load an ONNX model and partition it into analog layers and digital glue.

Every node whose op has a product class (``products.PRODUCT_OPS``) is asked
to become an analog layer; what follows it folds in (``folds``).  The nodes
between two analog layers become one digital segment with its own
onnxruntime session (exact ONNX semantics, dynamic batch dimension).
Products that stay digital are kept, with their reason, for ``inspect`` and
the run summary.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper

from ..errors import HwloopError
from ..inputs import finite_initializers
from ..layer import AnalogLayer
from .folds import ACTIVATION_OPS, FOLDS, Fold, composite
from .mlops import rewrite
from .quantized import rewrite_dynamic
from .model import DigitalProduct, Glue, Model
from .products import PRODUCT_OPS, Product
from .recurrent_ops import RecurrentProduct
from .view import FLOAT_TYPES, GraphView, first_line

#: graph outputs a run can record (numbers, one array per output)
RECORDABLE_TYPES = set(FLOAT_TYPES) | {getattr(onnx.TensorProto, t) for t in (
    "INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16", "UINT32", "UINT64", "BOOL")}

_STANDARD_DOMAINS = ("", "ai.onnx", "ai.onnx.ml", "com.microsoft")


def load_model(path: str | Path, output: str | None = None) -> Model:
    """Load, check and partition ``path``; every problem is one HwloopError naming the file and node.

    ``output``: the graph output (or tensor) whose class scores give the accuracy; by default the first
    float (batch, classes) output, or what feeds skl2onnx's ZipMap."""
    path = Path(path)
    if not path.is_file():
        raise HwloopError(f"{path}: no such model file")
    raw = path.read_bytes()
    try:
        proto = onnx.load_model_from_string(raw)
        if any(i.data_location == onnx.TensorProto.EXTERNAL for i in proto.graph.initializer):
            onnx.external_data_helper.load_external_data_for_model(proto, str(path.parent))
    except Exception as e:
        raise HwloopError(f"{path}: not a readable ONNX model ({first_line(e)})") from None
    if not proto.graph.node:
        raise HwloopError(f"{path}: not a readable ONNX model (no graph nodes; truncated or not ONNX?)")
    try:
        onnx.checker.check_model(proto)
    except Exception as e:
        raise HwloopError(f"{path}: invalid ONNX model: {first_line(e)}") from None
    for node in proto.graph.node:
        if node.domain not in _STANDARD_DOMAINS:
            raise HwloopError(f"{path}: node {node.name!r} ({node.op_type}, domain {node.domain!r}): "
                              "not a standard ONNX operator, onnxruntime cannot run it")
    proto = rewrite_dynamic(rewrite(proto, path), path)
    try:
        proto = onnx.shape_inference.infer_shapes(proto, strict_mode=True, data_prop=True)
    except Exception as e:
        raise HwloopError(f"{path}: shape inference failed: {first_line(e)}") from None
    finite_initializers(proto, path)
    return _Importer(path, proto, hashlib.sha256(raw).hexdigest(), output).build()


class _Importer:
    """One pass over the graph: pick the output, find analog layers, cut glue segments."""

    def __init__(self, path: Path, proto: onnx.ModelProto, sha256: str, output: str | None = None):
        self.path, self.proto, self.sha256, self.output = path, proto, sha256, output
        self.g = GraphView(path, proto)
        self.nodes = self.g.nodes

    # -- inputs and outputs ------------------------------------------------
    def graph_inputs(self) -> list[onnx.ValueInfoProto]:
        real = [i for i in self.proto.graph.input if i.name not in self.g.inits]
        for vi in real:
            if not vi.type.HasField("tensor_type"):
                raise HwloopError(f"{self.path}: graph input {vi.name!r} is not a tensor "
                                  f"({vi.type.WhichOneof('value')}); hwloop feeds tensors of samples")
        if not real:
            raise HwloopError(f"{self.path}: the model has no graph input")
        return real

    def pick_output(self) -> str:
        """The class scores: a float (batch, classes) output, or what feeds skl2onnx's ZipMap."""
        if self.output is not None:
            if self.output not in self.g.producer:
                raise HwloopError(f"{self.path}: no tensor {self.output!r} to take the class scores from "
                                  f"(outputs: {', '.join(o.name for o in self.proto.graph.output)})")
            if len(self.g.shapes.get(self.output) or []) != 2:
                raise HwloopError(f"{self.path}: output {self.output!r} is not (batch, classes)")
            return self.output
        candidates = [o.name for o in self.proto.graph.output]
        candidates += [n.input[0] for n in self.nodes if n.op_type == "ZipMap"]
        for name in candidates:
            if self.g.types.get(name) in FLOAT_TYPES and len(self.g.shapes.get(name, [])) == 2:
                return name
        raise HwloopError(f"{self.path}: no float (batch, classes) output among "
                          f"{', '.join(o.name for o in self.proto.graph.output)}")

    def recorded_outputs(self) -> tuple[list[tuple[str, str]], list[str]]:
        """Every graph output a run records, as (graph output name, tensor computed for it): a numeric
        tensor itself, a ZipMap'd output as the tensor the ZipMap reads; and a note for each other one.
        The tensors count as graph outputs from here on (no fold absorbs them)."""
        kept, notes = [], []
        for o in self.proto.graph.output:
            t = o.name
            node = self.g.producer.get(t)
            if node is not None and node.op_type == "ZipMap":
                t = node.input[0]
            if self.g.types.get(t) not in RECORDABLE_TYPES or not (t in self.g.producer or t in self.g.shapes):
                notes.append(f"graph output {o.name!r} is not a numeric tensor: not recorded")
                continue
            kept.append((o.name, t))
        self.g.graph_outputs |= {t for _, t in kept}
        return kept, notes

    # -- analog layers ---------------------------------------------------------
    def product(self, node) -> Product | str | None:
        """The node's Product, a reason it stays digital, or None (not a product: all operands constant)."""
        op = PRODUCT_OPS.get(node.op_type)
        if op is None or all(self.g.const(t) is not None for t in node.input if t):
            return None
        return op.match(node, self.g)

    def absorb(self, node, prod: Product, index: int) -> AnalogLayer:
        """The analog layer of product ``node``, with everything that folds into it."""
        f = Fold(prod.weight, prod.bias.astype(np.float64), node.output[0], prod.feature_axes,
                 nodes=prod.nodes + prod.chain + [node], chain=[node] + prod.chain, ops=[node.op_type])
        while f.activation == "linear":
            nxt = self.g.sole_consumer(f.out)
            if nxt is not None and nxt.op_type in FOLDS and FOLDS[nxt.op_type](nxt, f, self.g):
                continue
            if (nxt is None or nxt.op_type not in ACTIVATION_OPS) and composite(f, self.g):
                continue
            break
        g, out = self.g, f.out
        layer = AnalogLayer(index=index, name=node.name or out, op=node.op_type,
                            weight=f.weight.astype(np.float32), bias=f.bias.astype(np.float32),
                            activation=f.activation, act_params=f.act_params, input=prod.x, output=out,
                            nodes=tuple(n.name for n in f.nodes), conv=prod.conv, tmap=prod.tmap,
                            meta={"ops": "+".join(f.ops), "dtype": str(g.np_dtype(out))})
        dims = g.shapes.get(out)
        if layer.conv is not None:
            spatial = list(dims[2:]) if dims is not None else None
            # unknown after shape inference (a dynamic height/width): taken from the data at run time
            layer.meta["out_spatial"] = None if spatial is None or None in spatial else spatial
        if layer.tmap is not None and layer.tmap.rows is not None:
            layer.meta["kept"] = list(layer.tmap.rows)
        elif layer.tmap is not None:
            in_dims = list(g.shapes.get(prod.x) or [])
            if in_dims:
                del in_dims[layer.tmap.batch_axis]
            per = [in_dims[p] for p in layer.tmap.in_perm] if in_dims else None
            layer.meta["kept"] = per[:layer.tmap.n_kept] if per else None
        self._absorbed_nodes[layer.index] = f.chain  # constant-producing nodes stay available to glue
        return layer

    def recurrent(self, node, prod: RecurrentProduct, index: int) -> list[AnalogLayer]:
        """The input product (every time step at once) and the recurrent product (stepped) of an RNN node."""
        g, name, op = self.g, node.name or node.output[0], node.op_type
        mid = f"{name}/input_products"
        x_dims = g.shapes.get(prod.inputs.x) or [None]
        dtype = str(g.np_dtype(prod.inputs.x))
        a = AnalogLayer(index=index, name=f"{name}/W", op=op, weight=prod.inputs.weight.astype(np.float32),
                        bias=prod.inputs.bias.astype(np.float32), input=prod.inputs.x, output=mid,
                        nodes=(node.name,), tmap=prod.inputs.tmap,
                        meta={"ops": f"{op} input product", "dtype": dtype, "kept": [x_dims[0]]})
        b = AnalogLayer(index=index + 1, name=f"{name}/R", op=op, weight=prod.weight.astype(np.float32),
                        bias=prod.bias.astype(np.float32), input=mid, output=prod.outputs[0] or f"{name}/Y",
                        nodes=(node.name,), recurrent=prod.spec,
                        meta={"ops": f"{op} recurrent product (per step)", "dtype": dtype})
        self._absorbed_nodes[a.index], self._absorbed_nodes[b.index] = [], [node]
        return [a, b]

    # -- the plan --------------------------------------------------------------
    def build(self) -> Model:
        inputs = self.graph_inputs()
        gin = inputs[0]
        self.batch_fixed = (self.g.shapes.get(gin.name) or [None])[0] is not None
        self.g.batch_symbol = (self.g.symbols.get(gin.name) or [None])[0]
        output = self.pick_output()
        self.g.graph_outputs.add(output)
        self._absorbed_nodes: dict[int, list] = {}
        recorded, notes = self.recorded_outputs()
        wanted = list(dict.fromkeys([output] + [t for _, t in recorded]))    # every output's glue is kept
        needed = self.ancestors(wanted, stop=set())
        layers: list[AnalogLayer] = []
        digital: list[DigitalProduct] = []
        absorbed: set[int] = set()
        for node in self.nodes:
            if id(node) not in needed or id(node) in absorbed:
                continue
            prod = self.product(node)
            if isinstance(prod, str):
                digital.append(DigitalProduct(node, prod))
            elif isinstance(prod, RecurrentProduct):
                layers += self.recurrent(node, prod, len(layers))
                absorbed.add(id(node))
            elif prod is not None:
                layer = self.absorb(node, prod, len(layers))
                layers.append(layer)
                absorbed |= {id(n) for n in self._absorbed_nodes[layer.index]}
        if not layers:
            raise HwloopError(f"{self.path}: no analog layer (no product with constant weights "
                              f"feeds output {output!r})")
        steps: list = []
        produced_by_layer = {layer.output: layer for layer in layers}
        produced_by_layer.update({t: L for L in layers if L.recurrent for t in L.recurrent.extra_outputs if t})
        done: set[int] = set(absorbed)
        for layer in layers:
            seg = self.ancestors([layer.input], stop=done, layer_outputs=produced_by_layer)
            if seg:
                steps.append(seg)
                done |= set(seg)
            steps.append(layer)
        final = self.ancestors(wanted, stop=done, layer_outputs=produced_by_layer)
        if final:
            steps.append(final)
            done |= set(final)
        glue_steps = self.make_glue(steps, wanted)
        unused = [n for n in self.nodes if id(n) not in done and id(n) not in needed]
        shapes = [tuple((self.g.shapes.get(i.name) or [None])[1:]) for i in inputs]
        dtypes = [np.dtype(helper.tensor_dtype_to_np_dtype(i.type.tensor_type.elem_type)) for i in inputs]
        batch = (self.g.shapes.get(gin.name) or [None])[0]
        if batch is not None:
            notes.append(f"exported with a fixed batch size of {batch}: the host runs it {batch} rows per call")
        dt = self.g.np_dtype(output)
        if dt != np.float32:
            notes.append(f"a {dt} model: devices compute in float32, the host ops in {dt}")
        return Model(path=self.path, sha256=self.sha256, proto=self.proto, layers=layers, steps=glue_steps,
                     input_name=gin.name, input_shape=shapes[0], input_dtype=dtypes[0],
                     output_name=output, n_classes=self.g.shapes[output][1], unused=unused, batch_dim=batch,
                     digital_products=digital, input_names=[i.name for i in inputs], input_shapes=shapes,
                     input_dtypes=dtypes, output_names=[o.name for o in self.proto.graph.output], notes=notes,
                     recorded_outputs=recorded)

    def ancestors(self, tensors: list[str], stop: set[int],
                  layer_outputs: dict | None = None) -> dict[int, onnx.NodeProto]:
        """Nodes (by id, in graph order) computing ``tensors``, not crossing ``stop`` nodes or layer outputs."""
        found: dict[int, onnx.NodeProto] = {}
        todo = list(tensors)
        while todo:
            t = todo.pop()
            if layer_outputs and t in layer_outputs:
                continue
            node = self.g.producer.get(t)
            if node is None or id(node) in stop or id(node) in found:
                continue
            found[id(node)] = node
            todo += [x for x in node.input if x]
            for attr in node.attribute:  # outer-scope names used inside subgraphs (If/Loop bodies)
                for sub in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
                    todo += [x for n in sub.node for x in n.input if x]
        order = self._order()
        return dict(sorted(found.items(), key=lambda kv: order[kv[0]]))

    def _order(self) -> dict[int, int]:
        if not hasattr(self, "_order_cache"):
            self._order_cache = {id(n): i for i, n in enumerate(self.nodes)}
        return self._order_cache

    def make_glue(self, steps: list, outputs: list[str]) -> list:
        """Turn each node set in ``steps`` into a :class:`Glue` with its own session (``outputs``: the
        tensors the run reads at the end)."""
        later_needs: list[set[str]] = []
        need: set[str] = set(outputs)
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
            inputs = list(dict.fromkeys(t for t in used if t not in made and t not in self.g.inits))
            outputs = [t for t in dict.fromkeys(t for n in nodes for t in n.output if t) if t in needs]
            out.append(self.glue(nodes, inputs, outputs))
        return out

    def glue(self, nodes: list, inputs: list[str], outputs: list[str]) -> Glue:
        g = self.g
        used = {t for n in nodes for t in n.input}
        for n in nodes:
            for attr in n.attribute:
                for sub in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
                    used |= {x for sn in sub.node for x in sn.input}

        def vi(name):
            return helper.make_tensor_value_info(name, g.types.get(name, onnx.TensorProto.FLOAT), None)

        graph = helper.make_graph(nodes, "hwloop_glue", [vi(t) for t in inputs], [vi(t) for t in outputs],
                                  initializer=[g.inits[t] for t in used if t in g.inits])
        sub = helper.make_model(graph, opset_imports=self.proto.opset_import, ir_version=self.proto.ir_version)
        sub.functions.extend(self.proto.functions)
        opts = ort.SessionOptions()
        opts.log_severity_level = 4   # failures become one HwloopError, not log lines on stderr
        # glue is light; threads spinning after it would steal the cores the next analog layer needs
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            session = ort.InferenceSession(sub.SerializeToString(), opts, providers=["CPUExecutionProvider"])
        except Exception as e:
            msg = first_line(e)
            culprit = next((n for n in nodes if n.name and n.name in msg), None)
            culprit = culprit or next((n for n in nodes if n.op_type in msg), nodes[0])
            raise g.err(culprit, f"onnxruntime cannot run it: {msg}") from None
        dtypes = [g.np_dtype(t) for t in inputs]
        unbatched = frozenset() if self.batch_fixed else frozenset(
            t for t in inputs if (d := g.shapes.get(t)) is not None and (not d or d[0] is not None))
        return Glue(nodes=nodes, inputs=inputs, outputs=outputs, input_dtypes=dtypes, session=session,
                    unbatched=unbatched)
