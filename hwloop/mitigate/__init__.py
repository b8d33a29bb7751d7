"""Mitigating noise: model transforms a chip can run, their analytic effect, and the proof on a run.

Strategies (``plan``): ghost neurons against correlated noise, duplication
against uncorrelated noise, multi-execution (a run option, ``multiexec``),
slope scaling for linear/relu layers.  ``transforms`` builds the mitigated
layers and ``onnxedit`` writes them as an ONNX file with the same noise-free
function; ``decompose`` and ``advise`` predict and rank the strategies without
sampling; ``prove`` runs original and mitigated models side by side.
"""

from .plan import ADDRESSES, STRATEGIES, Plan, Strategy, parse_strategy
from .multiexec import MultiExec, read_plan, wrap_devices

__all__ = ["ADDRESSES", "STRATEGIES", "Plan", "Strategy", "parse_strategy", "MultiExec", "read_plan",
           "wrap_devices"]
