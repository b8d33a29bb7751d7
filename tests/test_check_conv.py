"""``hwloop check`` on a CNN takes the emulator's direct Conv path (``run_conv``), as ``hwloop run`` does.

The check's per-look wrapper forwards ``run_conv`` with its look keys: a deterministic profile gives
the per-repeat accuracies of the unfolded-rows path (what the check did before), a noisy one the
numbers of the emulator's own ``run_conv`` under the look's keys, and no Conv is unfolded.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest

import hwloop.lowering as lowering
from helpers import trained_digits_cnn
from hwloop.check import check_model
from hwloop.check.model import _LOOK_TAG, _Look
from hwloop.devices import Emulator
from hwloop.graph import load_model
from hwloop.profiles import parse_profile

#: every deterministic step the direct path takes (no ADC: a rounding either side of a level is not at stake)
DETERMINISTIC = """
version: 1
provenance: {source: hand-written, notes: tests/test_check_conv.py}
gain_offset: {gain: 0.05, offset: 0.02}
transfer: {function: model, slope: 1.2, scale: 0.9}
drift: {per: repeat, gain: 0.02, offset: 0.05}
"""
NOISY = DETERMINISTIC + "noise: {D_A: 1.0e-3, D_M: 2.0e-3, D_AC: 1.0e-4, D_MC: 1.0e-4, placement: post}\n"
CHECK = dict(data="digits@120", repeats=12, seed=4, max_drop=1.0, batch_size=40)


class RowsOnly(Emulator):
    """The emulator seen through the check's wrapper before: Conv layers always as unfolded rows."""
    run_conv = None


@dataclass(frozen=True)
class EmulatorTarget:
    """A check target of one emulator class under ``profile`` (``hwloop.check.model.Target``'s hook)."""
    name: str
    sha256: str
    profile: object
    kind: type = Emulator

    def devices(self, model):
        return {L.index: self.kind(self.profile) for L in model.layers}


@pytest.fixture(scope="module")
def trained_cnn(tmp_path_factory):
    """conv 8, conv 16, average pooling, trained briefly on the digits (its accuracy can move with the chip)."""
    return trained_digits_cnn(tmp_path_factory.mktemp("cnn"), "avg", epochs=3)


@pytest.fixture
def unfolded(monkeypatch) -> list[int]:
    """Counts the Convs unfolded into rows (the real ``im2col``, counted)."""
    calls: list[int] = []
    real = lowering.im2col

    def counted(x, layer):
        calls.append(layer.index)
        return real(x, layer)

    monkeypatch.setattr(lowering, "im2col", counted)
    return calls


def test_a_deterministic_cnn_check_gives_the_rows_path_accuracies(trained_cnn, unfolded):
    profile = parse_profile(DETERMINISTIC, "deterministic")
    rows = check_model(trained_cnn, profile=EmulatorTarget("p", "0", profile, RowsOnly), **CHECK)
    assert len(unfolded) > 0                                   # the rows path unfolds every Conv
    unfolded.clear()
    direct = check_model(trained_cnn, profile=EmulatorTarget("p", "0", profile), **CHECK)
    assert unfolded == [], "a check's Conv went as unfolded rows"
    assert len(set(direct.accuracy.tolist())) > 1              # drift per repeat: the repeats differ
    assert direct.accuracy.tobytes() == rows.accuracy.tobytes()
    assert direct.decision == rows.decision and direct.clean_accuracy == rows.clean_accuracy
    for a, b in zip(direct.layers, rows.layers):
        assert a.snr_db == pytest.approx(b.snr_db, abs=1e-3)   # float32 sums in another order


def test_a_noisy_cnn_check_draws_with_the_look_keys(trained_cnn, digits, unfolded):
    profile = parse_profile(NOISY, "noisy")
    model = load_model(trained_cnn)
    conv = model.layers[0]
    x = digits.x[:6].reshape(1, 6, 1, 8, 8).astype(np.float32)
    emu = Emulator(profile)
    emu.program(conv, seed=9)
    look = _Look(emu, 3)
    key = (4, 0, 1)
    assert look.run_conv(x, repeats=5, key=key).tobytes() == \
        emu.run_conv(x, repeats=5, key=(_LOOK_TAG, 3, *key)).tobytes()
    assert look.run_conv(x, repeats=5, key=(4, 0, 2)).tobytes() != look.run_conv(x, repeats=5, key=key).tobytes()
    rows_only = RowsOnly(profile)
    rows_only.program(conv, seed=9)
    assert _Look(rows_only, 3).run_conv(x, repeats=5, key=key) is None   # the caller then unfolds the rows

    first = check_model(model, profile=EmulatorTarget("noisy", "0", profile), **CHECK)
    again = check_model(model, profile=EmulatorTarget("noisy", "0", profile), **CHECK)
    assert unfolded == []
    assert first.accuracy.tobytes() == again.accuracy.tobytes()     # same seed, same numbers
    assert len(set(first.accuracy.tolist())) > 1
