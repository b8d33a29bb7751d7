"""`hwloop walk MODEL --bench B` without --sites walks every site off the hardware (real pyvisa over TCP)."""

from __future__ import annotations

from hwloop.cli import main

pytest_plugins = ["tests.bench_fixtures"]


def test_walk_without_sites_visits_every_layer_off_the_chip(make_bench, demo_onnx, tmp_path, capsys):
    import xarray as xr

    bench = make_bench("semenova", seed=1)                 # layer 0 (site 2) on the chip
    bf = tmp_path / "bench.yaml"
    bf.write_text(f'devices:\n  chip: {{resource: "{bench.resource}"}}\nlayers: {{0: chip}}\n')
    out = tmp_path / "sweep.zarr"
    args = ["walk", str(demo_onnx), "--bench", str(bf), "--data", "digits@100", "--out", str(out),
            "--sigmas", "0,5"]
    assert main(args) == 0
    sweep = xr.open_zarr(out, consolidated=False)
    assert [int(s) for s in sweep["site"].values] == [4, 5]        # the tanh and linear layers' outputs, not 2
    acc = sweep["accuracy"].values.reshape(2, 2, 1)                 # (site, sigma, repeat)
    assert acc.shape == (2, 2, 1) and acc[:, 0].min() > 0.8 and acc[0, 1, 0] < acc[0, 0, 0] - 0.3
    assert bench.clock.count > 0                                     # the chip really measured
    # resuming without --sites, or naming the same sites, finds the same settings (a different choice is refused)
    assert main(args) == 0 and main([*args, "--sites", "4,5"]) == 0
    assert main([*args, "--sites", "4"]) == 2 and "sites" in capsys.readouterr().err
    assert (xr.open_zarr(out, consolidated=False)["accuracy"].values == sweep["accuracy"].values).all()
    # every analog layer on the chip leaves nothing to walk: one clear line, nothing written
    bf.write_text(f'devices:\n  chip: {{resource: "{bench.resource}"}}\nlayers: {{0: chip, 1: chip, 2: chip}}\n')
    assert main([*args[:7], str(tmp_path / "none.zarr"), *args[8:]]) == 2
    err = capsys.readouterr().err
    assert "no site is left to walk" in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "none.zarr").exists()
