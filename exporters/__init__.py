"""Turn models into ONNX files hwloop can import: torch (legacy and dynamo exporters), scikit-learn, the demo model."""

from .demo import train_demo
from .sklearn_onnx import export_sklearn
from .torch_onnx import export_torch
from .training import train_torch

__all__ = ["export_sklearn", "export_torch", "train_demo", "train_torch"]
