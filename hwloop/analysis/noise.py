"""The noise one device adds to one layer, and its effect on a covariance (one noise stage).

A profile's settings for a layer become a ``LayerNoise`` (variances, where
they land, how correlated terms are shared); ``add_noise`` applies one stage
of it to a ``FactoredCovariance`` at the layer's noise-free signal, with the
multiplicative terms taken over the noisy signal, E[x x^T] = x x^T + P.
Conventions: docs/analysis.md.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch

from ..layer import AnalogLayer
from ..physics import quantization_variance, weight_full_scale
from .covariance import FactorBlock, FactoredCovariance


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
    #: (N, n_in) 0/1: the inputs each neuron's product reads (a conv's patch, a group); None: all of them
    support: Any = field(default=None, compare=False)
    rows: int | None = None            # array rows: a longer input is summed in row tiles, each with its noise

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
                   settings.adc.range, rows=settings.array.rows)

    def scaled(self, factor: float) -> "LayerNoise":
        """The same noise with every fresh variance multiplied by ``factor`` (1/k for k averaged executions)."""
        f = factor
        return replace(self, D_A=self.D_A * f, D_M=self.D_M * f, D_AC=self.D_AC * f, D_MC=self.D_MC * f,
                       extra=self.extra * f, shot=self.shot * f, read=self.read * f)

    @property
    def pre(self) -> "LayerNoise | None":
        """The part added to the pre-activation (None when none is)."""
        if self.placement not in ("pre", "both"):
            return None
        return LayerNoise(self.D_A, self.D_M, self.D_AC, self.D_MC, cols=self.cols, groups=self.groups)

    @property
    def post(self) -> "LayerNoise":
        """The part added to the output (with the ADC's and the dither's variance, which land there always)."""
        if self.placement in ("post", "both"):
            return self
        return LayerNoise(extra=self.extra, shot=self.shot, cols=self.cols, groups=self.groups)


def not_modelled(settings: Any) -> list[str]:
    """Profile effects the prediction leaves out (static or operating-point changes, see docs/analysis.md)."""
    names = [n for n in ("dac", "gain_offset", "transfer", "drift") if getattr(settings, n).active]
    w = settings.weights
    if w.bits is not None or w.range is not None or w.program_noise:
        names.append("weights (programming)")
    return names


def in_range(m: torch.Tensor, var: torch.Tensor, lo: float, hi: float) -> torch.Tensor:
    """P(lo < X < hi) for X ~ N(m, var): the slope of a clipping stage, averaged over the noise."""
    sd = var.clamp_min(0).sqrt()
    inside = ((m > lo) & (m < hi)).to(m.dtype)
    safe = torch.where(sd > 0, sd, torch.ones_like(sd))
    p = torch.special.ndtr((hi - m) / safe) - torch.special.ndtr((lo - m) / safe)
    return torch.where(sd > 0, p, inside)


def tile_indicator(n: int, cols: int | None, dtype: torch.dtype, groups=None) -> torch.Tensor:
    """(N, T) indicator of column tiles: correlated draws are shared within a tile only (and within a
    group: a convolution's neurons at one position, one device row, whose columns are its channels)."""
    column = np.arange(n)
    if groups is not None:             # a neuron's column: its rank among the neurons of its row, in order
        g = np.asarray(groups)
        order = np.argsort(g, kind="stable")
        column = np.empty(n, np.int64)
        column[order] = np.arange(n) - np.searchsorted(g[order], g[order])
    t = torch.as_tensor(column // (cols if cols else n))
    if groups is not None:
        t = torch.as_tensor(g) * (int(t.max()) + 1) + t
        t = torch.unique(t, return_inverse=True)[1]
    return torch.nn.functional.one_hot(t).to(dtype)


def add_noise(p: FactoredCovariance | None, z: torch.Tensor, nz: LayerNoise) -> FactoredCovariance:
    """The covariance after a noise stage with signal z (B, N), given the incoming covariance P (consumed)."""
    b, n = z.shape
    p = p or FactoredCovariance.zero(z)
    d = torch.full_like(z, nz.D_A + nz.extra)
    if nz.D_M:
        d.add_(z * z + p.diagonal(), alpha=nz.D_M)   # E[x^2] = z^2 + P_ii
    if nz.shot:
        d.add_(z.abs(), alpha=nz.shot)
    tiles = tile_indicator(n, nz.cols, z.dtype, nz.groups)
    if nz.D_MC:  # D_MC E[x x^T] = D_MC (z z^T + P): the incoming covariance grows too (within a tile)
        if tiles.shape[1] > 1:
            p.grow_within_(tiles @ tiles.T, nz.D_MC)
        else:
            p.scale_(1.0 + nz.D_MC)
    t = tiles.T.contiguous()
    block = None
    if nz.D_AC and nz.D_MC:   # one block of rank 2T (fewer blocks: fewer small products downstream)
        block = FactorBlock(torch.cat([(nz.D_AC ** 0.5 * t).expand(b, -1, -1),
                                       nz.D_MC ** 0.5 * t * z[:, None, :]], 1))
    elif nz.D_AC:             # shared by all samples: its diagonal and total are computed once
        block = FactorBlock(t, multiplier=nz.D_AC)
    elif nz.D_MC:
        block = FactorBlock(t, None, z, multiplier=nz.D_MC)
    p.add_(d, block)
    return p
