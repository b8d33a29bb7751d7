"""The CI gate: does a model survive a chip, with a stated error rate?

``check_model`` (one model, one profile) and ``run_matrix`` (models x
profiles, optionally on Dask) decide pass / fail / undecided for the bars a
user sets (``bars``), from confidence bounds that account for repeated noisy
evaluations of the same samples (``stats``), looking sequentially and
stopping as soon as decided (``gate``); ``analytic`` screens without
sampling; ``outputs`` writes JUnit, Markdown and CI annotations.  Used by
``hwloop check`` and the pytest plugin.  Statistics: docs/check.md.
"""

from .bars import Bars
from .model import Target, check_model, layer_snr_db, resolve_target
from .result import EXIT, CheckResult, LayerSNR
from .settings import Settings

__all__ = ["Bars", "CheckResult", "EXIT", "LayerSNR", "Settings", "Target", "check_model", "layer_snr_db",
           "resolve_target"]
