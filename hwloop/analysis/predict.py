"""First-order prediction of the noise covariance of every analog layer, without sampling.

Linearised at the noise-free operating point of each sample (x: clean layer
output, a: its pre-activation, J_n = diag(f'(a_n)) W_n), the covariance of a
layer's output obeys

    C_n = J_n C_{n-1} J_n^T + diag(D_A + D_M E[x^2]) + D_AC 1 1^T + D_MC E[x x^T]

with E[x x^T] = x x^T + P (P: the covariance arriving at the noise stage), which
makes the multiplicative terms exact for a noisy input (the plain first-order
form uses x x^T alone).  The full N x N covariance of every sample is
carried exactly, because W mixes independent noise into common-mode noise,
but in factored form (``diag + lazily multiplied factor blocks``, a dense
part only after a fold, see ``_Cov``): only what is reported (per-neuron
variances and the sum of all elements) is ever evaluated.  float64 by
default.  Conventions, limits and cost: docs/analysis.md.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any, Iterator, Mapping, Sequence

import numpy as np
import torch
import xarray as xr

from ..data import load_data
from ..errors import HwloopError
from ..layer import AnalogLayer
from ..physics import affine, quantization_variance, weight_full_scale
from ..profiles import load_profile
from .chain import _dims, dense_chain
from .measured import build_dataset, layer_summary, snr_db



@dataclass(frozen=True)
class LayerNoise:
    """The noise a device adds to one layer, as variances (see ``hwloop.profiles.NoiseSettings``).

    ``extra`` is an additional uncorrelated variance on the output (ADC
    quantisation step^2/12, uniform dither w^2/12); ``shot`` a variance
    shot * |x|.  ``placement``: post (after the activation), pre (on the
    pre-activation) or both (the same intensities at both places).
    """

    D_A: float = 0.0
    D_M: float = 0.0
    D_AC: float = 0.0
    D_MC: float = 0.0
    placement: str = "post"
    extra: float = 0.0
    shot: float = 0.0
    read: float = 0.0                  # weight read noise: variance read * ||x||^2 on each product
    cols: int | None = None            # column tile size: correlated terms are shared within a tile only
    clip: tuple[float, float] | None = None   # output ADC range: values outside are clipped
    #: per neuron, the device row it shares correlated terms with (a conv's position); None: all neurons
    groups: Any = field(default=None, compare=False)

    @classmethod
    def from_settings(cls, settings: Any, layer: AnalogLayer | None = None,
                      quantisation: bool = True) -> "LayerNoise":
        """From ``Profile.for_layer(...)``; the ADC step enters as step^2/12 when ``quantisation``."""
        nz = settings.noise
        extra = nz.dither ** 2 / 12.0
        if quantisation:
            extra += quantization_variance(settings.adc)
        read = 0.0
        if layer is not None and settings.weights.read_noise:
            read = (settings.weights.read_noise * weight_full_scale(layer.weight, settings.weights)) ** 2
        return cls(nz.D_A, nz.D_M, nz.D_AC, nz.D_MC, nz.placement, extra, nz.shot, read, settings.array.cols,
                   settings.adc.range)

    def scaled(self, factor: float) -> "LayerNoise":
        """The same noise with every fresh variance multiplied by ``factor`` (1/k for k averaged executions)."""
        f = factor
        return LayerNoise(self.D_A * f, self.D_M * f, self.D_AC * f, self.D_MC * f, self.placement,
                          self.extra * f, self.shot * f, self.read * f, self.cols, self.clip, self.groups)


def not_modelled(settings: Any) -> list[str]:
    """Profile effects the prediction leaves out (static or operating-point changes, see docs/analysis.md)."""
    names = [n for n in ("dac", "gain_offset", "transfer", "drift") if getattr(settings, n).active]
    w = settings.weights
    if w.bits is not None or w.range is not None or w.program_noise:
        names.append("weights (programming)")
    return names


#: fewest samples worth a thread of their own in ``propagate``
_MIN_SHARE = 64

#: elements of one per-sample product evaluated at once: the chunk stays in cache and reuses its buffer
_CHUNK = 1 << 19
#: largest K = A (x) B (elements) for which A diag(c) B is evaluated as one product c @ K
_KMAX = 1 << 22


def _shared(t: torch.Tensor) -> torch.Tensor:
    """A (1, p, q) product as the shared (p, q) matrix; per-sample products unchanged."""
    return t[0] if t.dim() == 3 and t.shape[0] == 1 else t


def _adb(a: torch.Tensor, c: torch.Tensor | None, b: torch.Tensor,
         chunk: bool = False) -> Iterator[tuple[int, torch.Tensor]]:
    """Yield (first sample, A diag(c) B) as (S or 1, p, q), over chunks of samples when ``chunk``.

    A (p, m) or (S, p, m), c (S, m) or None, B (m, q) or (S, m, q).  Shared
    A and B take one GEMM c @ K with K[j, (i, o)] = A_ij B_jo, so no per-sample
    copy of A is written; chunks keep the (S, p, q) result in cache, which is
    what makes the one N^3-per-sample step of a network cheap (see _Block).
    """
    p, q = a.shape[-2], b.shape[-1]
    if c is None and a.dim() == 2 and b.dim() == 2:
        yield 0, torch.matmul(a, b)[None]
        return
    s = c.shape[0] if c is not None else (a if a.dim() == 3 else b).shape[0]
    rows = max(1, _CHUNK // (p * q)) if chunk else s
    k = buf = None
    if c is not None and a.dim() == 2 and b.dim() == 2 and a.shape[1] * p * q <= _KMAX:
        k = (a.T[:, :, None] * b[:, None, :]).reshape(a.shape[1], p * q)
        buf = torch.empty(min(rows, s), p * q, dtype=k.dtype) if rows < s else None
    for lo in range(0, s, rows):
        hi = min(lo + rows, s)
        ai = a if a.dim() == 2 else a[lo:hi]
        bi = b if b.dim() == 2 else b[lo:hi]
        ci = None if c is None else c[lo:hi]
        if k is not None:
            out = torch.matmul(ci, k) if buf is None else torch.mm(ci, k, out=buf[:hi - lo])
            yield lo, out.view(-1, p, q)
        elif ai.dim() == 2 and bi.dim() == 3:   # (S q, m) @ A^T: one GEMM, not S small ones on copies of A
            bt = torch.empty(hi - lo, q, bi.shape[1], dtype=bi.dtype)   # B^T diag(c), written in one pass
            torch.mul(bi.transpose(1, 2), 1.0 if ci is None else ci[:, None, :], out=bt)
            yield lo, torch.matmul(bt.view(-1, bt.shape[-1]), ai.T).view(-1, q, p).transpose(1, 2)
        else:
            if ci is not None:   # scale the smaller operand
                ai, bi = (ai, ci[:, :, None] * bi) if bi.dim() == 2 and q < p else (ai * ci[:, None, :], bi)
            yield lo, torch.matmul(ai, bi)


def _adb_all(a: torch.Tensor, c: torch.Tensor | None, b: torch.Tensor) -> torch.Tensor:
    """A diag(c) B for all samples at once: (p, q) when shared, else (S, p, q)."""
    return _shared(next(_adb(a, c, b))[1])


class _Block:
    """One factor block ``U = diag(a) base diag(cs) right diag(s)`` (per sample), contributing ``coef * U^T U``.

    ``base`` (r, M) and ``right`` (M, N) are shared by all samples or
    per-sample (a leading B axis); ``a`` (B, r), ``cs`` (B, M), ``s`` (B, N)
    are per-sample scalings kept apart (None: ones; without ``right``, ``cs``
    is None and ``s`` scales the columns of base).  A layer J = diag(s') W is
    applied lazily (``right`` = W^T) and composed on the narrow side, so a
    readout of 10 neurons costs 10/N of a hidden layer, and only the diagonal
    is ever formed, chunk by chunk (``_adb``).  Blocks are never modified;
    their diagonal and total are cached.
    """

    def __init__(self, base: torch.Tensor, a: torch.Tensor | None = None, s: torch.Tensor | None = None,
                 coef: float = 1.0, cs: torch.Tensor | None = None, right: torch.Tensor | None = None):
        self.base, self.a, self.s, self.coef, self.cs, self.right = base, a, s, coef, cs, right
        self._diag = self._tot = self._prod = None

    @property
    def rank(self) -> int:
        return int(self.base.shape[-2])

    def _products(self, chunk: bool) -> Iterator[tuple[int, torch.Tensor]]:
        """base diag(cs) right, as (B or 1, r, N) pieces."""
        if self.right is None:
            yield 0, self.base if self.base.dim() == 3 else self.base[None]
        else:
            yield from _adb(self.base, self.cs, self.right, chunk)

    def diag(self) -> torch.Tensor:
        """diag(U^T U) (B or 1, N), without coef: sum_r a_r^2 P_ri^2 per chunk of samples."""
        if self._diag is None:
            parts = []
            for lo, p in self._products(chunk=not self._low_rank):
                if self._low_rank:              # small: kept for ``through``, which collapses a low-rank block
                    self._prod = p
                sq = p * p if self.right is None or self._low_rank else p.mul_(p)   # a fresh tensor or buffer
                if self.a is None:
                    parts.append(sq.sum(1))
                elif sq.shape[0] == 1:
                    parts.append(torch.matmul(self.a * self.a, sq[0]))
                else:
                    a = self.a[lo:lo + sq.shape[0]]
                    parts.append(torch.bmm((a * a)[:, None, :], sq)[:, 0])
            d = parts[0] if len(parts) == 1 else torch.cat(parts)
            self._diag = d if self.s is None else d * self.s * self.s
        return self._diag

    def total(self) -> torch.Tensor:
        """sum_ij (U^T U)_ij = |diag(a) base diag(cs) right s|^2 per sample, without coef: mat-vec products only."""
        if self._tot is None:
            v = self.s
            chain = ((self._prod, None),) if self._prod is not None else ((self.right, self.cs), (self.base, None))
            for m, scale in chain:
                if m is None:
                    continue
                if v is None:
                    v = m.sum(-1) if m.dim() == 3 else m.sum(-1)[None]
                elif m.dim() == 2:
                    v = torch.matmul(v, m.T)
                else:
                    v = torch.matmul(m, v[..., None])[..., 0]
                if scale is not None:
                    v = v * scale
            t = v * v
            self._tot = (t if self.a is None else t * self.a * self.a).sum(-1)
        return self._tot

    def matrix(self) -> torch.Tensor:
        """U times sqrt(coef), materialised as (B or 1, r, N)."""
        u = next(self._products(chunk=False))[1]
        if self.a is not None:
            u = u * self.a[:, :, None]
        if self.s is not None:
            u = u * self.s[:, None, :]
        return u * self.coef ** 0.5

    @property
    def _low_rank(self) -> bool:
        """Collapsing base diag(cs) right costs less than composing ``right`` with the next layer."""
        return self.right is not None and self.rank < self.right.shape[-2]

    def through(self, w: torch.Tensor, s: torch.Tensor | None) -> "_Block":
        """The block after J = diag(s) W: ``right`` gains W^T (lazily, or composed on its narrow side)."""
        if self.right is None:
            return _Block(self.base, self.a, s, self.coef, self.s, w.T)
        if self._low_rank:
            prod = _adb_all(self.base, self.cs, self.right) if self._prod is None else _shared(self._prod)
            return _Block(prod, self.a, s, self.coef, self.s, w.T)
        return _Block(self.base, self.a, s, self.coef, self.cs, _adb_all(self.right, self.s, w.T))

    def scale_cols(self, s: torch.Tensor) -> "_Block":
        """The block after diag(s) on both sides of the covariance."""
        out = _Block(self.base, self.a, s if self.s is None else self.s * s, self.coef, self.cs, self.right)
        out._prod = self._prod              # base diag(cs) right is unchanged
        return out


class _Cov:
    """A batch of covariances ``full + diag(d) + sum_k c_k U_k^T U_k`` (B samples, N neurons), torch.

    Why the parts: fresh noise is diagonal plus low rank (a correlated term is
    rank one per tile), and a linear map J = diag(s) W turns ``diag(d)`` into
    the factor ``diag(sqrt d) J^T`` at the cost of a scaling, not of an N^3
    product.  So the covariance travels as factor blocks while their total
    rank is small, and is folded into ``full`` (then propagated as J C J^T)
    only when the rank grows past twice the layer width.  Every part is exact.
    """

    def __init__(self, full: torch.Tensor | None, d: torch.Tensor, blocks: list[_Block] | None = None):
        self.full, self.d, self.blocks = full, d, blocks or []
        self._diag: torch.Tensor | None = None   # cached diag C, kept current by the updates below

    @classmethod
    def zero(cls, like: torch.Tensor) -> "_Cov":
        return cls(None, torch.zeros_like(like))

    @property
    def rank(self) -> int:
        return sum(b.rank for b in self.blocks)

    def diagonal(self) -> torch.Tensor:
        """diag C (B, N), read-only: computed once, then updated with C (a noise stage needs it twice)."""
        if self._diag is None:
            v = self.d.clone()
            if self.full is not None:
                v += torch.diagonal(self.full, dim1=1, dim2=2)
            for b in self.blocks:
                v.add_(b.diag(), alpha=b.coef)
            self._diag = v
        return self._diag

    def add_(self, d: torch.Tensor | None = None, block: _Block | None = None) -> None:
        """C <- C + diag(d) + coef U^T U (of ``block``)."""
        if d is not None:
            self.d = self.d + d
        if block is not None:
            self.blocks.append(block)
        if self._diag is not None:
            self._diag = self._diag + (0 if d is None else d) + (0 if block is None else block.coef * block.diag())

    def total(self) -> torch.Tensor:
        """sum_ij C_ij per sample, without forming the matrix."""
        t = self.d.sum(-1)
        if self.full is not None:
            t = t + self.full.sum((1, 2))
        for b in self.blocks:
            t = t + b.coef * b.total()
        return t

    def fold_(self) -> None:
        """Move the factor blocks into ``full`` (the value is unchanged)."""
        for b in self.blocks:
            u = b.matrix().expand(self.d.shape[0], -1, -1)
            if self.full is None:
                self.full = torch.matmul(u.transpose(1, 2), u)
            else:
                self.full.baddbmm_(u.transpose(1, 2), u)
        self.blocks = []

    def dense_(self) -> torch.Tensor:
        """Fold everything into ``full`` and return it."""
        self.fold_()
        if self.full is None:
            self.full = torch.zeros(self.d.shape + self.d.shape[-1:], dtype=self.d.dtype)
        torch.diagonal(self.full, dim1=1, dim2=2).add_(self.d)
        self.d = torch.zeros_like(self.d)
        return self.full

    def scale_(self, alpha: float) -> None:
        """C <- alpha C."""
        if self.full is not None:
            self.full.mul_(alpha)
        self.d = self.d * alpha
        for b in self.blocks:
            b.coef *= alpha
        if self._diag is not None:
            self._diag = self._diag * alpha

    def scale_rows_(self, s: torch.Tensor) -> None:
        """C <- diag(s) C diag(s), per sample."""
        if self.full is not None:
            self.full = self.full * s[:, :, None] * s[:, None, :]
        self.d = self.d * s * s
        self.blocks = [b.scale_cols(s) for b in self.blocks]
        if self._diag is not None:
            self._diag = self._diag * s * s

    def sandwich(self, w: torch.Tensor, s: torch.Tensor | None, fold: bool) -> "_Cov":
        """J C J^T for J = diag(s) W (W shared, s per sample or None); ``fold``: fold a large factor first."""
        if fold and self.rank > 2 * self.d.shape[-1]:
            self.fold_()
        b, n_out = self.d.shape[0], w.shape[0]
        full = None
        if self.full is not None:                                   # W C W^T (C symmetric), then diag(s)
            full = torch.matmul(torch.matmul(self.full, w.T).transpose(1, 2).contiguous(), w.T)
            if s is not None:
                full.mul_(s[:, :, None]).mul_(s[:, None, :])
        # diag(sqrt d) W^T diag(s), left out where d = 0 (correlated noise only)
        blocks = [_Block(w.T.contiguous(), self.d.sqrt(), s)] if bool(self.d.any()) else []
        blocks += [blk.through(w, s) for blk in self.blocks]
        return _Cov(full, torch.zeros(b, n_out, dtype=self.d.dtype), blocks)


def _in_range(m: torch.Tensor, var: torch.Tensor, lo: float, hi: float) -> torch.Tensor:
    """P(lo < X < hi) for X ~ N(m, var): the slope of a clipping stage, averaged over the noise."""
    sd = var.clamp_min(0).sqrt()
    inside = ((m > lo) & (m < hi)).to(m.dtype)
    safe = torch.where(sd > 0, sd, torch.ones_like(sd))
    p = torch.special.ndtr((hi - m) / safe) - torch.special.ndtr((lo - m) / safe)
    return torch.where(sd > 0, p, inside)


def _tiles(n: int, cols: int | None, dtype: torch.dtype, groups=None) -> torch.Tensor:
    """(N, T) indicator of column tiles: correlated draws are shared within a tile only (and within a
    group: a convolution's neurons at one position)."""
    t = torch.arange(n) // (cols if cols else n)
    if groups is not None:
        t = torch.as_tensor(np.asarray(groups)) * (int(t.max()) + 1) + t
        t = torch.unique(t, return_inverse=True)[1]
    return torch.nn.functional.one_hot(t).to(dtype)


def _add_noise(p: _Cov | None, z: torch.Tensor, nz: LayerNoise) -> _Cov:
    """The covariance after a noise stage with signal z (B, N), given the incoming covariance P (consumed)."""
    b, n = z.shape
    p = p or _Cov.zero(z)
    d = torch.full_like(z, nz.D_A + nz.extra)
    if nz.D_M:
        d.add_(z * z + p.diagonal(), alpha=nz.D_M)   # E[x^2] = z^2 + P_ii
    if nz.shot:
        d.add_(z.abs(), alpha=nz.shot)
    tiles = _tiles(n, nz.cols, z.dtype, nz.groups)
    if nz.D_MC:  # D_MC E[x x^T] = D_MC (z z^T + P): the incoming covariance grows too (within a tile)
        if tiles.shape[1] > 1:
            full = p.dense_()
            full += nz.D_MC * full * (tiles @ tiles.T)
            p._diag = None
        else:
            p.scale_(1.0 + nz.D_MC)
    t = tiles.T.contiguous()
    block = None
    if nz.D_AC and nz.D_MC:   # one block of rank 2T (fewer blocks: fewer small products downstream)
        block = _Block(torch.cat([(nz.D_AC ** 0.5 * t).expand(b, -1, -1), nz.D_MC ** 0.5 * t * z[:, None, :]], 1))
    elif nz.D_AC:             # shared by all samples: its diagonal and total are computed once
        block = _Block(t, coef=nz.D_AC)
    elif nz.D_MC:
        block = _Block(t, None, z, coef=nz.D_MC)
    p.add_(d, block)
    return p


def propagate(layers: Sequence[AnalogLayer], noises: Sequence[LayerNoise], x: np.ndarray,
              average: Mapping[int, int] | None = None, dtype: str = "float64") -> list[dict[str, np.ndarray]]:
    """Clean forward pass (float64) and covariance propagation (``dtype``) for inputs x (B, n_in).

    ``average`` maps a layer index to k: that layer is executed k times on the
    same input and averaged, dividing its own fresh noise variances by k.
    Returns, per layer, ``mean`` (B, N) (the clean output), ``pre`` (its
    pre-activation), ``var`` (B, N) and ``cm`` (B,) (the mean off-diagonal
    covariance).
    """
    if len(layers) != len(noises):
        raise ValueError("one LayerNoise per layer")
    if dtype not in ("float64", "float32"):
        raise HwloopError(f"prediction dtype must be float64 or float32, not {dtype!r}")
    # Samples are independent: each of torch's threads propagates its own share of them on one intra-op
    # thread.  About a hundred small steps per layer: splitting each across threads (torch's default) costs
    # more in synchronisation than it saves (2x slower on the bench, far more on a shared CPU).
    x = np.asarray(x, dtype=np.float64).reshape(len(x), -1)
    threads = torch.get_num_threads()
    shares = max(1, min(threads, len(x) // _MIN_SHARE))
    bounds = np.linspace(0, len(x), shares + 1).astype(int)
    tdt = getattr(torch, dtype)

    def run(k: int) -> list[dict[str, np.ndarray]]:
        torch.set_num_threads(1)
        return _propagate(layers, noises, x[bounds[k]:bounds[k + 1]], average, tdt)

    try:
        if shares == 1:
            res = [run(0)]
        else:
            with ThreadPoolExecutor(shares) as pool:
                res = list(pool.map(run, range(shares)))
    finally:
        torch.set_num_threads(threads)
    if shares == 1:
        return res[0]
    return [{key: np.concatenate([r[k][key] for r in res]) for key in res[0][k]} for k in range(len(layers))]


def _propagate(layers: Sequence[AnalogLayer], noises: Sequence[LayerNoise], x: np.ndarray,
               average: Mapping[int, int] | None, tdt: torch.dtype) -> list[dict[str, np.ndarray]]:
    """``propagate`` for one share of the samples (arguments checked by it)."""
    c: _Cov | None = None
    out = []
    for n, (layer, nz) in enumerate(zip(layers, noises)):
        if layer.conv is not None:
            raise HwloopError(f"layer {layer.name!r}: the prediction supports dense layers only, not Conv")
        if x.shape[1] != layer.n_in:
            raise HwloopError(f"layer {layer.name!r}: takes {layer.n_in} inputs, gets {x.shape[1]}")
        k = (average or {}).get(n, 1)
        if k != 1:
            nz = nz.scaled(1.0 / k)
        w = np.asarray(layer.dense_weight(), dtype=np.float64)
        a = affine(x, w.T, np.asarray(layer.bias, dtype=np.float64))
        y = layer.activate(a.copy())
        s, wt, at, yt = (torch.from_numpy(np.asarray(v, np.float64)).to(tdt) for v in (layer.slope(a), w, a, y))
        pre = nz.placement in ("pre", "both")
        read = None
        if nz.read:  # weight read noise: variance read * E||x||^2 on every product, independent
            ex2 = torch.from_numpy((x ** 2).sum(axis=1)).to(tdt)
            if c is not None:
                ex2 = ex2 + c.diagonal().sum(-1)
            read = (nz.read * ex2)[:, None].expand_as(at)
        p = None
        if c is not None:  # J C J^T, with J = diag(f') W unless noise is added between W and f'
            p = c.sandwich(wt, None if pre else s, fold=n < len(layers) - 1)
        if read is not None:
            p = p or _Cov.zero(at)
            p.add_(read if pre else read * s * s)
        if pre:
            p = _add_noise(p, at, LayerNoise(nz.D_A, nz.D_M, nz.D_AC, nz.D_MC, cols=nz.cols, groups=nz.groups))
            p.scale_rows_(s)
        post = nz if nz.placement in ("post", "both") else LayerNoise(extra=nz.extra, shot=nz.shot, cols=nz.cols,
                                                                      groups=nz.groups)
        c = _add_noise(p, yt, post)
        if nz.clip is not None:  # the ADC clips: a neuron passes its fluctuation with the probability to be in range
            c.scale_rows_(_in_range(yt, c.diagonal(), *nz.clip))
            y = np.clip(y, *nz.clip)
        var = c.diagonal().numpy().astype(np.float64)
        m = y.shape[1]
        total = c.total().numpy().astype(np.float64)
        cm = (total - var.sum(axis=1)) / (m * (m - 1)) if m > 1 else np.full(len(y), np.nan)
        out.append({"mean": y, "var": var, "cm": cm, "pre": a})
        x = y
    return out


def _first_input(model, x: np.ndarray) -> np.ndarray:
    """The first analog layer's noise-free input: the data through the glue before it (run exactly)."""
    shape = tuple(getattr(model, "input_shape", ()) or ())
    if shape and all(isinstance(d, int) for d in shape) and int(np.prod(shape)) == x[0].size:
        x = x.reshape(len(x), *shape)
    feeds = {getattr(model, "input_name", "input"): x}
    for step in getattr(model, "steps", []):
        if isinstance(step, AnalogLayer):
            return np.asarray(feeds[step.input]).reshape(len(x), -1)
        feeds.update(step.run(feeds))
    return x.reshape(len(x), -1)


def _propagate_chain(model, layers, noises, x0, average, dtype) -> list[dict[str, np.ndarray]]:
    """``propagate`` through the model's dense chain (convolutions written out, linear glue between
    layers as noise-free links); results for the model's layers only."""
    if not hasattr(model, "steps"):
        return propagate(layers, noises, x0, average, dtype)
    chain = dense_chain(model, _dims(model, layers[0].input))
    by_index = {layer.index: nz for layer, nz in zip(layers, noises)}
    c_noises = [LayerNoise() if lk.source is None else replace(by_index[lk.source], groups=lk.groups)
                for lk in chain]
    c_avg = {k: (average or {})[lk.source] for k, lk in enumerate(chain) if lk.source in (average or {})}
    res = propagate([lk.layer for lk in chain], c_noises, x0, c_avg, dtype)
    return [r for r, lk in zip(res, chain) if lk.source is not None]


def predict(model, profile, data, *, average: Mapping[int, int] | None = None,
            quantisation: bool = True, dtype: str = "float64",
            placements: Sequence[dict | None] | None = None) -> xr.Dataset:
    """Predicted per-layer noise statistics of ``model`` under ``profile`` on ``data``.

    ``model``: a ``hwloop.graph.Model`` (or anything with ``.layers``);
    ``profile``: a ``hwloop.profiles.Profile``, a path or a name, or a list
    of them (one per analog layer, as in a mixed bench run); ``data``: a
    ``hwloop.data.Dataset``, a spec string, or an input array (samples first).
    The Dataset has the variable names of ``analyze_run`` (``var_mean``,
    ``cm_var``, ``snr_db_median``, ``mean_k``, ``var_k``, ...).  ``dtype``
    float32 trades ~1e-6 relative precision of the covariance for ~1.5x speed.
    ``placements`` (one per layer, from a chip's provenance): where the chip really added its
    noise when its layer was scaled into range (``hwloop.analysis.placed.as_placed``).
    """
    if isinstance(data, str):
        data = load_data(data)
    x = np.asarray(getattr(data, "x", data))
    layers = list(model.layers)
    if not layers:
        raise HwloopError("the model has no analog layers")
    per_layer = list(profile) if isinstance(profile, (list, tuple)) else [profile] * len(layers)
    if len(per_layer) != len(layers):
        raise HwloopError(f"{len(per_layer)} profiles given for {len(layers)} analog layers")
    per_layer = [load_profile(p) if isinstance(p, str) or hasattr(p, "__fspath__") else p for p in per_layer]
    for p in {id(p): p for p in per_layer}.values():   # overrides of layers the model lacks are an error
        p.check_layers(layers)
    profile = per_layer[0]
    settings = [p.for_layer(l.index, l.name) for p, l in zip(per_layer, layers)]
    for l, st in zip(layers, settings):
        if st.array.rows is not None and l.n_in > st.array.rows:
            raise HwloopError(f"layer {l.name!r}: split into row tiles of {st.array.rows} inputs by the profile; "
                              "the prediction does not model row tiling")
    noises = [LayerNoise.from_settings(st, l, quantisation) for l, st in zip(layers, settings)]
    # an activation the neurons lack runs on the host, after the device's noise: the noise is on its input
    noises = [replace(nz, placement="pre") if st.transfer.on_host(l.activation) and nz.placement == "post" else nz
              for nz, l, st in zip(noises, layers, settings)]
    if placements is not None:
        from .placed import as_placed

        noises = [as_placed(nz, pl) for nz, pl in zip(noises, placements)]
    skipped = sorted({n for st in settings for n in not_modelled(st)})
    res = _propagate_chain(model, layers, noises, _first_input(model, x), average, dtype)
    stats = []
    for r in res:
        st = {"mean": r["mean"], "var": r["var"], "cm_sample": r["cm"]}
        st.update(layer_summary(r["mean"], r["var"], r["cm"]))
        st["snr_db"] = snr_db(r["mean"], r["var"])
        stats.append(st)
    attrs = {"profile": getattr(profile, "name", str(profile)), "profile_sha256": getattr(profile, "sha256", ""),
             "samples": int(len(x)), "quantisation": int(bool(quantisation)),
             "not_modelled": ", ".join(skipped) or "none"}
    return build_dataset([l.name for l in layers], stats, "predicted", attrs)


def predict_for_run(run, model=None, profile=None, data=None, quantisation: bool = True) -> xr.Dataset:
    """The prediction for a recorded run: model, per-layer profiles and data from its provenance unless given.

    Each layer is predicted with its own device's description (``hwloop.analysis.placed``):
    ``profile`` stands in only for devices without one (a chip with no ``twin:``).

    Checks that the data reproduce the run's noise-free first layer, so a
    prediction is never silently compared with a different set of samples.
    """
    from ..graph import load_model  # onnxruntime: imported only when a model must be loaded

    attrs = run.attrs
    model = load_model(model or attrs.get("model_path") or _missing("model_path", "--model"))
    from .placed import layer_sources

    sources = layer_sources(attrs, profile)   # each layer with its own device's profile and placement
    if data is None:
        name = attrs.get("data") or _missing("data", "--data")
        data = f"{name}@{int(attrs['n_samples'])}" if "n_samples" in attrs else name
    ds = load_data(data) if isinstance(data, str) else data
    clean0 = np.asarray(run.clean(0), dtype=np.float64)
    sample = getattr(run.clean(0), "sample", None)
    x = np.asarray(getattr(ds, "x", ds))
    if len(x) != len(clean0):
        if sample is None or len(sample) != len(clean0):
            raise HwloopError(f"data {data!r} has {len(x)} samples, the run {len(clean0)}")
        x = x[np.asarray(sample.values, dtype=np.int64)]
    first = dense_chain(model, _dims(model, model.layers[0].input))[0].layer   # a Conv written out
    ref = first.activate(affine(_first_input(model, x).astype(np.float64),
                                                    first.weight.T.astype(np.float64), first.bias.astype(np.float64)))
    err = np.max(np.abs(ref - clean0)) if clean0.size and ref.shape == clean0.shape else np.inf
    if err > 1e-3 * max(1.0, float(np.max(np.abs(clean0)))):
        raise HwloopError(f"data {data!r} does not reproduce the run's noise-free outputs of layer 0 "
                          f"(max difference {err:.3g}): give the run's --data and --model")
    pred = predict(model, [src.profile for src in sources], x, quantisation=quantisation,
                   placements=[src.placement for src in sources])
    pred.attrs["devices"] = [src.label for src in sources]
    return pred


def _missing(key: str, option: str):
    raise HwloopError(f"the run's provenance has no {key!r}: give {option}")
