"""Walking Noise (Borras, Klein, Froening 2024): per-site robustness of a model to noisy computation.

- ``sites``: numbered injection sites of an ONNX model and the noise put there
- ``evaluate``: evaluation-only noise with onnxruntime, reusing clean prefix activations
- ``train``: the same sites in torch (``NoisyNet``) and noisy training
- ``sweep``: sweeps over (site, sigma, repeat) into a resumable Zarr store, locally or on Dask
- ``midpoint``: the midpoint noise level mu per site, with a bootstrap interval
- ``diagnostics``: weight magnitude and activation binarisation
- ``planner``: repetitions per site at an equal budget, evaluated under global noise
- ``plots``: the sweep's HTML report sections
"""

from .midpoint import Midpoint, midpoint
from .planner import SCHEMES, allocate, evaluate_plans
from .sites import Noise, Site, add_noise, onnx_sites
from .sweep import SweepSettings, open_sweep, parse_sigmas, run_sweep

__all__ = ["Midpoint", "midpoint", "SCHEMES", "allocate", "evaluate_plans", "Noise", "Site", "add_noise",
           "onnx_sites", "SweepSettings", "open_sweep", "parse_sigmas", "run_sweep"]
