"""A model as the chain of dense layers the analytic prediction propagates through.

The prediction (``predict.propagate``) works on dense layers, one after the
other.  A convolution is dense too once written out: its Toeplitz matrix maps
the (C_in, H, W) input to the (C_out, positions) output in the order the run
store records; its correlated noise terms are shared by the C_out neurons of
one position (what a device sees as one row), not across positions, which
``groups`` tells the noise stage.  Glue between two layers that is linear
(pooling by averaging, padding, reshapes) becomes a noise-free dense link,
its matrix read off the glue itself (run on basis vectors) and checked on the
clean values; any other glue is refused, naming the node.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from ..errors import HwloopError
from ..layer import AnalogLayer

#: glue ops that are linear maps of one tensor (no offset): their matrix is measured, then checked
LINEAR_GLUE = ("Flatten", "Reshape", "Identity", "Cast", "Dropout", "Squeeze", "Unsqueeze", "AveragePool",
               "GlobalAveragePool", "Pad", "Transpose")


class NotAChain(HwloopError):
    """The model is not a chain of dense layers with linear glue (the prediction then linearises it)."""


@dataclass
class Link:
    """One dense step of the chain: a model layer (``source``: its index) or linear glue (None)."""

    layer: AnalogLayer
    source: int | None
    groups: np.ndarray | None = None   # per neuron: which correlated-noise group (a conv's position)
    support: np.ndarray | None = None  # (N, n_in) 0/1: the inputs each neuron's product reads (None: all)


def dense_chain(model, first_input_dims: tuple) -> list[Link]:
    """The chain of ``model``'s analog layers (convolutions written out) with linear glue links between."""
    links: list[Link] = []
    dims = tuple(first_input_dims)
    steps = list(model.steps)
    pos = [i for i, s in enumerate(steps) if isinstance(s, AnalogLayer)]
    for k, i in enumerate(pos):
        layer = steps[i]
        if k:
            prev = steps[pos[k - 1]]
            glue = [s for s in steps[pos[k - 1] + 1:i]]
            link = _glue_link(prev, layer, glue, dims)
            if link is not None:
                links.append(link)
                dims = _dims(model, layer.input)
        if layer.tmap is not None or layer.recurrent is not None:
            raise NotAChain(f"layer {layer.name!r}: the prediction supports dense and Conv layers only, not "
                              f"{'recurrent' if layer.recurrent is not None else 'per-token'} products")
        if layer.conv is not None and layer.positions is None:
            raise NotAChain(f"layer {layer.name!r}: its height and width are known only from the data")
        links.append(_conv_link(layer, dims) if layer.conv is not None else
                     Link(_dense(layer), layer.index, support=_group_support(layer)))
        dims = _dims(model, layer.output)
    return links


def _dims(model, tensor: str) -> tuple:
    from ..graph.view import shapes_of

    return tuple(shapes_of(model.proto).get(tensor, [None, None])[1:])


def _dense(layer: AnalogLayer) -> AnalogLayer:
    return layer if layer.groups == 1 else replace(layer, weight=layer.dense_weight())


def _group_support(layer: AnalogLayer) -> np.ndarray | None:
    """A grouped dense product's support: each neuron reads its group's inputs (None: ungrouped, all)."""
    return None if layer.groups == 1 else (_dense(replace(layer, weight=np.ones_like(layer.weight))).weight != 0)


def _conv_link(layer: AnalogLayer, in_dims: tuple) -> Link:
    """The Toeplitz matrix of a convolution, read off the runner's own unfolding (basis vectors in), and its
    support (the patch each output reads, zero weights included: a device reads every cell of its row)."""
    from ..physics import affine
    from ..lowering import im2col

    n_in = int(np.prod(in_dims))
    basis = im2col(np.eye(n_in, dtype=np.float32).reshape((n_in,) + tuple(in_dims)), layer)
    p = int(np.prod(layer.meta["out_spatial"]))

    def toeplitz(weight: np.ndarray) -> np.ndarray:                   # (C_out * P, n_in)
        y = affine(basis, np.ascontiguousarray(np.swapaxes(weight, -1, -2), dtype=np.float32))
        return y.reshape(n_in, p, layer.n_out).transpose(2, 1, 0).reshape(layer.n_out * p, n_in)

    w = toeplitz(layer.weight)
    params = {k: (np.repeat(np.asarray(v), p) if np.ndim(v) else v) for k, v in layer.act_params.items()}
    dense = AnalogLayer(layer.index, layer.name, layer.op, w.astype(np.float32), np.repeat(layer.bias, p),
                        layer.activation, layer.input, layer.output, layer.nodes, act_params=params, meta=layer.meta)
    return Link(dense, layer.index, np.tile(np.arange(p), layer.n_out), toeplitz(np.ones_like(layer.weight)) != 0)


def _glue_link(prev: AnalogLayer, layer: AnalogLayer, glue: list, dims: tuple) -> Link | None:
    """The glue from ``prev``'s output to ``layer``'s input as a dense link (None when it is the identity)."""
    for step in glue:
        for node in step.nodes:
            if node.op_type not in LINEAR_GLUE:
                raise NotAChain(f"node {node.name or node.op_type!r} ({node.op_type}) between analog layers "
                                  f"{prev.name!r} and {layer.name!r}: the prediction supports only linear glue "
                                  f"({', '.join(LINEAR_GLUE)})")
        if any(t != prev.output and t not in {o for s in glue for o in s.outputs} for t in step.inputs):
            raise NotAChain(f"glue before layer {layer.name!r} reads {', '.join(step.inputs)}, not only the "
                              f"output of layer {prev.name!r}: the prediction supports chains only")
    n = int(np.prod(dims))
    basis = np.concatenate([np.eye(n, dtype=np.float32), np.zeros((1, n), np.float32)])  # + the zero input
    feeds = {prev.output: basis.reshape((n + 1,) + tuple(dims))}
    for step in glue:
        feeds.update(step.run(feeds))
    out = np.asarray(feeds[layer.input], np.float64).reshape(n + 1, -1)
    if np.any(out[-1]):
        raise NotAChain(f"glue before layer {layer.name!r} adds an offset (padding with a nonzero value?): "
                          "the prediction supports linear glue only")
    m = out[:n].T                                                              # (n_next, n)
    if m.shape[0] == n and np.array_equal(m, np.eye(n)):
        return None
    link = AnalogLayer(-1, f"{prev.name} -> {layer.name} (glue)", "glue", m.astype(np.float32),
                       np.zeros(m.shape[0], np.float32), "linear", prev.output, layer.input)
    return Link(link, None)
