"""Bad input of every class, across the commands: one clear line, exit 2, nothing written (real files)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from hwloop.cli import main
from hwloop.errors import HwloopError
from hwloop.yamlio import load_yaml

BOMB = "\n".join(["a: &a [x, x, x, x, x, x, x, x, x]"] + [
    f"{c}: &{c} [{', '.join(['*' + p] * 9)}]" for p, c in zip("abcdefgh", "bcdefghi")]) + "\n"


def expect_refused(argv: list[str], needle: str, capsys, written: list[Path] = ()) -> str:
    """``hwloop ARGV`` exits 2 with one line naming the problem (argparse errors included), writes nothing."""
    try:
        rc = main([str(a) for a in argv])
    except SystemExit as e:        # argparse: the option checks of hwloop.argtypes
        rc = e.code
    err = capsys.readouterr().err.strip()
    assert rc == 2, (argv, rc, err)
    assert len(err.splitlines()) == 1 and "Traceback" not in err, (argv, err)
    assert needle in err, (argv, err)
    for p in written:
        assert not Path(p).exists(), (argv, p)
    return err


def with_weight(src: Path, dst: Path, value: float) -> Path:
    proto = onnx.load(str(src))
    init = proto.graph.initializer[0]
    w = numpy_helper.to_array(init).copy()
    w.flat[3] = value
    init.CopyFrom(numpy_helper.from_array(w, init.name))
    onnx.save(proto, str(dst))
    return dst


@pytest.fixture
def inputs(tmp_path, mlp_onnx):
    """Bad files of every kind beside a good model."""
    x = np.random.default_rng(0).random((12, 64)).astype(np.float32)
    np.savez(tmp_path / "big_label.npz", x=x, y=np.full(12, 12))
    np.savez(tmp_path / "neg_label.npz", x=x, y=np.full(12, -1))
    np.savez(tmp_path / "frac_label.npz", x=x, y=np.full(12, 1.5))
    np.savez(tmp_path / "onehot.npz", x=x, y=np.eye(10)[np.arange(12) % 10])
    np.savez(tmp_path / "strings.npz", x=np.array([["a"] * 64] * 12), y=np.zeros(12, int))
    np.savez(tmp_path / "string_labels.npz", x=x, y=np.array(["cat"] * 12))
    semenova = Path(__file__).resolve().parents[1] / "device_profiles" / "semenova.yaml"
    (tmp_path / "typo.yaml").write_text(semenova.read_text() + "layers:\n  dense9:\n    noise:\n      D_A: 1.0e-3\n")
    (tmp_path / "bomb.yaml").write_text(BOMB)
    (tmp_path / "afile").write_text("not a folder")
    return {"nan": with_weight(mlp_onnx, tmp_path / "nan.onnx", np.nan),
            "inf": with_weight(mlp_onnx, tmp_path / "inf.onnx", -np.inf), "dir": tmp_path}


def test_non_finite_weights_are_refused_by_every_command(inputs, capsys):
    d = inputs["dir"]
    for key in ("nan", "inf"):
        m = inputs[key]
        expect_refused(["run", m, "--data", "digits@20", "--out", d / "r.zarr"], "NaN or infinite", capsys,
                       [d / "r.zarr"])
        expect_refused(["check", m, "--profile", "semenova", "--min-accuracy", "0.5"], "NaN or infinite", capsys)
        expect_refused(["predict", m, "--profile", "semenova", "--data", "digits@20"], "NaN or infinite", capsys)
        expect_refused(["walk", m, "--sigmas", "0.1", "--data", "digits@20", "--out", d / "s.zarr"],
                       "NaN or infinite", capsys, [d / "s.zarr"])


def test_bad_labels_and_arrays(inputs, mlp_onnx, capsys):
    d = inputs["dir"]
    cases = {"big_label": "label 12 of sample 0 is outside [0, 10)", "neg_label": "is negative",
             "onehot": "not one-hot", "strings": "not real numbers",
             "string_labels": "not real numbers"}
    for name, needle in cases.items():
        data = f"npz:{d / name}.npz"
        expect_refused(["run", mlp_onnx, "--data", data, "--out", d / "r.zarr"], needle, capsys, [d / "r.zarr"])
        expect_refused(["check", mlp_onnx, "--data", data, "--profile", "ideal", "--min-accuracy", "0"], needle,
                       capsys)
    expect_refused(["walk", mlp_onnx, "--sigmas", "0.1", "--data", f"npz:{d / 'big_label.npz'}",
                    "--out", d / "s.zarr"], "outside [0, 10)", capsys, [d / "s.zarr"])


def test_profile_overrides_of_missing_layers_are_refused(inputs, mlp_onnx, capsys):
    d = inputs["dir"]
    typo = d / "typo.yaml"
    expect_refused(["run", mlp_onnx, "--data", "digits@20", "--profile", typo, "--out", d / "r.zarr"],
                   "layers.dense9: no layer", capsys, [d / "r.zarr"])
    expect_refused(["predict", mlp_onnx, "--profile", typo, "--data", "digits@20"], "layers.dense9", capsys)
    expect_refused(["check", mlp_onnx, "--profile", typo, "--min-accuracy", "0"], "layers.dense9", capsys)


def test_option_values_are_checked_by_name_in_every_command(inputs, mlp_onnx, capsys):
    d = inputs["dir"]
    for argv, needle in [
        (["run", mlp_onnx, "--batch-size", "0", "--out", d / "r.zarr"], "--batch-size: must be at least 1"),
        (["run", mlp_onnx, "--batch-size", "-3", "--out", d / "r.zarr"], "--batch-size: must be at least 1"),
        (["check", mlp_onnx, "--profile", "ideal", "--min-accuracy", "0", "--batch-size", "0"], "--batch-size"),
        (["check", mlp_onnx, "--profile", "ideal", "--min-accuracy", "nan"], "finite"),
        (["walk", mlp_onnx, "--repeats", "0", "--out", d / "s.zarr"], "--repeats"),
        (["walk", "plan", "x", "--budget", "-1", "--sigma", "1"], "--budget"),
        (["run", mlp_onnx, "--seed", "-1", "--out", d / "r.zarr"], "--seed: must be at least 0"),
        (["bench", "serve", "--port", "65536"], "--port: must lie in [0, 65535]"),
        (["bench", "serve", "--delay-s", "-1"], "--delay-s: must be at least 0"),
        (["bench", "serve", "--refuse-s", "inf"], "finite"),
        (["bench", "serve", "--drop-prob", "2"], "--drop-prob: must lie in [0, 1]"),
        (["calibrate", "--resource", "X", "--out", d / "p.yaml", "--budget", "0"], "--budget"),
    ]:
        expect_refused(argv, needle, capsys, [d / "r.zarr", d / "s.zarr", d / "p.yaml"])


def test_outputs_that_cannot_be_written(inputs, mlp_onnx, capsys):
    d = inputs["dir"]
    blocked = d / "afile" / "sub"           # the parent is a file
    for argv in (["run", mlp_onnx, "--data", "digits@20", "--out", blocked / "r.zarr"],
                 ["predict", mlp_onnx, "--profile", "ideal", "--data", "digits@20", "--out", blocked / "p.nc"],
                 ["check", mlp_onnx, "--profile", "ideal", "--min-accuracy", "0", "--junit", blocked / "j.xml"],
                 ["export", "tfc", "--out", blocked / "m.onnx"],
                 ["calibrate", "--resource", "X", "--out", blocked / "p.yaml"],
                 ["demo", "--out", blocked],
                 ["walk", "report", "s.zarr", "--report", blocked / "w.html"]):
        expect_refused(argv, "is not a folder", capsys)
    assert main([str(a) for a in ["run", mlp_onnx, "--data", "digits@20", "--out", d / "ok.zarr"]]) == 0
    capsys.readouterr()
    expect_refused(["analyze", d / "ok.zarr", "--out", blocked / "a.nc"], "is not a folder", capsys)
    expect_refused(["analyze", d / "ok.zarr", "--report", blocked / "a.html"], "is not a folder", capsys)
    # the default analysis path beside a store in a folder that is a file cannot happen; a store that is a file:
    expect_refused(["analyze", d / "afile"], "not an hwloop run store", capsys)


def test_damaged_stores_and_the_wrong_kind_of_store(inputs, mlp_onnx, capsys):
    d = inputs["dir"]
    good = d / "good.zarr"
    assert main([str(a) for a in ["run", mlp_onnx, "--data", "digits@20", "--repeats", "2", "--out", good]]) == 0
    capsys.readouterr()
    corrupt, missing = d / "corrupt.zarr", d / "missing.zarr"
    shutil.copytree(good, corrupt)
    shutil.copytree(good, missing)
    (corrupt / "layers" / "1" / "output" / "c" / "0" / "0" / "0").write_bytes(b"garbage")
    shutil.rmtree(missing / "layers" / "2" / "clean")
    expect_refused(["analyze", corrupt], "corrupt.zarr: damaged store: cannot read its data", capsys)
    expect_refused(["analyze", missing], "array 'layers/2/clean' is missing", capsys)
    expect_refused(["walk", "plan", good, "--budget", "10", "--sigma", "1"], "not a sweep store (a run store)",
                   capsys)
    expect_refused(["walk", "report", good], "not a sweep store", capsys, [good.with_suffix(".html")])


def test_jobs_that_cannot_fit_are_refused_with_the_figure(inputs, mlp_onnx, capsys):
    d = inputs["dir"]
    err = expect_refused(["run", mlp_onnx, "--data", "digits@20", "--repeats", "1000000000", "--out", d / "r.zarr"],
                         "of memory", capsys, [d / "r.zarr"])
    assert "needs about" in err and "available" in err
    expect_refused(["check", mlp_onnx, "--profile", "ideal", "--min-accuracy", "0", "--repeats", "100000000"],
                   "of memory", capsys)
    expect_refused(["walk", mlp_onnx, "--sigmas", "linspace:0:1:100000000000", "--out", d / "s.zarr"],
                   "of memory", capsys, [d / "s.zarr"])
    from hwloop.calibration.plan import ChipInfo, design_plan

    chip = ChipInfo(idn="x", max_inputs=64, max_outputs=64, max_batch=4096, max_repeats=1000,
                    input_range=(-1, 1), weight_max=1, bias_max=4, output_range=(-16, 16), output_bits=16,
                    activations=("linear",))
    with pytest.raises(HwloopError, match="a calibration of 10000000000000 evaluations needs about .* of memory"):
        design_plan(chip, 10 ** 13)


def test_yaml_alias_bombs_and_deep_nesting_are_refused_fast(inputs, mlp_onnx, capsys):
    d = inputs["dir"]
    bomb = d / "bomb.yaml"
    expect_refused(["profile", "validate", bomb], "aliases expand this document beyond", capsys)
    expect_refused(["run", mlp_onnx, "--data", "digits@20", "--profile", bomb, "--out", d / "r.zarr"],
                   "billion laughs", capsys, [d / "r.zarr"])
    expect_refused(["run", mlp_onnx, "--data", "digits@20", "--bench", bomb, "--out", d / "r.zarr"],
                   "billion laughs", capsys, [d / "r.zarr"])
    with pytest.raises(HwloopError, match="nested too deeply"):
        load_yaml("[" * 20000 + "]" * 20000, "deep.yaml")
    with pytest.raises(HwloopError, match="refers to the node it is in"):
        load_yaml("a: &a [1, *a]\n", "loop.yaml")
    # aliases of a normal size still work
    assert load_yaml("base: &b {D_A: 1.0e-3}\nlayers: {0: {noise: *b}}\n", "ok.yaml")["layers"][0]["noise"]["D_A"] \
        == 1e-3
