"""``analyze --predict`` on a run whose layers ran on different devices: each layer with its own device."""

from __future__ import annotations

import pytest

from hwloop.cli import main

pytest_plugins = ["tests.bench_fixtures"]

QUIET = "name: quiet\nversion: 1\nprovenance: {source: hand-written}\nnoise: {units: variance, D_A: 1.0e-6}\n"


def ratios(text: str) -> list[float]:
    return [float(line.split()[-1]) for line in text.splitlines() if line.strip()[:1].isdigit()]


@pytest.mark.slow
def test_mixed_run_is_predicted_layer_by_layer(make_bench, demo_onnx, tmp_path, capsys):
    from hwloop.analysis.predict import predict
    from hwloop.graph import load_model
    from hwloop.store import open_run

    bench = make_bench("semenova", seed=3)       # the chip: Semenova noise; the demo's weights need scale 2
    (tmp_path / "quiet.yaml").write_text(QUIET)
    bf = tmp_path / "bench.yaml"
    bf.write_text(f'devices:\n  chip: {{resource: "{bench.resource}", twin: semenova}}\n'
                  "  rest: {profile: quiet.yaml}\ndefault: rest\nlayers: {0: chip}\n")
    out = tmp_path / "run.zarr"
    with pytest.warns(UserWarning, match="sigmoid runs on the host"):
        assert main(["run", str(demo_onnx), "--bench", str(bf), "--data", "digits@30", "--repeats", "300",
                     "--out", str(out)]) == 0
    capsys.readouterr()
    assert main(["analyze", str(out), "--predict"]) == 0
    text = capsys.readouterr().out
    # 300 repetitions x 30 samples: n_eff >= 9e3 per layer -> ~1.5% error; 10% as for single-device runs
    r = ratios(text)
    assert len(r) == 3 and all(abs(v - 1) < 0.1 for v in r), text
    assert "0: chip (VisaDevice, twin semenova; activation on the host, scale 2)" in text
    assert "1: rest (Emulator, profile quiet)" in text
    # what one profile for every layer predicts instead: layers 1 and 2 off by far more than 10x
    run = open_run(out)
    wrong = predict(load_model(demo_onnx), "semenova", "digits@30")
    from hwloop.analysis.measured import analyze_run

    meas = analyze_run(run)
    for k in (1, 2):
        assert float(wrong["var_mean"][k]) / float(meas["var_mean"][k]) > 10


def test_a_chip_without_a_profile_asks_for_one(make_bench, mlp_onnx, tmp_path, capsys):
    bench = make_bench()
    bf = tmp_path / "bench.yaml"
    bf.write_text(f'devices:\n  chip: {{resource: "{bench.resource}"}}\nlayers: {{0: chip}}\n')
    out = tmp_path / "run.zarr"
    assert main(["run", str(mlp_onnx), "--bench", str(bf), "--data", "digits@5", "--repeats", "2",
                 "--out", str(out)]) == 0
    capsys.readouterr()
    assert main(["analyze", str(out), "--predict"]) == 2
    err = capsys.readouterr().err
    assert "layer 0 ran on VisaDevice 'chip' without a profile: give --profile" in err
    assert main(["analyze", str(out), "--predict", "--profile", "ideal"]) == 0
    assert "0: chip (VisaDevice, --profile ideal" in capsys.readouterr().out
