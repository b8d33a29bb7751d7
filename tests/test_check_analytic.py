"""``check --analytic``: static programming errors in the screen (tested against sampling), its probability
cache, and ``check_model``'s settings object."""

from __future__ import annotations

import numpy as np
import pytest

from hwloop.check import Bars, Settings, check_model, resolve_target
from hwloop.check.analytic import analytic_check
from hwloop.check.matrix import run_matrix
from hwloop.check.screen import forget, screen
from hwloop.data import load_data
from hwloop.errors import HwloopError
from hwloop.graph import load_model
from hwloop.profiles import parse_profile

#: the screen's approximation budget (first-order covariance, Gaussian logits), in accuracy / flip-rate points
TOLERANCE = 0.005
ALL = Bars(min_accuracy=0.0, max_drop=1.0, max_flip_rate=1.0)

STATIC_ONLY = """
version: 1
name: static-only
provenance: {source: hand-written}
weights: {bits: 4, program_noise: 0.08}
gain_offset: {gain: 0.05, offset: 0.05}
"""


def _values(result) -> dict[str, tuple[float, float]]:
    return {b.name: (b.estimate.value, b.estimate.se) for b in result.bars}


def test_static_errors_only_the_screen_equals_sampling_exactly(demo_onnx):
    """No fresh noise: sampling is deterministic on the programmed chip, and the screen must be the same chip."""
    target = resolve_target(parse_profile(STATIC_ONLY))
    model, ds = load_model(demo_onnx), load_data("digits")
    for seed in (0, 1):
        s = Settings(ALL, scope="dataset", seed=seed)
        sampled = check_model(model, profile=target, data=ds, settings=Settings(ALL, scope="dataset", seed=seed,
                                                                                 repeats=2))
        screened = analytic_check(model, target, ds, s)
        assert screened.not_modelled == ""
        assert _values(sampled)["flip_rate"][0] > 0.01          # the programmed chip changes predictions
        for name, (value, _) in _values(sampled).items():
            assert _values(screened)[name][0] == pytest.approx(value, abs=1e-12), name


@pytest.mark.parametrize("seed", [0, 1])
def test_the_screen_follows_each_programmed_chip_under_crossbar(demo_onnx, seed):
    """crossbar: 6-bit weights with programming error, gain/offset spread, read noise, an 8-bit ADC that clips
    the logits.  Each seed programs another chip; the screen agrees with 200 sampled repeats of that chip."""
    s = Settings(ALL, data="digits", scope="dataset", seed=seed)
    screened = run_matrix([demo_onnx], ["crossbar"], Settings(ALL, data="digits", scope="dataset", seed=seed,
                                                              analytic=True))[0]
    sampled = run_matrix([demo_onnx], ["crossbar"], Settings(s.bars, data=s.data, scope="dataset", seed=seed,
                                                             repeats=200))[0]
    assert screened.not_modelled == ""
    got, want = _values(screened), _values(sampled)
    for name, (value, se) in want.items():
        assert abs(got[name][0] - value) <= TOLERANCE + 3 * se, (name, got[name], value)
    assert want["flip_rate"][0] > 0.01


def test_two_chips_differ_and_the_screen_tells_them_apart(demo_onnx):
    """The static errors are chip-specific: two seeds give drops that differ by many standard errors, and the
    screen (its fresh-noise prediction is the same for both) reproduces each within a third of that gap."""
    got, want = {}, {}
    for seed in (0, 1):
        kw = dict(data="digits", scope="dataset", seed=seed)
        got[seed] = _values(run_matrix([demo_onnx], ["crossbar"], Settings(ALL, analytic=True, **kw))[0])["drop"]
        want[seed] = _values(run_matrix([demo_onnx], ["crossbar"], Settings(ALL, repeats=200, **kw))[0])["drop"]
    gap = want[0][0] - want[1][0]
    assert abs(gap) > 6 * np.hypot(want[0][1], want[1][1])
    assert abs((got[0][0] - got[1][0]) - gap) < abs(gap) / 3


def test_probabilities_are_cached_on_disk_and_new_bars_reuse_them(demo_onnx, tmp_path):
    model, ds = load_model(demo_onnx), load_data("digits@200")
    prof = resolve_target("semenova").profile
    forget()
    first = screen(model, prof, ds, 0, tmp_path)
    files = list(tmp_path.glob("*.npz"))
    assert len(files) == 1
    forget()
    again = screen(model, prof, ds, 0, tmp_path)                 # read back from disk
    assert np.array_equal(again.probs, first.probs) and np.array_equal(again.clean, first.clean)
    assert np.allclose(first.probs.sum(axis=1), 1.0) and first.probs.min() >= 0.0
    files[0].write_bytes(b"not an npz")                          # damaged: recomputed and replaced
    forget()
    assert np.array_equal(screen(model, prof, ds, 0, tmp_path).probs, first.probs)
    assert np.load(files[0], allow_pickle=False)["probs"].shape == first.probs.shape
    other = screen(model, prof, ds, 1, tmp_path)                 # another seed: another entry
    assert len(list(tmp_path.glob("*.npz"))) == 2 and other.probs.shape == first.probs.shape
    strict, loose = (run_matrix([demo_onnx], ["semenova"], Settings(Bars(max_flip_rate=f), data="digits@200",
                                                                    scope="dataset", analytic=True),
                                cache=tmp_path)[0] for f in (0.0, 0.5))
    assert (strict.decision, loose.decision) == ("fail", "pass")
    assert len(list((tmp_path / "analytic").glob("*.npz"))) == 1  # one screen served both bars


def test_check_model_takes_settings_or_the_same_keywords(demo_onnx):
    s = Settings(Bars(min_accuracy=0.5, max_drop=0.3), data="digits@100", max_repeats=8, seed=3)
    by_object = check_model(demo_onnx, profile="semenova", settings=s)
    by_keywords = check_model(demo_onnx, profile="semenova", data="digits@100", min_accuracy=0.5, max_drop=0.3,
                              max_repeats=8, seed=3)
    assert by_object.to_dict() == by_keywords.to_dict() and by_object.decision == "pass"
    with pytest.raises(HwloopError, match="not both"):
        check_model(demo_onnx, profile="semenova", settings=s, max_drop=0.1)
    with pytest.raises(HwloopError, match=r"unknown argument\(s\) max_dorp"):
        check_model(demo_onnx, profile="semenova", max_dorp=0.1)
    with pytest.raises(HwloopError, match="--scope 'everything'"):
        Settings.of(max_drop=0.1, scope="everything")
    assert Settings.of(class_min={3: 0.8}).bars.class_min == ((3, 0.8),)


def test_derived_profiles_reach_overrides_by_index_and_by_name():
    """The screen turns the last layer's ADC off in every override that applies to it (a name override wins
    over an index override in ``for_layer``), and fresh noise off everywhere."""
    from hwloop.check.screen import derived
    from hwloop.layer import AnalogLayer

    p = parse_profile("version: 1\nprovenance: {source: hand-written}\nadc: {bits: 8, range: [-8, 8]}\n"
                      "noise: {D_A: 0.001}\nlayers:\n  out: {adc: {bits: 6, range: [-4, 4]}, noise: {D_M: 0.01}}\n")
    out = AnalogLayer(index=2, name="out", op="Gemm", weight=np.ones((2, 2), np.float32),
                      bias=np.zeros(2, np.float32), input="h", output="y")
    d = derived(p, {"noise": {"D_A": 0.0, "D_M": 0.0}}, last={"adc": {"bits": None, "range": None}}, layer=out)
    assert not d.for_layer(2, "out").adc.active and not d.for_layer(2, "out").noise.active
    assert d.for_layer(0, "hidden").adc.bits == 8 and not d.for_layer(0, "hidden").noise.active
    assert p.for_layer(2, "out").adc.bits == 6                   # the original is unchanged
