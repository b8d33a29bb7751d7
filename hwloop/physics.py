"""Noise and non-idealities of analog neurons as plain array functions.

Shared by the emulator (``hwloop.devices.emulator``), the simulated bench
controller (which wraps the emulator) and the analytic prediction (which uses
the variance forms at the bottom).  Arrays are float32 numpy arrays; the random
draws and the heavy element-wise work run through torch on the same memory
(``torch.from_numpy`` shares it), because torch's generator and kernels are
several times faster than numpy's here.

Where the torch work runs: on the CPU unless a ``device`` is given (``compute_device``:
"cuda" for a GPU).  Products, convolutions and the noise then run there, with
the batch's generator on that device; the arrays going in and out stay numpy on
the host.  The CPU path is the same code with no-op moves, so ``device="cpu"``
gives the default numbers bit for bit.

Randomness comes only from explicit generators: ``generator(key)`` for dynamic
draws (per batch), ``static_rng(seed, ...)`` for draws made once at programming
(both in ``hwloop.randomness``, with ``compute_device``).
"""

from __future__ import annotations


import numpy as np
import torch

from .layer import response
from .profiles import Converter, NoiseSettings, WeightSettings
from .randomness import _CHUNK, _executor, _host, _tensor, compute_device, generator, normal, static_rng  # noqa: F401

# Random streams and the compute device: hwloop.randomness (re-exported here for existing importers)
def affine(x: np.ndarray, wt: np.ndarray, bias: np.ndarray | None = None,
           device: torch.device | None = None) -> np.ndarray:
    """x (rows, n_in) @ wt (n_in, n_out) [+ bias] in float32, through torch: the noise draws run in
    torch's thread pool, and switching to numpy's BLAS pool and back costs more than the product.

    A grouped product has wt (groups, n_in/g, n_out/g): group k's outputs see only group k's inputs."""
    tx, tw = _tensor(x, device), _tensor(wt, device)
    if tw.dim() == 3:
        g, i, o = tw.shape
        y = torch.bmm(tx.view(-1, g, i).transpose(0, 1), tw).transpose(0, 1).reshape(-1, g * o)
        return _host(y if bias is None else y.add_(_tensor(bias, device)))
    rows = tx.shape[0]
    if rows in _UNEVEN_ROWS:     # the same bits on any number of threads (a Dask worker runs on one)
        tx = torch.cat([tx, tx.new_zeros(_UNEVEN_ROWS.stop - rows, tx.shape[1])])
    return _host((tx @ tw if bias is None else torch.addmm(_tensor(bias, device), tx, tw))[:rows])


#: row counts whose product MKL splits differently on one thread and on several, so a row's last bits
#: depended on the thread count (measured with torch 2.13's CPU build, 1-8 threads; tests/test_physics_threads.py):
#: such a product is computed on zero rows padded up to the range's end, which every thread count sums alike
_UNEVEN_ROWS = range(5, 12)


def conv_weight(wt: np.ndarray, spec) -> np.ndarray | None:
    """A Conv layer's (n_in, n_out) product matrix as a torch conv kernel (C_out, C_in, kh, kw); None
    when the layer is not a plain (ungrouped) Conv whose rows are channel-major patches."""
    k = tuple(spec.kernel_shape)
    if (wt.ndim != 2 or getattr(spec, "groups", 1) != 1 or getattr(spec, "transposed", False)
            or len(k) not in (1, 2) or spec.in_channels * int(np.prod(k)) != wt.shape[0]):
        return None
    k2 = (1, *k) if len(k) == 1 else k
    return np.ascontiguousarray(wt.T).reshape(wt.shape[1], spec.in_channels, *k2)


def conv(x: np.ndarray, weight: np.ndarray, bias: np.ndarray | None, spec,
         device: torch.device | None = None) -> np.ndarray:
    """x (rows, C_in, *spatial) convolved as ONNX Conv with ``spec`` -> (rows, C_out, *out_spatial) float32.

    The same sums as the unfolded rows times the product matrix (im2col), without building
    the unfolded matrix: torch's direct convolution, a 1-D Conv as a 2-D one of height 1.
    """
    import torch.nn.functional as F

    t = _tensor(x, device)
    one_d = t.dim() == 3
    if one_d:
        t = t.unsqueeze(2)
        pads, strides, dil = (0, spec.pads[0], 0, spec.pads[1]), (1, *spec.strides), (1, *spec.dilations)
    else:
        pads, strides, dil = tuple(spec.pads), tuple(spec.strides), tuple(spec.dilations)
    begin, end = pads[:2], pads[2:]
    if begin != end:   # asymmetric (SAME_UPPER/LOWER): pad explicitly, F.pad takes (w_begin, w_end, h_begin, h_end)
        t = F.pad(t, (begin[1], end[1], begin[0], end[0]))
        begin = (0, 0)
    n = t.shape[0]
    if n == 1:                   # oneDNN sums one image differently on one thread and on several: pad to two
        t = torch.cat([t, t.new_zeros(t.shape)])
    y = F.conv2d(t, _tensor(weight, device), None if bias is None else _tensor(bias, device), strides, begin, dil)[:n]
    return _host(y.squeeze(2) if one_d else y)


# ---------------------------------------------------------------------------
# Converters (DAC / ADC) and weight programming
# ---------------------------------------------------------------------------


def quantize(x: np.ndarray, bits: int | None, lo: float | None, hi: float | None) -> int:
    """Clip ``x`` in place to [lo, hi] and round it to 2**bits levels spanning that range.

    Returns how many values lay outside the range (the clip count).  Levels are
    ``lo + k * step`` with ``step = (hi - lo) / (2**bits - 1)``, k = 0 .. 2**bits - 1,
    computed in float64 and rounded to float32; exact ties round to the even k.
    """
    clipped = 0
    t = torch.from_numpy(x)
    if lo is not None:
        clipped = int(torch.count_nonzero((t < lo) | (t > hi)))
        t.clamp_(lo, hi)
    if bits is not None:
        if lo is None:
            raise ValueError("quantisation needs a range")
        step = (hi - lo) / (2 ** bits - 1)
        k = t.double().sub_(lo).div_(step).round_()  # float64, so levels are exact float32 roundings
        t.copy_(k.mul_(step).add_(lo).clamp_(lo, hi))
    return clipped


def adc_round(x: np.ndarray, bits: int, lo: float, hi: float) -> bool:
    """``quantize`` for a float32 array in place with numpy, in cache-sized pieces: True when any value was
    clipped.  The same levels (k computed in float64, ties to even); for simulated controllers, which run
    beside their clients, where torch's thread pool stalls on a busy machine."""
    step = (hi - lo) / (2 ** bits - 1)
    clipped = False
    flat = x.reshape(-1)
    buf = np.empty(min(flat.size, 1 << 16), np.float64)
    for i in range(0, flat.size, buf.size or 1):
        p = flat[i:i + buf.size]
        q = buf[:p.size]
        clipped = clipped or bool(p.min() < lo or p.max() > hi)
        q[...] = p                           # float64, as quantize computes k
        q -= lo
        q /= step
        np.rint(q, out=q)
        q *= step
        q += lo
        np.clip(q, lo, hi, out=q)
        p[...] = q
    return clipped


def convert(x: np.ndarray, conv: Converter) -> int:
    """Apply a DAC or ADC in place; returns the clip count."""
    if not conv.active:
        return 0
    lo, hi = conv.range if conv.range is not None else (None, None)
    return quantize(x, conv.bits, lo, hi)


def weight_full_scale(w: np.ndarray, settings: WeightSettings) -> float:
    """wmax: the profile's range, or the layer's max |W| (1 for an all-zero layer)."""
    if settings.range is not None:
        return float(settings.range)
    m = float(np.max(np.abs(w))) if w.size else 0.0
    return m if m > 0 else 1.0


def program_weights(w: np.ndarray, settings: WeightSettings, rng: np.random.Generator) -> tuple[np.ndarray, int]:
    """Weights as programmed: clipped to +-wmax, quantised, plus static programming noise.

    Returns (programmed float32 weights, number of clipped weights).
    """
    w = np.array(w, dtype=np.float32, copy=True)
    fs = weight_full_scale(w, settings)
    clipped = quantize(w, settings.bits, -fs, fs) if (settings.bits or settings.range is not None) else 0
    if settings.program_noise:
        w += (rng.standard_normal(w.shape) * (settings.program_noise * fs)).astype(np.float32)
    return w, clipped


def apply_read_noise(a: np.ndarray, x: np.ndarray, std: float, gen: torch.Generator,
                     repeats: int | None = None, groups: int = 1) -> np.ndarray:
    """Weight read noise, drawn anew for every evaluation, on the products ``a``; returns a new array.

    An independent N(0, std^2) error on every weight W_ij turns output i into
    a_i + sum_j dW_ij x_j, which is exactly N(0, std^2 * ||x||^2) and independent
    across outputs; drawing that directly avoids a weight matrix per evaluation.
    ``a`` is (R_in, B, n_out), ``x`` (R_in, B, n_in); the result has ``repeats`` repetitions.
    A grouped product's outputs see only their group's inputs (``groups`` equal blocks of x and a).
    """
    ta = _tensor(a, gen.device)
    tx = _tensor(x, gen.device)
    norm = torch.linalg.vector_norm(tx.view(*tx.shape[:-1], groups, -1), dim=-1)
    norm = norm.repeat_interleave(ta.shape[-1] // groups, dim=-1) if groups > 1 else norm
    y = normal((repeats or ta.shape[0], *ta.shape[1:]), gen)
    y.mul_(norm.mul_(std)).add_(ta)
    return _host(y)


# ---------------------------------------------------------------------------
# Neuron transfer, gain/offset
# ---------------------------------------------------------------------------


def transfer(a: np.ndarray, function: str, slope: float = 1.0, scale: float = 1.0,
             model_activation="linear") -> np.ndarray:
    """The neuron's physical response ``scale * f(slope * a)``; ``function='model'`` uses the model's activation
    (a name, or a callable such as ``AnalogLayer.activate`` for an activation with parameters).

    Like ``hwloop.layer.activate``, it may reuse ``a``'s memory (relu works in place).
    """
    if slope != 1.0:
        a = a * np.float32(slope)
    if function == "model" and callable(model_activation):
        y = model_activation(a)
    else:
        y = response(model_activation if function == "model" else function, a)
    if scale != 1.0:
        y = y * np.float32(scale)
    return y.astype(np.float32, copy=False)


def gain_offset_draw(n: int, gain_std: float, offset_std: float, rng: np.random.Generator,
                     shape: tuple[int, ...] = ()) -> tuple[np.ndarray, np.ndarray]:
    """Static per-neuron gain ~ N(1, gain_std^2) and offset ~ N(0, offset_std^2), shaped (*shape, n)."""
    g = (1.0 + gain_std * rng.standard_normal((*shape, n))).astype(np.float32)
    o = (offset_std * rng.standard_normal((*shape, n))).astype(np.float32)
    return g, o


# ---------------------------------------------------------------------------
# Neuron noise
# ---------------------------------------------------------------------------


def apply_noise(x: np.ndarray, noise: NoiseSettings, gen: torch.Generator, repeats: int | None = None) -> np.ndarray:
    """The neuron noise model on ``x`` (R_in, B, n) or, for a Conv, (R_in, B, C, positions) (the neurons
    are axis 2 either way): one layer (or tile) per call; returns a new array.

        y_i = x_i (1 + xi_M,i + xi_MC) + xi_A,i + xi_AC  [+ shot + dither]

    The uncorrelated terms (additive, multiplicative, shot) are independent
    zero-mean Gaussians, so their sum is drawn as ONE Gaussian of variance
    D_A + D_M x^2 + shot |x|.  The correlated terms are one draw per (repeat,
    sample), shared by the neurons of ``x``.  With ``repeats`` > R_in = 1 the
    clean values are broadcast, not copied, and every repetition gets its own draws.
    Whole-array in-place operations: few parallel regions, which matters on a busy machine
    (block-wise processing was faster single-threaded but far slower when threads wait).
    """
    t = _tensor(x, gen.device)
    shape = (repeats or t.shape[0], *t.shape[1:])
    common = shape[:2] + (1,) + shape[3:]     # one draw per (repeat, sample[, position]), shared by the neurons
    if noise.D_M or noise.shot:
        var = torch.addcmul(torch.tensor(noise.D_A, dtype=t.dtype, device=t.device), t, t, value=noise.D_M)
        if noise.shot:
            var.add_(t.abs(), alpha=noise.shot)
        y = normal(shape, gen).mul_(var.sqrt_())
    elif noise.D_A:
        y = normal(shape, gen).mul_(noise.D_A ** 0.5)
    else:
        y = torch.zeros(shape, dtype=t.dtype, device=t.device)
    on = dict(dtype=t.dtype, device=t.device)
    if noise.D_MC:
        gain = torch.empty(common, **on).normal_(generator=gen).mul_(noise.D_MC ** 0.5).add_(1.0)
        y.addcmul_(t, gain)
    else:
        y.add_(t)
    if noise.D_AC:
        y.add_(torch.empty(common, **on).normal_(generator=gen), alpha=noise.D_AC ** 0.5)
    if noise.dither:
        y.add_(torch.rand(shape, generator=gen, **on).sub_(0.5), alpha=noise.dither)
    return _host(y)


def apply_noise_blocks(x: np.ndarray, noise: NoiseSettings, gen: torch.Generator, repeats: int) -> np.ndarray:
    """``apply_noise`` for a Conv's outputs x (R_in, B, C, positions) in one pass per block.

    The output is cut into blocks of whole samples (about ``_CHUNK`` values each), and each
    block draws and combines all its terms while they are in cache, on the RNG threads, from
    its own generator seeded by ``gen``: the same distribution as ``apply_noise`` (common-mode
    terms per (repeat, sample, position)), another order of draws; blocks are fixed by the
    shape, so the numbers do not depend on the thread count.  On a GPU (``gen`` there): ``apply_noise``.
    """
    if gen.device.type != "cpu":
        return apply_noise(x, noise, gen, repeats)
    t = _tensor(x)
    r_in, b = t.shape[:2]
    per_sample = int(np.prod(t.shape[2:]))
    step = max(1, _CHUNK // per_sample)
    units = [(r, lo) for r in range(repeats) for lo in range(0, b, step)]
    seeds = torch.randint(0, 2 ** 62, (len(units),), generator=gen).tolist()
    out = torch.empty((repeats, *t.shape[1:]), dtype=torch.float32)

    def block(i: int) -> None:
        r, lo = units[i]
        g = torch.Generator().manual_seed(seeds[i])
        xs, ys = t[r if r_in > 1 else 0, lo:lo + step], out[r, lo:lo + step]
        common = (xs.shape[0], 1, *xs.shape[2:])
        ys.normal_(generator=g)
        if noise.D_M or noise.shot:
            var = torch.addcmul(torch.tensor(noise.D_A, dtype=xs.dtype), xs, xs, value=noise.D_M)
            if noise.shot:
                var.add_(xs.abs(), alpha=noise.shot)
            ys.mul_(var.sqrt_())
        else:
            ys.mul_(noise.D_A ** 0.5)
        if noise.D_MC:
            ys.addcmul_(xs, torch.empty(common).normal_(generator=g).mul_(noise.D_MC ** 0.5).add_(1.0))
        else:
            ys.add_(xs)
        if noise.D_AC:
            ys.add_(torch.empty(common).normal_(generator=g), alpha=noise.D_AC ** 0.5)
        if noise.dither:
            ys.add_(torch.rand(ys.shape, generator=g).sub_(0.5), alpha=noise.dither)

    list(_executor().map(block, range(len(units))))
    return out.numpy()


# ---------------------------------------------------------------------------
# Variance forms (for the analytic prediction and for tests)
# ---------------------------------------------------------------------------


def noise_variance(x: np.ndarray, noise: NoiseSettings) -> np.ndarray:
    """Variance that ``apply_noise`` adds to each element of ``x`` (all terms, independent and common-mode)."""
    x = np.asarray(x, dtype=np.float64)
    return (noise.D_A + noise.D_AC + (noise.D_M + noise.D_MC) * x * x + noise.shot * np.abs(x)
            + noise.dither ** 2 / 12.0)


def noise_covariance(x: np.ndarray, noise: NoiseSettings) -> np.ndarray:
    """Covariance (n, n) of the noise ``apply_noise`` adds to one sample's layer output ``x`` (n,).

    diag(D_A + D_M x^2 + shot |x| + w^2/12) + D_AC 11^T + D_MC x x^T.
    """
    x = np.asarray(x, dtype=np.float64)
    c = noise.D_AC + noise.D_MC * np.outer(x, x)
    c[np.diag_indices_from(c)] += noise.D_A + noise.D_M * x * x + noise.shot * np.abs(x) + noise.dither ** 2 / 12.0
    return c


def quantization_step(conv: Converter) -> float:
    """The converter's step (0 when it does not quantise)."""
    if conv.bits is None or conv.range is None:
        return 0.0
    lo, hi = conv.range
    return (hi - lo) / (2 ** conv.bits - 1)


def quantization_variance(conv: Converter) -> float:
    """Variance of the rounding error of a uniform quantiser, step^2 / 12 (for signals spanning many steps)."""
    return quantization_step(conv) ** 2 / 12.0
