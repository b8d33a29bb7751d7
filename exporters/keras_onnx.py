"""Small Keras models exported to ONNX by tf2onnx, in a process of their own.

Run as ``python -m exporters.keras_onnx OUT_DIR``: writes ``mlp.onnx`` (Dense-ReLU-Dense) and ``cnn.onnx``
(Conv2D, BatchNormalization, ReLU, MaxPooling2D, Dense), with random biases and BatchNorm statistics so
tf2onnx keeps every Add.  A separate process keeps tensorflow (its threads and libraries) out of the
caller's, e.g. out of a pytest session running torch.
"""

from __future__ import annotations

import sys
from pathlib import Path

RANDOM = "random_normal"


def export_all(out: Path) -> None:
    import onnx
    import tensorflow as tf
    import tf2onnx

    keras = tf.keras
    tf.random.set_seed(0)
    mlp = keras.Sequential([keras.Input((64,)), keras.layers.Dense(16, activation="relu", bias_initializer=RANDOM),
                            keras.layers.Dense(10, bias_initializer=RANDOM)])
    bn = keras.layers.BatchNormalization(beta_initializer=RANDOM, gamma_initializer=RANDOM,
                                         moving_mean_initializer=RANDOM, moving_variance_initializer="ones")
    cnn = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Conv2D(4, 3, bias_initializer=RANDOM), bn,
                            keras.layers.ReLU(), keras.layers.MaxPooling2D(2), keras.layers.Flatten(),
                            keras.layers.Dense(10, bias_initializer=RANDOM)])
    for name, model, shape in (("mlp", mlp, (64,)), ("cnn", cnn, (8, 8, 1))):
        model.output_names = ["output"]
        spec = (tf.TensorSpec((None,) + shape, tf.float32, name="input"),)
        proto, _ = tf2onnx.convert.from_keras(model, input_signature=spec, opset=17)
        onnx.save(proto, str(out / f"{name}.onnx"))


if __name__ == "__main__":
    export_all(Path(sys.argv[1]))
