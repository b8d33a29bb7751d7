"""The one resumable Zarr store the run, calibration and sweep stores share (real Zarr files)."""

from __future__ import annotations

import numpy as np
import pytest

from hwloop.calibration.measure import CalibrationStore
from hwloop.calibration.plan import ChipInfo, design_plan
from hwloop.errors import HwloopError
from hwloop.resumable import ZarrStore, creating, json_attrs
from hwloop.store import LayerInfo, RunWriter, open_run

CHIP = ChipInfo("Test,T-4,SN1,1.0", 4, 4, 64, 100, (-1.0, 1.0), 1.0, 1.0, (-4.0, 4.0), 12, ("linear",))


def run_store(path):
    return RunWriter.create(path, layers=[LayerInfo(0, "d", "Gemm", "linear", 3)], n_samples=4, n_classes=3,
                            batch_size=2, repeats=2, attrs={"seed": 0})


def test_each_kind_of_store_refuses_the_other(tmp_path):
    run_store(tmp_path / "run.zarr")
    CalibrationStore.create(tmp_path / "cal.zarr", design_plan(CHIP, 1000), {"idn": CHIP.idn})
    with pytest.raises(HwloopError, match=r"cal\.zarr: not an hwloop run store \(format 'hwloop-calibration/1'"):
        open_run(tmp_path / "cal.zarr")
    with pytest.raises(HwloopError, match=r"run\.zarr: not a calibration store \(format 'hwloop-run/1'"):
        CalibrationStore(tmp_path / "run.zarr")
    for open_ in (open_run, CalibrationStore):
        with pytest.raises(HwloopError, match=r"nothing\.zarr: no such (run|calibration) store"):
            open_(tmp_path / "nothing.zarr")


def test_markers_are_set_last_reset_and_read_by_every_store(tmp_path):
    w = run_store(tmp_path / "run.zarr")
    assert w.done().tolist() == [False, False]
    w.mark_done(1)
    assert ZarrStore.marked(w).tolist() == [False, True] and w.done().tolist() == [False, True]
    w.mark_done(1, False)     # a reset marker is written as a chunk too (the store shows it on disk)
    assert w.done().tolist() == [False, False] and (tmp_path / "run.zarr/bookkeeping/batch_done/c/1").is_file()
    cal = CalibrationStore.create(tmp_path / "cal.zarr", design_plan(CHIP, 1000), {"idn": CHIP.idn})
    p = cal.plan.probes[0]
    cal.write_block(p.index, np.zeros((p.repeats, len(p.levels), 4)), 0.0, 25.0)
    assert np.flatnonzero(cal.done).tolist() == [p.index] and cal.lost(lambda k: [f"blocks/{k}/zarr.json"]) == []
    assert cal.lost(lambda k: [f"blocks/{k}/nothing"]) == [p.index]


def test_resume_check_and_attrs_round_trip(tmp_path):
    w = run_store(tmp_path / "run.zarr")
    w.check_resume({"seed": 0, "n_samples": 4}, ("seed", "n_samples"))
    with pytest.raises(HwloopError, match=r"cannot resume: seed differs \(store has 0, this run has 1\)"):
        w.check_resume({"seed": 1}, ("seed",))
    w.set_attrs(note=("a", 1))                # tuples come back as lists, as JSON gives them
    assert open_run(tmp_path / "run.zarr").attrs["note"] == ["a", 1]
    with pytest.raises(HwloopError, match=r"run\.zarr: provenance is not JSON-serialisable"):
        w.set_attrs(bad=object())
    assert open_run(tmp_path / "run.zarr").attrs["note"] == ["a", 1]   # nothing half-written
    assert json_attrs({"a": (1, 2)}, "p") == {"a": [1, 2]}


def test_creating_refuses_an_existing_path_and_leaves_nothing_on_an_error(tmp_path):
    path = tmp_path / "s.zarr"
    with pytest.raises(RuntimeError):
        with creating(path, overwrite=False, exists="exists") as tmp:
            tmp.mkdir()
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []
    with creating(path, overwrite=False, exists="exists") as tmp:
        tmp.mkdir()
        (tmp / "x").write_text("1")
    with pytest.raises(HwloopError, match=r"s\.zarr: exists \(use --resume\)"):
        with creating(path, overwrite=False, exists="exists (use --resume)"):
            pass
    with creating(path, overwrite=True, exists="exists") as tmp:
        tmp.mkdir()
        (tmp / "y").write_text("2")
    assert sorted(p.name for p in path.iterdir()) == ["y"] and [p.name for p in tmp_path.iterdir()] == ["s.zarr"]
