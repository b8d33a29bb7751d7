"""Noise-accumulation analysis: measured statistics of a run, the analytic prediction, mean-field forms.

Pure functions over numpy arrays and xarray objects; the measured and the
predicted side return Datasets with the same per-layer variable names so
they can be compared directly (see docs/analysis.md for the estimators).
The function ``propagate`` is not re-exported here: ``hwloop.analysis.propagate``
names its module (``from hwloop.analysis.propagate import propagate``).
"""

from .measured import analyze_layer, analyze_run, average_repeats, layer_table, save_analysis
from .meanfield import MeanField, meanfield_curve
from .predict import LayerNoise, predict

__all__ = [
    "analyze_layer", "analyze_run", "average_repeats", "layer_table", "save_analysis",
    "MeanField", "meanfield_curve", "LayerNoise", "predict",
]
