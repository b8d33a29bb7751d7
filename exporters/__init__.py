"""Turn models into ONNX files hwloop can import: torch, scikit-learn, the demo model, graphs built by hand.

torch through the legacy and the dynamo exporter; graphs built by hand through ``exporters.handbuilt``.

The names below load on first use, so ``exporters.handbuilt`` (onnx only) does not import torch.
"""

from importlib import import_module

_WHERE = {"train_demo": "demo", "export_sklearn": "sklearn_onnx", "export_torch": "torch_onnx",
          "train_torch": "training", "write_onnx": "handbuilt", "onnx_model": "handbuilt"}

__all__ = sorted(_WHERE)


def __getattr__(name: str):
    if name in _WHERE:
        return getattr(import_module(f"{__name__}.{_WHERE[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
