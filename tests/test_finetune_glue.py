"""The torch form of the digital glue against onnxruntime, and the physics-aware gradient rule.

Hand-built models put the ops of the glue table between two analog layers; ``finetune`` checks
every converted segment and the rebuilt model against onnxruntime before it trains, and checks
the written file after.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from onnx import helper

from exporters.handbuilt import write_onnx
from hwloop.devices.emulator import Emulator
from hwloop.finetune import FinetuneConfig, finetune
from hwloop.finetune.glue import convert
from hwloop.finetune.net import Network
from hwloop.finetune.twin import load_twin
from hwloop.graph import load_model


#: glue between Conv(1->2, 3x3, pad 1)+Relu on 1x6x6 images and a final Gemm, and the Gemm's input size
GLUES = {
    "avgpool-transpose-arith-concat": ([
        helper.make_node("AveragePool", ["r"], ["p"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Transpose", ["p"], ["t"], perm=[0, 1, 3, 2]),
        helper.make_node("Mul", ["t", "c2"], ["m"]), helper.make_node("Sub", ["m", "c1"], ["s"]),
        helper.make_node("Div", ["s", "c2"], ["d"]), helper.make_node("Tanh", ["d"], ["th"]),
        helper.make_node("Flatten", ["th"], ["f"]),
        helper.make_node("Unsqueeze", ["f", "ax1"], ["u"]), helper.make_node("Squeeze", ["u", "ax1"], ["q"]),
        helper.make_node("Concat", ["q", "q"], ["g"], axis=1)], 36, "LogSoftmax"),
    "globalavg-reshape-sigmoid-add": ([
        helper.make_node("GlobalAveragePool", ["r"], ["p"]),
        helper.make_node("Reshape", ["p", "shape0"], ["f"]),
        helper.make_node("Sigmoid", ["f"], ["sg"]), helper.make_node("Add", ["sg", "c1"], ["g"])], 2, "Softmax"),
    "maxpool-padded-shape-gather": ([
        helper.make_node("MaxPool", ["r"], ["p"], kernel_shape=[2, 2], strides=[2, 2], pads=[1, 1, 1, 1]),
        helper.make_node("GlobalMaxPool", ["p"], ["gp"]),
        helper.make_node("Shape", ["gp"], ["sh"]), helper.make_node("Gather", ["sh", "i0"], ["n"], axis=0),
        helper.make_node("Unsqueeze", ["n", "ax0"], ["n1"]), helper.make_node("Concat", ["n1", "m1"], ["shp"], axis=0),
        helper.make_node("Reshape", ["gp", "shp"], ["g"])], 2, None),
}


def glue_model(tmp_path, name: str):
    nodes, n_mid, last = GLUES[name]
    rng = np.random.default_rng(3)
    inits = {"wc": rng.normal(size=(2, 1, 3, 3)), "bc": rng.normal(size=2) * 0.1, "w2": rng.normal(size=(10, n_mid)),
             "b2": np.zeros(10), "c1": [0.25], "c2": [2.0],      # float constants; integer ones below stay int64
             "ax0": [0], "ax1": [1], "shape0": [0, -1], "i0": 0, "m1": [-1]}
    out = "y" if last is None else "z"
    body = [helper.make_node("Conv", ["x", "wc", "bc"], ["cv"], name="conv", pads=[1, 1, 1, 1]),
            helper.make_node("Relu", ["cv"], ["r"]), *nodes,
            helper.make_node("Gemm", ["g", "w2", "b2"], [out], name="fc", transB=1)]
    if last is not None:
        body.append(helper.make_node(last, [out], ["y"], axis=1))
    path = write_onnx(tmp_path / f"{name}.onnx", body, {"x": ["N", 1, 6, 6]}, {"y": ["N", 10]}, inits, name=name)
    rng = np.random.default_rng(4)
    np.savez(tmp_path / "d.npz", x=rng.random((96, 36)).astype(np.float32), y=rng.integers(0, 10, 96))
    return path, f"npz:{tmp_path / 'd.npz'}"


@pytest.mark.parametrize("name", list(GLUES))
def test_glue_ops_match_onnxruntime_and_train(name, tmp_path):
    path, data = glue_model(tmp_path, name)
    model = load_model(path)
    assert len(model.layers) == 2 and len(convert(model)) >= 1
    out = tmp_path / "tuned.onnx"
    rep = finetune(model, data, config=FinetuneConfig(mode="ideal", epochs=2, lr=1e-2, batch_size=32), out=out).report
    assert rep["steps"] == 6
    assert not np.allclose(load_model(out).layers[0].weight, model.layers[0].weight)   # the gradient got through


def test_hil_rule_value_from_the_chip_gradient_from_the_twin(demo_onnx):
    """y = twin(x) + (chip(x) - twin(x)).detach(): the logits are the chip's, the gradient the twin's at the
    chip's inputs; with an exact chip and an exact twin both equal plain backpropagation."""
    model = load_model(demo_onnx)
    x = np.random.default_rng(0).random((16, 64)).astype(np.float32)
    target = torch.arange(16) % 10

    def grads(devices, mode, shift=None):
        net = Network(model, load_twin(None, model), convert(model), [0, 1, 2])
        net.attach([devices[k] for k in range(3)] if devices else None)
        if shift is not None:
            with torch.no_grad():
                net.biases[2] += shift
        out = net.forward(x, mode, key=(0,))
        torch.nn.functional.cross_entropy(out, target).backward()
        return out.detach(), [w.grad.clone() for w in net.weights]

    ideal = {k: Emulator() for k in range(3)}
    out_i, g_i = grads(None, "ideal")
    out_c, g_c = grads(ideal, "chip")
    assert torch.allclose(out_i, out_c, atol=1e-5)
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(g_i, g_c))
    # a chip that adds a constant to its last layer: the value moves by it, the gradient stays the twin's
    from hwloop.profiles import parse_profile

    shifted = dict(ideal)
    shifted[2] = Emulator(parse_profile("version: 1\nprovenance: {source: assumption}\n"
                                        "gain_offset: {gain: 0.0, offset: 0.5}\n"))
    out_s, g_s = grads(shifted, "chip")
    offset = out_s - out_i
    assert torch.allclose(offset, offset[:1].expand_as(offset), atol=1e-5) and offset.abs().max() > 0.05
    # ... and the gradient is backpropagation through the twin at the chip's values: the same as an
    # exact model whose last bias carries the chip's offsets
    out_b, g_b = grads(None, "ideal", shift=offset[0])
    assert torch.allclose(out_b, out_s, atol=1e-5)
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(g_b, g_s))
    assert not torch.allclose(g_s[2], g_i[2], atol=1e-4)


def test_twin_is_the_emulator_physics_in_torch(demo_onnx, tmp_path):
    """Noise-free, the twin with the emulator's per-neuron gains and offsets computes what the emulator does
    (DAC, weight quantisation, transfer function, gain/offset, ADC); its noise has the profile's variance."""
    import yaml

    from hwloop.physics import noise_variance
    from hwloop.profiles import parse_profile

    prof = {"version": 1, "provenance": {"source": "assumption"}, "dac": {"bits": 8, "range": [0.0, 1.0]},
            "weights": {"bits": 6}, "gain_offset": {"gain": 0.1, "offset": 0.05},
            "transfer": {"function": "exp_sat", "slope": 0.8, "scale": 1.1}, "adc": {"bits": 10, "range": [-2, 2]}}
    model = load_model(demo_onnx)
    L = model.layers[0]
    x = np.random.default_rng(1).random((1, 200, 64)).astype(np.float32)
    emu = Emulator(parse_profile(yaml.safe_dump(prof)))
    emu.program(L, seed=3)
    want = emu.run(x, repeats=1)[0]
    prof["provenance"]["per_neuron"] = {0: {"gain": emu._gain[0].tolist(), "offset": emu._offset[0].tolist()}}
    (tmp_path / "twin.yaml").write_text(yaml.safe_dump(prof))
    twin = load_twin(tmp_path / "twin.yaml", model)[0]
    got = twin(torch.from_numpy(x[0]), torch.from_numpy(L.weight), torch.from_numpy(L.bias)).numpy()
    step = 4 / 1023
    assert np.mean(np.abs(got - want) < 1e-6) > 0.99 and np.abs(got - want).max() <= step * 1.001

    noisy = {"version": 1, "provenance": {"source": "assumption"}, "noise": {"D_A": 1e-3, "D_M": 4e-3}}
    (tmp_path / "noisy.yaml").write_text(yaml.safe_dump(noisy))
    twin = load_twin(tmp_path / "noisy.yaml", model)[0]
    xs = torch.from_numpy(np.repeat(x[0, :1], 4000, axis=0))
    args = (xs, torch.from_numpy(L.weight), torch.from_numpy(L.bias))
    clean = twin(*args).numpy()[0]
    draws = twin(*args, gen=torch.Generator().manual_seed(0)).numpy()
    var = draws.var(axis=0, ddof=1)
    want_var = noise_variance(clean, parse_profile(yaml.safe_dump(noisy)).defaults.noise)
    # sample variance of n normal draws: relative standard error sqrt(2 / (n - 1)); 5 sigma over 32 neurons
    assert np.all(np.abs(var / want_var - 1) < 5 * np.sqrt(2 / (len(draws) - 1)))
