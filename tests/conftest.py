"""Shared fixtures: real ONNX files built once per test session (paths), and what their analog layers should be.

Every model is small and random-initialised from a fixed seed, except
``demo_onnx`` (the trained demo).  ``expected_layers[name]`` lists the analog
layers that importing fixture ``name`` must find, in order, as
``(op, activation, n_in, n_out)`` where ``op`` is the ONNX product node
(Gemm / MatMul / Conv) and, for a Conv, ``n_in = C_in * kH * kW``.

Notes for importers:
- ``cnn_onnx`` (legacy exporter, no constant folding) keeps its two
  ``BatchNormalization`` nodes after the Convs, with non-trivial running
  statistics, so BatchNorm folding is really exercised; ``cnn_dynamo_onnx``
  (dynamo exporter, default optimiser) arrives with BatchNorm already folded
  and flattens with ``Reshape``.
- ``mlp_bn_onnx`` (legacy, default settings) has ``Gemm -> BatchNormalization -> Relu``.
- ``skl_mlp_onnx`` is skl2onnx's default graph: Cast, MatMul + Add (+ Relu)
  per layer, Softmax (named "Relu2" by skl2onnx), ArgMax, ZipMap, ...;
  outputs ``output_label`` and ``output_probability`` (a sequence of maps).
- every torch export has input ``input`` (batch, ...) and output ``output``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import helper

from exporters.demo import train_demo
from exporters.handbuilt import onnx_model
from exporters.models import CNN, MLP, TFC, seeded
from exporters.sklearn_onnx import export_sklearn
from exporters.torch_onnx import export_torch
from hwloop.data import Dataset, load_data

# A shell that starts pytest in the background (``pytest &``, nohup, some CI runners) ignores SIGINT, and
# ignored signals stay ignored in every child: the Ctrl-C tests' subprocesses would never see their ^C.
# A Python handler here is reset to the default in each exec'd child, where Python installs its own.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

MLP_SIZES = (64, 32, 24, 16, 10)
MLP_ACTIVATIONS = ("sigmoid", "tanh", "relu", "linear")

EXPECTED_LAYERS: dict[str, list[tuple[str, str, int, int]]] = {
    "mlp_onnx": [("Gemm", "sigmoid", 64, 32), ("Gemm", "tanh", 32, 24),
                 ("Gemm", "relu", 24, 16), ("Gemm", "linear", 16, 10)],
    "cnn_onnx": [("Conv", "relu", 1 * 9, 8), ("Conv", "relu", 8 * 9, 16), ("Gemm", "linear", 16 * 2 * 2, 10)],
    "mlp_bn_onnx": [("Gemm", "relu", 64, 16), ("Gemm", "relu", 16, 16), ("Gemm", "linear", 16, 10)],
    "skl_mlp_onnx": [("MatMul", "relu", 64, 32), ("MatMul", "relu", 32, 16), ("MatMul", "linear", 16, 10)],
    "handbuilt_onnx": [("MatMul", "sigmoid", 64, 32), ("Gemm", "relu", 32, 16), ("Gemm", "linear", 16, 10)],
    "demo_onnx": [("Gemm", "sigmoid", 64, 32), ("Gemm", "tanh", 32, 16), ("Gemm", "linear", 16, 10)],
}
EXPECTED_LAYERS["mlp_dynamo_onnx"] = EXPECTED_LAYERS["mlp_onnx"]
EXPECTED_LAYERS["cnn_dynamo_onnx"] = EXPECTED_LAYERS["cnn_onnx"]


@pytest.fixture(scope="session")
def expected_layers() -> dict[str, list[tuple[str, str, int, int]]]:
    """fixture name -> [(op, activation, n_in, n_out), ...] of its analog layers, in graph order."""
    return EXPECTED_LAYERS


@pytest.fixture(scope="session")
def digits() -> Dataset:
    """scikit-learn's 8x8 digits, test split (inputs in [0, 1], 64 features)."""
    return load_data("digits")


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("models")


def mlp_model() -> MLP:
    """The 64-32-24-16-10 MLP with sigmoid, tanh, relu layers and a linear readout."""
    with seeded(1):
        return MLP(MLP_SIZES, MLP_ACTIVATIONS)


def randomise_batchnorm(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Give every BatchNorm non-trivial running statistics and affine parameters (so folding matters)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                n = m.num_features
                m.running_mean.copy_(0.3 * torch.randn(n, generator=gen))
                m.running_var.copy_(0.5 + torch.rand(n, generator=gen))
                m.weight.copy_(0.5 + torch.rand(n, generator=gen))
                m.bias.copy_(0.2 * torch.randn(n, generator=gen))
    return model.eval()


def cnn_model() -> CNN:
    """Conv(1->8) BN ReLU MaxPool, Conv(8->16) BN ReLU MaxPool, Flatten, Linear(64->10) on 1x8x8."""
    with seeded(2):
        model = CNN((1, 8, 8), channels=(8, 16))
    return randomise_batchnorm(model, seed=3)


@pytest.fixture
def mlp_torch() -> MLP:
    """A fresh copy of the torch model behind ``mlp_onnx`` / ``mlp_dynamo_onnx`` (eval mode)."""
    return mlp_model().eval()


@pytest.fixture
def cnn_torch() -> CNN:
    """A fresh copy of the torch model behind ``cnn_onnx`` / ``cnn_dynamo_onnx`` (eval mode; input (B, 1, 8, 8))."""
    return cnn_model()


@pytest.fixture(scope="session")
def mlp_onnx(model_dir) -> Path:
    return export_torch(mlp_model(), model_dir / "mlp.onnx", torch.zeros(2, 64), dynamo=False)


@pytest.fixture(scope="session")
def mlp_dynamo_onnx(model_dir) -> Path:
    return export_torch(mlp_model(), model_dir / "mlp_dynamo.onnx", torch.zeros(2, 64), dynamo=True)


@pytest.fixture(scope="session")
def mlp_bn_onnx(model_dir) -> Path:
    """64-16-16-10 ReLU MLP with BatchNorm1d after each hidden Linear (legacy exporter keeps BatchNormalization)."""
    with seeded(4):
        model = TFC(batchnorm=True, in_features=64, hidden=16, depth=2)
    randomise_batchnorm(model, seed=5)
    return export_torch(model, model_dir / "mlp_bn.onnx", torch.zeros(2, 64), dynamo=False)


@pytest.fixture(scope="session")
def cnn_onnx(model_dir) -> Path:
    # optimize=False: keep the BatchNormalization nodes (constant folding would fuse them into the Convs).
    return export_torch(cnn_model(), model_dir / "cnn.onnx", torch.zeros(2, 1, 8, 8), dynamo=False, optimize=False)


@pytest.fixture(scope="session")
def cnn_dynamo_onnx(model_dir) -> Path:
    return export_torch(cnn_model(), model_dir / "cnn_dynamo.onnx", torch.zeros(2, 1, 8, 8), dynamo=True)


@pytest.fixture(scope="session")
def skl_mlp(digits) -> "object":
    """An MLPClassifier (64-32-16-10, ReLU) trained briefly on the digits training split."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.neural_network import MLPClassifier

    train = load_data("digits+train")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # 40 iterations on purpose: fast, and accurate enough
        return MLPClassifier(hidden_layer_sizes=(32, 16), max_iter=40, random_state=0).fit(train.x, train.y)


@pytest.fixture(scope="session")
def skl_mlp_onnx(model_dir, skl_mlp) -> Path:
    return export_sklearn(skl_mlp, model_dir / "skl_mlp.onnx", n_features=64)


@pytest.fixture(scope="session")
def handbuilt_onnx(model_dir) -> Path:
    """onnx.helper graph: MatMul + Add + Sigmoid; Gemm (transB=0, alpha 0.5, beta 2) + Relu; Gemm (transB=1), linear."""
    path = model_dir / "handbuilt.onnx"
    onnx.save(handbuilt_model(), path)
    return path


def handbuilt_model(seed: int = 6) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    shapes = {"W1": (64, 32), "b1": (32,), "W2": (32, 16), "b2": (16,), "W3": (10, 16), "b3": (10,)}
    nodes = [
        helper.make_node("MatMul", ["input", "W1"], ["mm1"], name="matmul1"),
        helper.make_node("Add", ["mm1", "b1"], ["a1"], name="add1"),
        helper.make_node("Sigmoid", ["a1"], ["h1"], name="sigmoid1"),
        helper.make_node("Gemm", ["h1", "W2", "b2"], ["a2"], name="gemm2", transB=0, alpha=0.5, beta=2.0),
        helper.make_node("Relu", ["a2"], ["h2"], name="relu2"),
        helper.make_node("Gemm", ["h2", "W3", "b3"], ["output"], name="gemm3", transB=1),
    ]
    inits = {k: rng.standard_normal(s) / np.sqrt(s[0]) for k, s in shapes.items()}
    return onnx_model(nodes, {"input": ["batch", 64]}, {"output": ["batch", 10]}, inits, name="handbuilt")


@pytest.fixture(scope="session")
def demo_onnx(model_dir) -> Path:
    """The trained demo model (exporters.demo.train_demo, seed 0)."""
    path, _ = train_demo(model_dir / "demo.onnx", seed=0, verbose=False)
    return path


def kill_after_batches(cmd: list[str], store: Path, n: int, timeout: float = 90) -> np.ndarray:
    """Start ``cmd`` (a run writing ``store``), SIGKILL it once ``n`` batches are finished, and return the
    store's batch markers.  Finished markers only: zarr writes each as <name>.<uuid>.partial, then renames it."""
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    markers = Path(store) / "bookkeeping" / "batch_done" / "c"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        if markers.is_dir() and sum(name.isdigit() for name in os.listdir(markers)) >= n:
            break
        time.sleep(0.005)
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    import zarr

    return zarr.open_group(str(store), mode="r")["bookkeeping/batch_done"][:].astype(bool)


def killed_then_resumed(args: list[str], tmp_path: Path, after: int = 5):
    """``hwloop *args`` run whole into full.zarr, and run into killed.zarr, SIGKILLed after ``after`` finished
    batches, then ``--resume``d in this process; returns the two stores opened (whole, resumed)."""
    from hwloop.cli import main
    from hwloop.store import open_run

    full, killed = tmp_path / "full.zarr", tmp_path / "killed.zarr"
    assert main([*args, "--out", str(full)]) == 0
    done = kill_after_batches([sys.executable, "-m", "hwloop", *args, "--out", str(killed)], killed, after)
    assert after <= done.sum() < len(done)
    assert main([*args, "--out", str(killed), "--resume"]) == 0
    return open_run(full), open_run(killed)


@pytest.fixture(autouse=True)
def _environment_restored():
    """Starting a Dask LocalCluster leaves OMP_NUM_THREADS=1, MKL_NUM_THREADS=1, ... in *this* process's
    environment; every later test's subprocess would then run torch on one thread and give other float
    bits than an in-process run (a byte-identity test failed only when it ran after a Dask test)."""
    env = dict(os.environ)
    yield
    if os.environ != env:
        os.environ.clear()
        os.environ.update(env)


@pytest.fixture(scope="module")
def cluster():
    """A real local Dask cluster, two single-threaded worker processes, one per test module.  Starting
    them sets OMP_NUM_THREADS=1 etc. in this process's environment (distributed's pre-spawn settings);
    restored, so that later tests' subprocesses keep torch's default threads."""
    from dask.distributed import LocalCluster

    from hwloop.cluster import NO_DASHBOARD

    env = dict(os.environ)
    try:
        with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, **NO_DASHBOARD) as c:
            yield c
    finally:
        os.environ.clear()
        os.environ.update(env)
