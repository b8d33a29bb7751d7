"""Walking Noise with a chip in the loop: `hwloop walk MODEL --bench B --sites ...` (evaluation-only)."""

from __future__ import annotations

import pytest

from hwloop.cli import main

pytest_plugins = ["tests.bench_fixtures"]


def test_walk_with_the_first_layer_on_a_chip(make_bench, demo_onnx, tmp_path, capsys):
    import xarray as xr

    bench = make_bench("semenova", seed=1)                 # layer 0 (site 2) on the chip, with its own noise
    bf = tmp_path / "bench.yaml"
    bf.write_text(f'devices:\n  chip: {{resource: "{bench.resource}"}}\nlayers: {{0: chip}}\n')
    out = tmp_path / "sweep.zarr"
    common = ["walk", str(demo_onnx), "--bench", str(bf), "--data", "digits@150", "--out", str(out)]
    with pytest.warns(UserWarning, match="sigmoid runs on the host"):
        assert main([*common, "--sites", "4", "--sigmas", "0,0.5,5", "--repeats", "2"]) == 0
    capsys.readouterr()
    sweep = xr.open_zarr(out)
    acc = sweep["accuracy"].values.reshape(3, 2)            # (sigma, repeat) at site 4 (the tanh layer's output)
    assert acc[0].min() > 0.8 and acc[2].max() < acc[0].min() - 0.3   # sigma 5 on tanh outputs wrecks the model
    assert sweep.attrs["bench"] == str(bf) and 0.8 < sweep.attrs["clean_accuracy"] <= 1
    assert bench.connections >= 1 and bench.clock.count > 0          # the chip really measured
    # site 2 is the chip's own layer, and global mode is not a walk: one clear line each
    for extra, message in ((["--sites", "2"], "site 2 runs on hardware; choose among [4, 5]"),
                           (["--mode", "global"], "--mode global is not available")):
        assert main([*common[:-1], str(tmp_path / "x.zarr"), *extra, "--sigmas", "0.1"]) == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "x.zarr").exists()
