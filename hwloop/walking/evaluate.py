"""Evaluation-only noise on ONNX models with onnxruntime, reusing clean activations.

The model is cut at its injection sites into consecutive pieces (piece k
computes site k from what came before).  A clean pass stores every tensor the
pieces hand on; noise at site k then runs only the pieces after k on the noisy
site tensor, so the clean prefix is never recomputed.  Global noise runs every
piece, adding noise after each.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper

from ..errors import HwloopError
from .sites import Noise, Site, add_noise, data_inputs, dynamic_tensors, load_onnx, onnx_sites

#: noise per site index: a Noise, or (Noise, k) to average k noisy copies
NoiseAt = Mapping[int, "Noise | tuple[Noise, int]"]


@dataclass
class _Piece:
    session: ort.InferenceSession
    inputs: list[str]
    outputs: list[str]


def accuracy(logits: np.ndarray, y: np.ndarray) -> float:
    """Fraction of samples whose largest logit is the label (an integer output of one value per sample,
    as skl2onnx's classifiers write, is the predicted label itself)."""
    if logits.dtype.kind in "iu" and logits.size == len(y):
        return float(np.mean(logits.reshape(len(y)) == y))
    return float(np.mean(np.argmax(logits.reshape(len(y), -1), axis=1) == y))


class SiteModel:
    """An ONNX model cut at its sites; ``threads`` onnxruntime threads (1 keeps results bitwise stable)."""

    def __init__(self, model: str | Path | onnx.ModelProto, threads: int = 1, batch_size: int = 16384):
        self.proto = load_onnx(model)
        self.sites: list[Site] = onnx_sites(self.proto)
        self.batch_size = batch_size
        inp = data_inputs(self.proto)[0]
        self.input = inp.name
        dims = inp.type.tensor_type.shape.dim
        self.input_shape = tuple(d.dim_value if d.HasField("dim_value") else -1 for d in dims[1:])
        self.output = self.proto.graph.output[0].name
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        dyn = dynamic_tensors(self.proto)
        self._static = {o: n for n in self.proto.graph.node for o in n.output if o not in dyn}
        self._pieces = [self._piece(nodes, opts) for nodes in self._cut()]

    # -- building -----------------------------------------------------------------
    def _cut(self) -> list[list[onnx.NodeProto]]:
        """Dynamic nodes grouped: piece k (1..n-1) ends with site k's producer; piece n is the tail."""
        dyn = dynamic_tensors(self.proto)
        index = {s.name: s.index for s in self.sites}
        pieces: list[list[onnx.NodeProto]] = [[] for _ in range(len(self.sites) + 1)]
        k = 1
        for node in self.proto.graph.node:
            if not any(o in dyn for o in node.output):
                continue
            pieces[min(k, len(self.sites))].append(node)
            for o in node.output:
                if o in index:
                    k = index[o] + 1
        return pieces

    def _piece(self, nodes: list[onnx.NodeProto], opts: ort.SessionOptions) -> _Piece | None:
        if not nodes:
            return None
        g = self.proto.graph
        inits = {i.name: i for i in g.initializer}
        static = self._static
        produced = {o for n in nodes for o in n.output}
        needed = [i for n in nodes for i in n.input if i]
        # constant subgraphs (Constant nodes, shape arithmetic) the piece needs, in graph order
        stack, seen = [i for i in needed if i in static], set()
        while stack:
            t = stack.pop()
            if t in seen:
                continue
            seen.add(t)
            stack += [i for i in static[t].input if i in static]
        const_names = {id(static[t]) for t in seen}
        const_nodes = [n for n in g.node if id(n) in const_names]
        all_nodes = const_nodes + nodes
        used = {i for n in all_nodes for i in n.input if i}
        # subgraph attributes (If/Loop) may read outer tensors too
        for n in all_nodes:
            for a in n.attribute:
                if a.type == onnx.AttributeProto.GRAPH:
                    used |= {i for sn in a.g.node for i in sn.input}
        inputs = [t for t in dict.fromkeys(needed) if t not in produced and t not in inits and t not in static]
        later = self._consumed_after(nodes)
        outputs = [o for o in dict.fromkeys(o for n in nodes for o in n.output)
                   if o in later or o == self.output or o in {s.name for s in self.sites}]
        infos = {v.name: v for v in list(g.input) + list(g.value_info) + list(g.output)}

        def vi(name: str) -> onnx.ValueInfoProto:
            v = infos.get(name)
            if v is None:
                return helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None)
            v = onnx.ValueInfoProto.FromString(v.SerializeToString())
            if v.type.tensor_type.HasField("shape") and v.type.tensor_type.shape.dim:
                v.type.tensor_type.shape.dim[0].Clear()
                v.type.tensor_type.shape.dim[0].dim_param = "batch"
            return v

        graph = helper.make_graph(all_nodes, "piece", [vi(t) for t in inputs], [vi(t) for t in outputs],
                                  initializer=[inits[t] for t in sorted(used) if t in inits])
        model = helper.make_model(graph, opset_imports=self.proto.opset_import,
                                  ir_version=self.proto.ir_version)
        model.functions.extend(self.proto.functions)
        try:
            sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
        except Exception as e:
            raise HwloopError(f"cannot cut the model after node {nodes[0].name!r}: {e}") from None
        return _Piece(sess, inputs, outputs)

    def _consumed_after(self, nodes: list[onnx.NodeProto]) -> set[str]:
        last = nodes[-1]
        after, seen = set(), False
        for n in self.proto.graph.node:
            if seen:
                after.update(n.input)
            seen = seen or n is last
        return after

    # -- running ------------------------------------------------------------------
    def _run_piece(self, piece: _Piece, env: dict[str, np.ndarray]) -> None:
        n = len(env[self.input])
        feeds = {t: env[t] for t in piece.inputs}
        if n <= self.batch_size:
            outs = piece.session.run(piece.outputs, feeds)
        else:
            parts = [piece.session.run(piece.outputs, {t: v[a:a + self.batch_size] for t, v in feeds.items()})
                     for a in range(0, n, self.batch_size)]
            outs = [np.concatenate([p[j] for p in parts]) for j in range(len(piece.outputs))]
        env.update(zip(piece.outputs, outs))

    def prepare(self, x: np.ndarray) -> np.ndarray:
        """Data rows shaped as the model's input (e.g. 784 -> 1x28x28)."""
        shape = self.input_shape
        if -1 in shape or shape == x.shape[1:]:
            return np.ascontiguousarray(x, dtype=np.float32)
        if int(np.prod(shape)) != int(np.prod(x.shape[1:])):
            raise HwloopError(f"input {self.input!r} takes {shape}, data has {x.shape[1:]} per sample")
        return np.ascontiguousarray(x.reshape((len(x),) + shape), dtype=np.float32)

    def clean(self, x: np.ndarray) -> dict[str, np.ndarray]:
        """Every tensor the pieces hand on, noise-free: the cache ``run`` starts from."""
        env = {self.input: self.prepare(x)}
        for piece in self._pieces:
            if piece is not None:
                self._run_piece(piece, env)
        return env

    def run(self, noise_at: NoiseAt, rng: np.random.Generator, *, x: np.ndarray | None = None,
            cache: Mapping[str, np.ndarray] | None = None) -> np.ndarray:
        """Logits with noise at the sites in ``noise_at`` (drawn from ``rng`` in site order).

        With ``cache`` (from ``clean``) only the pieces after the first noisy site run;
        with ``x`` everything runs from the input.
        """
        if (x is None) == (cache is None):
            raise ValueError("give exactly one of x or cache")
        bad = [k for k in noise_at if not 0 <= k < len(self.sites)]
        if bad:
            raise HwloopError(f"site {bad[0]}: the model has sites 0..{len(self.sites) - 1}")
        first = min(noise_at, default=len(self.sites))
        if cache is not None:
            env, start = dict(cache), first
        else:
            env, start = {self.input: self.prepare(x)}, 0
        for k in range(start, len(self.sites)):
            piece = self._pieces[k]
            if piece is not None and (k > start or cache is None):
                self._run_piece(piece, env)
            if k in noise_at:
                spec = noise_at[k]
                noise, copies = spec if isinstance(spec, tuple) else (spec, 1)
                name = self.sites[k].name
                env[name] = add_noise(env[name], noise, rng, copies)
        if self._pieces[-1] is not None and (start < len(self.sites) or cache is None):
            self._run_piece(self._pieces[-1], env)
        return env[self.output]
