"""Hardware-in-the-loop fine-tuning: adapt a model's analog layers to the chip that runs them.

The forward pass runs on the devices (chips over VISA, or emulators), the
backward pass through the twin's differentiable model of each layer at the
chip's operating point (physics-aware training, Wright et al., Nature 601,
2022) and through the digital glue.  ``finetune`` is the API the
``hwloop finetune`` command wraps.

- ``train``: the loop, modes ``hil`` / ``twin`` / ``ideal``, report
- ``net``: the forward pass on devices, twin or ideal arithmetic
- ``twin``: a profile (or bench file of profiles) as torch functions
- ``glue``: the digital glue as torch functions, checked against onnxruntime
- ``checkpoint``: crash-safe ``.npz`` checkpoints (no pickles)
- ``onnx_out``: the tuned weights written back into the same ONNX graph
"""

from ..lazy import lazy_attributes

# the training loop (and torch.optim) loads on first use: ``glue``, which the analytic screen uses, stays light
__getattr__, __dir__ = lazy_attributes(__name__, globals(), {n: "train" for n in (
    "MODES", "FinetuneConfig", "FinetuneResult", "finetune", "format_report")})

__all__ = ["MODES", "FinetuneConfig", "FinetuneResult", "finetune", "format_report"]
