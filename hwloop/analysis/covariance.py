"""Per-sample covariance matrices kept in factored form, so a network's noise can be carried exactly.

Why factored: fresh noise is diagonal plus low rank (a correlated term is
rank one per column tile), and a layer J = diag(s) W turns a diagonal
``diag(d)`` into the factor ``diag(sqrt d) W^T diag(s)`` at the cost of a
scaling, not of an N^3 product.  So a covariance travels as

    C = full + diag(diagonal) + sum_k multiplier_k U_k^T U_k

(``FactoredCovariance``) with lazily multiplied factor blocks
``U = diag(row_scale) base diag(mid_scale) right diag(col_scale)``
(``FactorBlock``), and only what is reported (per-neuron variances, the sum
of all elements) is ever evaluated.  Every operation here is exact; the
noise model that feeds it is ``hwloop.analysis.noise``.
"""

from __future__ import annotations

from typing import Iterator

import torch

#: elements of one per-sample product evaluated at once: the chunk stays in cache and reuses its buffer
_CHUNK = 1 << 19
#: largest K = L (x) R (elements) for which L diag(c) R is evaluated as one product c @ K
_KMAX = 1 << 22


def _as_shared(t: torch.Tensor) -> torch.Tensor:
    """A (1, p, q) product as the shared (p, q) matrix; per-sample products unchanged."""
    return t[0] if t.dim() == 3 and t.shape[0] == 1 else t


def scaled_products(left: torch.Tensor, scale: torch.Tensor | None, right: torch.Tensor,
                    chunk: bool = False) -> Iterator[tuple[int, torch.Tensor]]:
    """Yield (first sample, L diag(c) R) as (S or 1, p, q), over chunks of samples when ``chunk``.

    L (p, m) or (S, p, m), c (S, m) or None, R (m, q) or (S, m, q).  Shared
    L and R take one GEMM c @ K with K[j, (i, o)] = L_ij R_jo, so no per-sample
    copy of L is written; chunks keep the (S, p, q) result in cache, which is
    what makes the one N^3-per-sample step of a network cheap (see FactorBlock).
    """
    p, q = left.shape[-2], right.shape[-1]
    if scale is None and left.dim() == 2 and right.dim() == 2:
        yield 0, torch.matmul(left, right)[None]
        return
    n = scale.shape[0] if scale is not None else (left if left.dim() == 3 else right).shape[0]
    rows = max(1, _CHUNK // (p * q)) if chunk else n
    kron = buf = None
    if scale is not None and left.dim() == 2 and right.dim() == 2 and left.shape[1] * p * q <= _KMAX:
        kron = (left.T[:, :, None] * right[:, None, :]).reshape(left.shape[1], p * q)
        buf = torch.empty(min(rows, n), p * q, dtype=kron.dtype) if rows < n else None
    for lo in range(0, n, rows):
        hi = min(lo + rows, n)
        li = left if left.dim() == 2 else left[lo:hi]
        ri = right if right.dim() == 2 else right[lo:hi]
        ci = None if scale is None else scale[lo:hi]
        if kron is not None:
            out = torch.matmul(ci, kron) if buf is None else torch.mm(ci, kron, out=buf[:hi - lo])
            yield lo, out.view(-1, p, q)
        elif li.dim() == 2 and ri.dim() == 3:   # (S q, m) @ L^T: one GEMM, not S small ones on copies of L
            rt = torch.empty(hi - lo, q, ri.shape[1], dtype=ri.dtype)   # R^T diag(c), written in one pass
            torch.mul(ri.transpose(1, 2), 1.0 if ci is None else ci[:, None, :], out=rt)
            yield lo, torch.matmul(rt.view(-1, rt.shape[-1]), li.T).view(-1, q, p).transpose(1, 2)
        else:
            if ci is not None:   # scale the smaller operand
                li, ri = (li, ci[:, :, None] * ri) if ri.dim() == 2 and q < p else (li * ci[:, None, :], ri)
            yield lo, torch.matmul(li, ri)


def scaled_product(left: torch.Tensor, scale: torch.Tensor | None, right: torch.Tensor) -> torch.Tensor:
    """L diag(c) R for all samples at once: (p, q) when shared, else (S, p, q)."""
    return _as_shared(next(scaled_products(left, scale, right))[1])


class FactorBlock:
    """``U = diag(row_scale) base diag(mid_scale) right diag(col_scale)`` (per sample), adding ``multiplier * U^T U``.

    ``base`` (r, M) and ``right`` (M, N) are shared by all samples or
    per-sample (a leading B axis); ``row_scale`` (B, r), ``mid_scale`` (B, M),
    ``col_scale`` (B, N) are per-sample scalings kept apart (None: ones;
    without ``right``, ``mid_scale`` is None and ``col_scale`` scales the
    columns of base).  A layer J = diag(s) W is applied lazily (``right`` =
    W^T) and composed on the narrow side, so a readout of 10 neurons costs
    10/N of a hidden layer, and only the diagonal is ever formed, chunk by
    chunk (``scaled_products``).  Blocks are never modified; their diagonal
    and total are cached.
    """

    def __init__(self, base: torch.Tensor, row_scale: torch.Tensor | None = None,
                 col_scale: torch.Tensor | None = None, multiplier: float = 1.0,
                 mid_scale: torch.Tensor | None = None, right: torch.Tensor | None = None):
        self.base, self.row_scale, self.col_scale = base, row_scale, col_scale
        self.multiplier, self.mid_scale, self.right = multiplier, mid_scale, right
        self._diag = self._tot = self._prod = None

    @property
    def rank(self) -> int:
        return int(self.base.shape[-2])

    def _products(self, chunk: bool) -> Iterator[tuple[int, torch.Tensor]]:
        """base diag(mid_scale) right, as (B or 1, r, N) pieces."""
        if self.right is None:
            yield 0, self.base if self.base.dim() == 3 else self.base[None]
        else:
            yield from scaled_products(self.base, self.mid_scale, self.right, chunk)

    def diag(self) -> torch.Tensor:
        """diag(U^T U) (B or 1, N), without the multiplier: sum_r row_r^2 P_ri^2 per chunk of samples."""
        if self._diag is None:
            parts = []
            for lo, p in self._products(chunk=not self._low_rank):
                if self._low_rank:              # small: kept for ``through``, which collapses a low-rank block
                    self._prod = p
                sq = p * p if self.right is None or self._low_rank else p.mul_(p)   # a fresh tensor or buffer
                if self.row_scale is None:
                    parts.append(sq.sum(1))
                elif sq.shape[0] == 1:
                    parts.append(torch.matmul(self.row_scale * self.row_scale, sq[0]))
                else:
                    rs = self.row_scale[lo:lo + sq.shape[0]]
                    parts.append(torch.bmm((rs * rs)[:, None, :], sq)[:, 0])
            d = parts[0] if len(parts) == 1 else torch.cat(parts)
            self._diag = d if self.col_scale is None else d * self.col_scale * self.col_scale
        return self._diag

    def total(self) -> torch.Tensor:
        """sum_ij (U^T U)_ij = |U col_scale-weighted ones|^2 per sample, without the multiplier: mat-vec products."""
        if self._tot is None:
            v = self.col_scale
            chain = (((self._prod, None),) if self._prod is not None
                     else ((self.right, self.mid_scale), (self.base, None)))
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
            self._tot = (t if self.row_scale is None else t * self.row_scale * self.row_scale).sum(-1)
        return self._tot

    def matrix(self) -> torch.Tensor:
        """U times sqrt(multiplier), materialised as (B or 1, r, N)."""
        u = next(self._products(chunk=False))[1]
        if self.row_scale is not None:
            u = u * self.row_scale[:, :, None]
        if self.col_scale is not None:
            u = u * self.col_scale[:, None, :]
        return u * self.multiplier ** 0.5

    @property
    def _low_rank(self) -> bool:
        """Collapsing base diag(mid_scale) right costs less than composing ``right`` with the next layer."""
        return self.right is not None and self.rank < self.right.shape[-2]

    def through(self, w: torch.Tensor, s: torch.Tensor | None) -> "FactorBlock":
        """The block after J = diag(s) W: ``right`` gains W^T (lazily, or composed on its narrow side)."""
        if self.right is None:
            return FactorBlock(self.base, self.row_scale, s, self.multiplier, self.col_scale, w.T)
        if self._low_rank:
            prod = (scaled_product(self.base, self.mid_scale, self.right) if self._prod is None
                    else _as_shared(self._prod))
            return FactorBlock(prod, self.row_scale, s, self.multiplier, self.col_scale, w.T)
        return FactorBlock(self.base, self.row_scale, s, self.multiplier, self.mid_scale,
                           scaled_product(self.right, self.col_scale, w.T))

    def scale_cols(self, s: torch.Tensor) -> "FactorBlock":
        """The block after diag(s) on both sides of the covariance."""
        col = s if self.col_scale is None else self.col_scale * s
        out = FactorBlock(self.base, self.row_scale, col, self.multiplier, self.mid_scale, self.right)
        out._prod = self._prod              # base diag(mid_scale) right is unchanged
        return out


class FactoredCovariance:
    """A batch of covariances ``full + diag(independent) + sum_k c_k U_k^T U_k`` (B samples, N neurons), torch.

    Why the parts: fresh noise is diagonal plus low rank (a correlated term is
    rank one per tile), and a linear map J = diag(s) W turns ``diag(d)`` into
    the factor ``diag(sqrt d) J^T`` at the cost of a scaling, not of an N^3
    product.  So the covariance travels as factor blocks while their total
    rank is small, and is folded into ``full`` (then propagated as J C J^T)
    only when the rank grows past twice the layer width.  Every part is exact.
    """

    def __init__(self, full: torch.Tensor | None, independent: torch.Tensor,
                 blocks: list[FactorBlock] | None = None):
        self.full, self.independent, self.blocks = full, independent, blocks or []
        self._diag: torch.Tensor | None = None   # cached diag C, kept current by the updates below

    @classmethod
    def zero(cls, like: torch.Tensor) -> "FactoredCovariance":
        return cls(None, torch.zeros_like(like))

    @property
    def rank(self) -> int:
        return sum(b.rank for b in self.blocks)

    def diagonal(self) -> torch.Tensor:
        """diag C (B, N), read-only: computed once, then updated with C (a noise stage needs it twice)."""
        if self._diag is None:
            v = self.independent.clone()
            if self.full is not None:
                v += torch.diagonal(self.full, dim1=1, dim2=2)
            for b in self.blocks:
                v.add_(b.diag(), alpha=b.multiplier)
            self._diag = v
        return self._diag

    def add_(self, d: torch.Tensor | None = None, block: FactorBlock | None = None) -> None:
        """C <- C + diag(d) + multiplier U^T U (of ``block``)."""
        if d is not None:
            self.independent = self.independent + d
        if block is not None:
            self.blocks.append(block)
        if self._diag is not None:
            extra = 0 if block is None else block.multiplier * block.diag()
            self._diag = self._diag + (0 if d is None else d) + extra

    def total(self) -> torch.Tensor:
        """sum_ij C_ij per sample, without forming the matrix."""
        t = self.independent.sum(-1)
        if self.full is not None:
            t = t + self.full.sum((1, 2))
        for b in self.blocks:
            t = t + b.multiplier * b.total()
        return t

    def fold_(self) -> None:
        """Move the factor blocks into ``full`` (the value is unchanged)."""
        for b in self.blocks:
            u = b.matrix().expand(self.independent.shape[0], -1, -1)
            if self.full is None:
                self.full = torch.matmul(u.transpose(1, 2), u)
            else:
                self.full.baddbmm_(u.transpose(1, 2), u)
        self.blocks = []

    def dense_(self) -> torch.Tensor:
        """Fold everything into ``full`` and return it."""
        self.fold_()
        if self.full is None:
            self.full = torch.zeros(self.independent.shape + self.independent.shape[-1:], dtype=self.independent.dtype)
        torch.diagonal(self.full, dim1=1, dim2=2).add_(self.independent)
        self.independent = torch.zeros_like(self.independent)
        return self.full

    def scale_(self, alpha: float) -> None:
        """C <- alpha C."""
        if self.full is not None:
            self.full.mul_(alpha)
        self.independent = self.independent * alpha
        for b in self.blocks:
            b.multiplier *= alpha
        if self._diag is not None:
            self._diag = self._diag * alpha

    def scale_rows_(self, s: torch.Tensor) -> None:
        """C <- diag(s) C diag(s), per sample."""
        if self.full is not None:
            self.full = self.full * s[:, :, None] * s[:, None, :]
        self.independent = self.independent * s * s
        self.blocks = [b.scale_cols(s) for b in self.blocks]
        if self._diag is not None:
            self._diag = self._diag * s * s

    def sandwich(self, w: torch.Tensor, s: torch.Tensor | None, fold: bool) -> "FactoredCovariance":
        """J C J^T for J = diag(s) W (W shared, s per sample or None); ``fold``: fold a large factor first."""
        if fold and self.rank > 2 * self.independent.shape[-1]:
            self.fold_()
        b, n_out = self.independent.shape[0], w.shape[0]
        full = None
        if self.full is not None:                                   # W C W^T (C symmetric), then diag(s)
            full = torch.matmul(torch.matmul(self.full, w.T).transpose(1, 2).contiguous(), w.T)
            if s is not None:
                full.mul_(s[:, :, None]).mul_(s[:, None, :])
        # diag(sqrt d) W^T diag(s), left out where d = 0 (correlated noise only)
        blocks = [FactorBlock(w.T.contiguous(), self.independent.sqrt(), s)] if bool(self.independent.any()) else []
        blocks += [blk.through(w, s) for blk in self.blocks]
        return FactoredCovariance(full, torch.zeros(b, n_out, dtype=self.independent.dtype), blocks)

    def grow_within_(self, mask: torch.Tensor, alpha: float) -> None:
        """C <- C + alpha C * mask (elementwise; ``mask`` (N, N) marks the pairs that share a draw)."""
        full = self.dense_()
        full += alpha * full * mask
        self._diag = None
