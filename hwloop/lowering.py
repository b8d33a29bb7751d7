"""How a product's tensors reach a device as rows, and the device's rows become tensors again.

Devices see (repetitions, rows, n_in) -> (repetitions, rows, n_out).  A dense
layer's rows are the samples; a Conv's are its unfolded patches (``im2col``,
done in ``on_device`` unless the device takes the Conv whole, ``run_conv``);
a per-token product's are its positions (``TensorMap``); a recurrent layer
runs its device once per time step (``hwloop.recurrent``).  Each function
returns the layer's output tensor as the graph holds it (repetitions merged
into the batch axis) and what the run records: (R, B, neurons per sample).
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from .errors import HwloopError
from .layer import AnalogLayer
from .recurrent import run_recurrent


def run_recurrent_layer(layer: AnalogLayer, arr: np.ndarray, r: int, B: int, repeats: int, run_layer: Callable):
    """A recurrent layer: its device's product once per time step, the cell on the host (``hwloop.recurrent``);
    returns Y in ONNX's (T, D, R*B, H) layout, the recorded (R, B, T*D*H) and the final states Y_h, Y_c."""
    spec = layer.recurrent
    y, h, c = run_recurrent(spec, np.asarray(arr, np.float32), r, B, repeats,
                            lambda hx, s: run_layer(layer, hx, repeats, step=s))
    t_len, d, hid = y.shape[0], spec.directions, spec.hidden
    dtype = np.dtype(layer.meta["dtype"])
    out = np.ascontiguousarray(y.transpose(0, 3, 1, 2, 4)).reshape(t_len, d, repeats * B, hid).astype(dtype)
    rec = np.ascontiguousarray(y.transpose(1, 2, 0, 3, 4)).reshape(repeats, B, -1)
    final = {t: np.ascontiguousarray(v.transpose(2, 0, 1, 3)).reshape(d, repeats * B, hid).astype(dtype)
             for t, v in zip(spec.extra_outputs, (h, c)) if t}
    return out, rec, final


def run_product_layer(layer: AnalogLayer, arr: np.ndarray, r: int, B: int, repeats: int, run_layer: Callable):
    """Run one analog layer on its device; returns the tensor for the graph, the recorded (R, B, n) and the
    tensor's repetitions: 1 when the device gave one value R times (a deterministic device on one
    repetition: the next layers and glue then compute it once, not R times), else R."""
    dtype = np.dtype(layer.meta["dtype"])
    if layer.conv is not None:                                            # whole: ``on_device`` unfolds it
        a = np.asarray(arr, np.float32)
        spatial = tuple(layer.meta["out_spatial"] or conv_out_spatial(layer, a.shape[2:]))
        rec = run_layer(layer, a.reshape((r, B) + a.shape[1:]), repeats)  # (R, B, C_out * P)
        r_out = _repetitions(rec, repeats)
        y = np.asarray(rec)[:r_out].reshape((r_out * B, layer.n_out) + spatial)
        return y.astype(dtype, copy=False), rec, r_out
    if layer.tmap is not None:                                            # one row per token / position
        m = layer.tmap
        a = np.asarray(arr, np.float32)
        if m.rows is not None:                                            # (pre * batch * post, n_in) rows
            a = a.reshape(m.rows[0], -1, m.rows[1], a.shape[-1])
        a = np.moveaxis(a, m.batch_axis, 0).transpose((0,) + tuple(1 + p for p in m.in_perm))
        kept = a.shape[1:1 + m.n_kept]
        y = run_layer(layer, np.ascontiguousarray(a).reshape(r, -1, layer.n_in), repeats)   # (R, B*P, n_out)
        out = np.asarray(y).reshape((repeats * B,) + kept + m.out_features)
        out = np.ascontiguousarray(out.transpose((0,) + tuple(1 + p for p in m.out_perm)))
        rec = out.reshape(repeats, B, -1)
        out = np.moveaxis(out, 0, m.batch_axis)
        if m.rows is not None:
            out = out.reshape(-1, layer.n_out)
        return out.astype(dtype, copy=False), rec, repeats
    if arr.shape[0] != r * B:
        raise HwloopError(f"layer {layer.index} ({layer.name!r}): its input has {arr.shape[0]} rows for {r * B} "
                          "samples, and the graph does not say how they map to samples")
    y = run_layer(layer, arr.reshape(r, B, -1), repeats)          # (R, B, n_out)
    r_out = _repetitions(y, repeats)
    return np.asarray(y)[:r_out].astype(dtype, copy=False).reshape(r_out * B, -1), y, r_out


def _repetitions(rec, repeats: int) -> int:
    """1 when a device's (R, ...) result repeats one value along R without copies (``np.broadcast_to``),
    else R."""
    return 1 if repeats > 1 and isinstance(rec, np.ndarray) and rec.ndim and rec.strides[0] == 0 else repeats


def on_device(dev, layer: AnalogLayer, x: np.ndarray, repeats: int, key: tuple = ()) -> np.ndarray:
    """``layer`` on ``dev``: rows x (r, B, n_in) -> (R, B, n_out); a Conv's x (r, B, C, *spatial) ->
    (R, B, C_out * positions), channel-major.  A Conv goes to the device as unfolded rows, as a chip
    sees them, unless the device takes it whole (``run_conv``, e.g. an emulator needing no per-row step)."""
    if layer.conv is None:
        return dev.run(x, repeats=repeats, key=key)
    x = np.asarray(x, np.float32)
    direct = getattr(dev, "run_conv", None)
    y = direct(x, repeats=repeats, key=key) if direct is not None else None
    if y is not None:
        return y
    r, B = x.shape[:2]
    cols = im2col(x.reshape(r * B, *x.shape[2:]), layer)                       # (r*B*P, n_in)
    y = dev.run(cols.reshape(r, -1, layer.n_in), repeats=repeats, key=key)      # (R, B*P, C_out)
    y = np.asarray(y).reshape(repeats, B, -1, layer.n_out).transpose(0, 1, 3, 2)  # (R, B, C_out, P)
    return np.ascontiguousarray(y).reshape(repeats, B, -1)


def takes_whole(dev, layer: AnalogLayer) -> bool:
    """Whether ``on_device`` hands Conv ``layer`` to ``dev`` whole (``run_conv``): no unfolded rows are
    made.  False for a device that cannot say so before it is programmed (``takes_conv_whole``)."""
    says = getattr(dev, "takes_conv_whole", None)
    return (layer.conv is not None and getattr(dev, "run_conv", None) is not None and says is not None
            and bool(says(layer)))


def conv_out_spatial(layer: AnalogLayer, in_spatial: tuple) -> tuple[int, ...]:
    """A convolution's output size for an input of spatial size ``in_spatial`` (a dynamic height/width)."""
    spec = layer.conv
    nd = len(spec.kernel_shape)
    out = []
    for i, n in enumerate(in_spatial):
        stride = spec.strides[i]
        if spec.transposed:              # spread by the strides, then a stride-1 convolution (see ``im2col``)
            n, stride = (n - 1) * stride + 1, 1
        span = (spec.kernel_shape[i] - 1) * spec.dilations[i] + 1
        out.append((n + spec.pads[i] + spec.pads[i + nd] - span) // stride + 1)
    return tuple(out)


def per_sample(layer: AnalogLayer, tensor: np.ndarray, n: int) -> np.ndarray:
    """A layer's output tensor (as the graph holds it) as recorded: (n samples, neurons), batch axis first."""
    m = layer.tmap
    if m is None:
        return tensor.reshape(n, -1)
    if m.rows is not None:
        tensor = tensor.reshape(m.rows[0], n, m.rows[1], -1)
    return np.moveaxis(tensor, m.batch_axis, 0).reshape(n, -1)


def im2col(x: np.ndarray, layer: AnalogLayer) -> np.ndarray:
    """Unfold (rows, C, *spatial) into (rows * positions, C * prod(kernel)), channel-major then kernel.

    A transposed convolution first spreads its input by the strides (zeros between the values) and then
    runs as a stride-1 convolution (``ConvSpec.pads`` already hold the equivalent padding)."""
    spec = layer.conv
    nd = len(spec.kernel_shape)
    k, d = spec.kernel_shape, spec.dilations
    s = (1,) * nd if spec.transposed else spec.strides
    if spec.transposed and any(v > 1 for v in spec.strides):
        spread = np.zeros(x.shape[:2] + tuple((n - 1) * st + 1 for n, st in zip(x.shape[2:], spec.strides)), x.dtype)
        spread[(slice(None), slice(None)) + tuple(slice(None, None, st) for st in spec.strides)] = x
        x = spread
    pads = tuple((spec.pads[i], spec.pads[i + nd]) for i in range(nd))
    if any(p for pair in pads for p in pair):
        x = np.pad(x, ((0, 0), (0, 0)) + pads)
    span = tuple((k[i] - 1) * d[i] + 1 for i in range(nd))
    axes = tuple(range(2, 2 + nd))
    win = np.lib.stride_tricks.sliding_window_view(x, span, axis=axes)  # (rows, C, *out', *span)
    win = win[(slice(None), slice(None)) + tuple(slice(None, None, v) for v in s) + tuple(slice(None, None, v) for v in d)]
    rows, c = win.shape[:2]
    out = win.shape[2:2 + nd]
    order = (0,) + tuple(range(2, 2 + nd)) + (1,) + tuple(range(2 + nd, 2 + 2 * nd))
    return np.ascontiguousarray(win.transpose(order)).reshape(rows * int(np.prod(out)), c * int(np.prod(k)))
