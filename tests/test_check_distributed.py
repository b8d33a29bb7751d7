"""One `hwloop check` (a single model x profile) spread over a real local Dask cluster (2 worker processes):
every look's batches computed on the workers through ``hwloop.distributed``, one client for all looks,
the same decision and the same numbers (per-repeat accuracies, flip rate, SNR, clipping) as in one process."""

from __future__ import annotations

import pytest

from hwloop.check import check_model
from hwloop.cli import main

#: noisy (semenova's neuron noise) and clipping (about a fifth of the logits exceed the ADC's +-6): every number acts
PROFILE = ("version: 1\nprovenance: {source: hand-written}\n"
           "noise: {units: variance, D_A: 1.0e-3, D_M: 1.0e-3, D_AC: 1.0e-4, D_MC: 1.0e-4, placement: post}\n"
           "layers:\n  2: {adc: {range: [-6, 6]}}\n")
#: 200 samples in batches of 40 (5 per look); a flip-rate bar these 16 repeats cannot decide: three looks
CHECK = dict(data="digits@200", batch_size=40, max_repeats=16, seed=3, max_flip_rate=0.03)


@pytest.fixture(scope="module")
def profile(tmp_path_factory):
    path = tmp_path_factory.mktemp("profile") / "noisy-clipping.yaml"
    path.write_text(PROFILE)
    return path


def added_clients(cluster) -> int:
    """Clients the (in-process) scheduler has seen connect so far."""
    return sum(1 for _, e in cluster.scheduler.get_events("all")
               if isinstance(e, dict) and e.get("action") == "add-client")


def test_one_check_on_two_workers_equals_the_local_check(demo_onnx, profile, cluster):
    local = check_model(demo_onnx, profile=profile, **CHECK)
    before = added_clients(cluster)
    dask = check_model(demo_onnx, profile=profile, scheduler=cluster.scheduler_address, **CHECK)
    assert added_clients(cluster) == before + 1, "one Dask client for all the looks"
    assert local.decision == "undecided" and local.repeats == 16        # three looks: 4, 8, 16
    assert dask.decision == local.decision and dask.repeats == local.repeats
    assert dask.accuracy.tobytes() == local.accuracy.tobytes()
    assert len(set(local.accuracy.tolist())) > 1                           # the noise did act
    assert dask.bars[0].estimate == local.bars[0].estimate                  # flip rate and its bounds
    assert dask.clean_accuracy == local.clean_accuracy
    assert [(l.snr_db, l.clipped) for l in dask.layers] == [(l.snr_db, l.clipped) for l in local.layers]
    assert 0 < local.layers[2].clipped < 1                                 # counted on the workers, come back
    assert dask.to_dict() == local.to_dict()


def test_the_cli_shards_one_pair_over_local_workers(demo_onnx, profile, tmp_path, capsys):
    args = ["check", str(demo_onnx), "--profile", str(profile), "--data", "digits@200", "--batch-size", "40",
            "--max-repeats", "8", "--seed", "3", "--max-flip-rate", "0.03", "--no-cache"]
    assert main(args) == 3                                                  # undecided after two looks
    here = capsys.readouterr().out
    assert main([*args, "--workers", "2"]) == 3
    assert capsys.readouterr().out == here


@pytest.mark.parametrize("option, says", [(["--workers", "0"], "--workers 0: give at least 1 Dask worker"),
                                          (["--scheduler", "tcp://127.0.0.1:9"], "Dask tcp://127.0.0.1:9: cannot")])
def test_bad_dask_options_are_one_line_exit_2(demo_onnx, option, says, capsys):
    code = main(["check", str(demo_onnx), "--profile", "semenova", "--data", "digits@50", "--repeats", "2",
                 "--min-accuracy", "0.5", "--no-cache", *option])
    err = capsys.readouterr().err
    assert code == 2 and says in err and len(err.strip().splitlines()) == 1, err
