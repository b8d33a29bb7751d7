"""`hwloop run` / `hwloop inspect` end to end: bad input, determinism, SIGKILL + --resume."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import zarr
from conftest import kill_after_batches
from onnx import helper

from exporters.handbuilt import write_onnx
from hwloop.cli import main
from hwloop.graph import load_model
from hwloop.store import open_run

from helpers import hwloop

MODELS = ["mlp_onnx", "mlp_dynamo_onnx", "cnn_onnx", "cnn_dynamo_onnx", "mlp_bn_onnx", "skl_mlp_onnx",
          "handbuilt_onnx", "demo_onnx"]


def arrays(path) -> dict[str, bytes]:
    """Every array of a store, as raw bytes, by path."""
    out = {}
    root = zarr.open_group(str(path), mode="r")
    for name, arr in root.arrays():
        out[name] = arr[:].tobytes()
    for k in root["layers"].group_keys():
        for name, arr in root[f"layers/{k}"].arrays():
            out[f"layers/{k}/{name}"] = arr[:].tobytes()
    return out


@pytest.mark.parametrize("fixture", MODELS)
def test_inspect_lists_the_analog_layers(fixture, request, expected_layers, capsys):
    path = request.getfixturevalue(fixture)
    assert main(["inspect", str(path)]) == 0
    out = capsys.readouterr().out
    analog = [line.split() for line in out.splitlines() 
              if len(line.split()) > 2 and line.split()[2] == "analog" and line.split()[0].isdigit()]
    want = expected_layers[fixture]
    assert [int(row[0]) for row in analog] == list(range(len(want)))
    assert [row[3].split("+")[0] for row in analog] == [op for op, *_ in want]
    assert [row[-2] for row in analog] == [act for _, act, *_ in want]
    weights = [int(row[-1]) for row in analog]
    assert weights == [n_in * n_out for _, _, n_in, n_out in want]
    assert f"{len(want)} analog layers" in out


def test_run_records_a_complete_store(demo_onnx, tmp_path, capsys):
    out = tmp_path / "run.zarr"
    assert main(["run", str(demo_onnx), "--data", "digits@100", "--repeats", "3", "--seed", "1",
                 "--out", str(out), "--batch-size", "32", "--profile", "semenova"]) == 0
    text = capsys.readouterr().out
    run = open_run(out)
    assert run.complete and run.layer(2).shape == (3, 100, 10)
    acc = run.accuracy.values
    sem = acc.std(ddof=1) / np.sqrt(3)
    assert f"accuracy {acc.mean():.4f} ± {sem:.4f} (mean ± standard error over 3 repeats)" in text and str(out) in text
    attrs = run.attrs
    assert attrs["profile"]["name"] == "semenova" and attrs["profile_sha256"] == attrs["profile"]["sha256"]
    assert attrs["model_sha256"] == load_model(demo_onnx).sha256 and attrs["seed"] == 1
    assert {"hwloop", "torch", "onnxruntime", "onnx", "numpy"} <= set(attrs["versions"])
    assert attrs["devices"][0]["type"] == "Emulator" and "start_time" in attrs and "command_line" in attrs
    # same seed, same bytes; another seed, other bytes
    for name, seed in (("same.zarr", "1"), ("other.zarr", "2")):
        assert main(["run", str(demo_onnx), "--data", "digits@100", "--repeats", "3", "--seed", seed,
                     "--out", str(tmp_path / name), "--batch-size", "32", "--profile", "semenova"]) == 0
    assert arrays(out) == arrays(tmp_path / "same.zarr")
    assert arrays(out)["layers/0/output"] != arrays(tmp_path / "other.zarr")["layers/0/output"]


def test_dry_run_writes_nothing(demo_onnx, tmp_path, capsys):
    assert main(["run", str(demo_onnx), "--data", "digits", "--repeats", "5", "--batch-size", "100",
                 "--out", str(tmp_path / "r.zarr"), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "3 analog layers" in out and "6 batches of 100" in out and "5 repeats" in out
    assert not (tmp_path / "r.zarr").exists()


def tiny(tmp_path, name, nodes, inits, domains=()):
    return write_onnx(tmp_path / name, nodes, {"input": ["b", 64]}, {"y": ["b", 10]}, inits, domains=domains,
                      check=False)


def bad_inputs(tmp_path, mlp_onnx) -> dict:
    """case -> (model, data spec, text the one-line message must contain)."""
    cut = tmp_path / "cut.onnx"
    cut.write_bytes(mlp_onnx.read_bytes()[:700])
    # (an elementwise product is digital glue, not an analog layer)
    no_analog = tiny(tmp_path, "noanalog.onnx", [helper.make_node("Mul", ["input", "k"], ["m"]),
                                                 helper.make_node("Slice", ["m", "s", "e", "a"], ["y"])],
                     {"k": np.ones(64), "s": np.array([0]), "e": np.array([10]), "a": np.array([1])})
    odd = tiny(tmp_path, "odd.onnx", [helper.make_node("Gemm", ["input", "W"], ["a"]),
                                      helper.make_node("Frobnicate", ["a"], ["y"], name="frob", domain="lab.ops")],
               {"W": np.ones((64, 10))}, domains=["lab.ops"])
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "wide.npz", x=rng.random((5, 70)).astype(np.float32), y=np.zeros(5, np.int64))
    x = rng.random((5, 64)).astype(np.float32)
    x[3, 7] = np.nan
    np.savez(tmp_path / "nan.npz", x=x, y=np.zeros(5, np.int64))
    return {
        "missing file": (tmp_path / "absent.onnx", "digits", "absent.onnx: no such model file"),
        "truncated": (cut, "digits", "cut.onnx: "),
        "no analog layer": (no_analog, "digits", "noanalog.onnx: no analog layer"),
        "unsupported op": (odd, "digits", "node 'frob' (Frobnicate"),
        "width mismatch": (mlp_onnx, f"npz:{tmp_path / 'wide.npz'}", "70 values per sample"),
        "NaN input": (mlp_onnx, f"npz:{tmp_path / 'nan.npz'}", "NaN"),
        "unknown data": (mlp_onnx, "cifar:x", "unknown data set 'cifar'"),
    }


def test_every_bad_input_is_one_line_and_exit_2(tmp_path, mlp_onnx, capsys):
    for case, (model, data, needle) in bad_inputs(tmp_path, mlp_onnx).items():
        out = tmp_path / f"{case.replace(' ', '_')}.zarr"
        assert main(["run", str(model), "--data", data, "--out", str(out)]) == 2, case
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and needle in err and "Traceback" not in err, (case, err)
        assert not out.exists(), case
    # an existing output is refused and left untouched
    existing = tmp_path / "existing.zarr"
    existing.mkdir()
    (existing / "keep.txt").write_text("mine")
    assert main(["run", str(mlp_onnx), "--data", "digits@10", "--out", str(existing)]) == 2
    err = capsys.readouterr().err.strip()
    assert "existing.zarr: output exists" in err and len(err.splitlines()) == 1
    assert [p.name for p in existing.iterdir()] == ["keep.txt"]
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".partial")]   # no half-created store


def test_bad_input_in_a_real_process_has_no_traceback(tmp_path):
    res = hwloop("run", tmp_path / "absent.onnx", "--out", tmp_path / "r.zarr")
    assert res.returncode == 2 and res.stderr.strip().count("\n") == 0
    assert "absent.onnx: no such model file" in res.stderr and "Traceback" not in res.stderr


@pytest.mark.slow
def test_sigkill_then_resume_equals_uninterrupted_run(tmp_path, demo_onnx, capsys):
    """Kill -9 a real `hwloop run` mid-run, check the partial store, --resume (in this process), compare bytes."""
    args = ["run", demo_onnx, "--data", "digits@200", "--repeats", "3", "--seed", "7", "--batch-size", "4",
            "--profile", "semenova"]          # 200 samples -> 50 batches
    full, killed = tmp_path / "full.zarr", tmp_path / "killed.zarr"
    assert main([*map(str, args), "--out", str(full)]) == 0
    n_batches = 50
    done = kill_after_batches([sys.executable, "-m", "hwloop", *map(str, args), "--out", str(killed)], killed, 10)
    run = open_run(killed)
    assert not run.complete and 10 <= done.sum() < n_batches
    assert done[:done.sum()].all()   # batches finish in order: the first unset marker is where --resume starts
    samples = np.flatnonzero(np.repeat(done, 4)[:200])
    assert run.layer(1).sizes["sample"] == len(samples)
    reference = open_run(full)
    for k in range(3):   # completed batches are intact
        assert run.layer(k).values.tobytes() == reference.layer(k).values[:, samples].tobytes()

    assert main([*map(str, args), "--out", str(killed), "--resume"]) == 0
    assert open_run(killed).complete
    assert arrays(killed) == arrays(full)
    # a resume with other settings is refused
    capsys.readouterr()
    assert main([*(str(a) if a != "7" else "8" for a in args), "--out", str(killed), "--resume"]) == 2
    assert "cannot resume: seed differs" in capsys.readouterr().err
