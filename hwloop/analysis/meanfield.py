"""Mean-field closed forms: noise accumulation in a network described by statistics only.

A layer is summarised by N (inputs per neuron), the mean mu and variance s2 of
its weights, the mean slope g1 and mean squared slope g2 of its activation at
the operating point, and the mean x_mean and mean square x2 of its output.
The noise covariance is summarised by two numbers: the common-mode part v_C
(mean off-diagonal covariance) and the independent part v_I (mean diagonal
minus v_C).  Averaging the propagation C -> J C J^T + Q over the weights gives
a linear map (derivation in docs/analysis.md):

    [v_I, v_C]_n = M [v_I, v_C]_{n-1} + [q_I, q_C]

    M = [[g2 N (mu^2 + s2) - g1^2 N mu^2,  g2 (N^2 mu^2 + N s2) - g1^2 N^2 mu^2],
         [g1^2 N mu^2,                     g1^2 N^2 mu^2                       ]]

    q_I = D_A + D_M x2 + D_MC (x2 - x_mean^2),   q_C = D_AC + D_MC x_mean^2

With per-layer gain rho = spectral radius of M: rho < 1 gives bounded
accumulation with the fixed point (I - M)^-1 q; rho = 1 linear growth; rho > 1
geometric growth with ratio rho.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class MeanField:
    """Statistics of one (repeated) layer and its noise; ``curve`` iterates it through depth."""

    N: int
    w_mean: float
    w_var: float = 0.0
    slope2: float = 1.0                 # mean squared activation slope g2
    slope_mean: float | None = None     # mean slope g1 (default sqrt(g2): equal slopes)
    D_A: float = 0.0
    D_M: float = 0.0
    D_AC: float = 0.0
    D_MC: float = 0.0
    x_mean: float = 0.0                 # mean output (for multiplicative noise)
    x2: float = 0.0                     # mean squared output

    @property
    def gain_matrix(self) -> np.ndarray:
        n, mu, s2, g2 = float(self.N), self.w_mean, self.w_var, self.slope2
        g1s = g2 if self.slope_mean is None else self.slope_mean ** 2
        off_i, off_c = g1s * n * mu * mu, g1s * n * n * mu * mu
        return np.array([[g2 * n * (mu * mu + s2) - off_i, g2 * (n * n * mu * mu + n * s2) - off_c],
                         [off_i, off_c]])

    @property
    def fresh(self) -> np.ndarray:
        """[q_I, q_C]: the noise each layer adds itself."""
        q_i = self.D_A + self.D_M * self.x2 + self.D_MC * (self.x2 - self.x_mean ** 2)
        q_c = self.D_AC + self.D_MC * self.x_mean ** 2
        return np.array([q_i, q_c])

    @property
    def gain(self) -> float:
        """Per-layer gain: the spectral radius of the propagation map."""
        return float(np.max(np.abs(np.linalg.eigvals(self.gain_matrix))))

    @property
    def growth(self) -> str:
        """'bounded' (gain < 1), 'linear' (gain = 1) or 'geometric' (gain > 1)."""
        g = self.gain
        return "bounded" if g < 1 - 1e-12 else ("linear" if g <= 1 + 1e-12 else "geometric")

    def fixed_point(self) -> np.ndarray:
        """[v_I, v_C] reached at infinite depth; inf when accumulation is unbounded."""
        if self.growth != "bounded":
            return np.array([np.inf, np.inf])
        return np.linalg.solve(np.eye(2) - self.gain_matrix, self.fresh)

    def curve(self, depth: int) -> np.ndarray:
        """(depth, 2): [v_I, v_C] after layers 1..depth, starting from a noise-free input."""
        m, q = self.gain_matrix, self.fresh
        v = np.zeros(2)
        out = np.empty((depth, 2))
        for n in range(depth):
            v = m @ v + q
            out[n] = v
        return out


def meanfield_curve(mf: MeanField, depth: int) -> dict[str, np.ndarray]:
    """Total variance, independent and common parts per layer (1..depth), and the fixed point."""
    c = mf.curve(depth)
    fp = mf.fixed_point()
    return {"layer": np.arange(1, depth + 1), "independent": c[:, 0], "common": c[:, 1],
            "total": c.sum(axis=1), "fixed_point": float(fp.sum()), "gain": mf.gain}
