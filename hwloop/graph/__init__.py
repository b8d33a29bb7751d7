"""Import an ONNX model: find its analog layers and the digital glue between them.

An analog layer is a product with constant weights (``products``: Gemm,
MatMul, Conv, ConvTranspose, ...) plus what a crossbar computes with it: its
bias, per-neuron scales and BatchNormalization (folded into weight and bias)
and the activation that follows (``folds``).  Everything else is digital
glue, run on the host by onnxruntime so it keeps exactly ONNX's semantics:
the nodes between two analog layers become one sub-model ("segment") with a
dynamic batch dimension, and each segment gets one InferenceSession when the
model is loaded (``load``).  Products that stay digital (attention's Q.K^T,
...) are listed with their reason (``Model.digital_products``).
"""

from .load import load_model
from .model import DigitalProduct, Glue, Model, format_table
from .products import PRODUCT_OPS, Product, ProductOp, product_op
from .recurrent_ops import RecurrentProduct  # registers LSTM, GRU and RNN
from .view import node_label

__all__ = ["load_model", "Model", "Glue", "DigitalProduct", "format_table", "node_label", "PRODUCT_OPS", "RecurrentProduct",
           "Product", "ProductOp", "product_op"]
