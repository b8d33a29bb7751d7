"""A run's memory estimate counts what the run really holds: a Conv that its device takes whole (the
emulator's direct path, ``run_conv``) holds its input tensor, not the unfolded im2col rows.

The figure is read where the runner hands it to ``hwloop.inputs.require_memory`` (the real check runs
as well: these runs are small)."""

from __future__ import annotations

import pytest

import hwloop.runner as runner
from hwloop.devices import Emulator
from hwloop.graph import load_model
from hwloop.profiles import parse_profile
from hwloop.runner import prepare, run_model

NOISY = ("version: 1\nprovenance: {source: hand-written, notes: tests/test_runner_memory.py}\n"
         "noise: {D_A: 1.0e-3, D_M: 1.0e-3, placement: post}\n")
ROWS = NOISY + "dac: {bits: 6, range: [-3, 3]}\n"        # an input DAC sees the rows: no direct path


class RowsOnly(Emulator):
    """The emulator without its direct path: every Conv as unfolded rows."""
    run_conv = None


@pytest.fixture
def figures(monkeypatch) -> list[float]:
    """The bytes each run's set-up asked ``require_memory`` for (the real check still runs)."""
    asked: list[float] = []
    real = runner.require_memory

    def spy(nbytes: float, what: str, hint: str) -> None:
        asked.append(nbytes)
        real(nbytes, what, hint)

    monkeypatch.setattr(runner, "require_memory", spy)
    return asked


def estimate(model, data, devices, figures, **kw) -> float:
    figures.clear()
    prepare(model, data, devices=devices, **kw)
    (figure,) = figures
    return figure


def test_a_direct_path_conv_run_is_estimated_below_its_im2col_rows(cnn_onnx, digits, figures):
    model, ds = load_model(cnn_onnx), digits.head(60)
    kw = dict(repeats=5, seed=1, batch_size=30)
    noisy = parse_profile(NOISY, "noisy")
    direct = {L.index: Emulator(noisy) for L in model.layers}
    assert all(d.takes_conv_whole(L) == (L.conv is not None) for L, d in zip(model.layers, direct.values()))
    assert not Emulator(parse_profile(ROWS, "rows")).takes_conv_whole(model.layers[0])

    whole = estimate(model, ds, direct, figures, **kw)
    rows = estimate(model, ds, {L.index: RowsOnly(noisy) for L in model.layers}, figures, **kw)
    dac = estimate(model, ds, {L.index: Emulator(parse_profile(ROWS, "rows")) for L in model.layers}, figures, **kw)
    assert whole < rows
    # the noise-free reference pass takes plain Convs whole whatever the devices: rows only on the noisy side
    assert dac == rows
    # 3x3 kernels: each unfolded row repeats an input value up to 9 times; the first Conv's input (1 channel)
    # unfolds to 9 values per position, its output 8: the saving is most of the inputs' share
    assert rows - whole > 0.2 * rows

    held = run_model(model, ds, devices={L.index: Emulator(noisy) for L in model.layers}, **kw)
    arrays = sum(a.nbytes for a in held.layers + held.clean_layers) + held.output.nbytes + held.clean_output.nbytes
    assert whole > arrays       # still above what the run (in memory) actually holds at the end
