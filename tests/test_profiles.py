"""Device profiles: shipped files validate, schema errors name file/line/key, overrides, writer, CLI."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest
import yaml

from hwloop.errors import HwloopError
from hwloop.profiles import (PROFILE_SCHEMA, SCHEMA_FILE, available_profiles, dump_profile, load_profile,
                             parse_profile, schema_json)

from helpers import hwloop

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = sorted((ROOT / "device_profiles").glob("*.yaml"))
HEAD = "version: 1\nprovenance: {source: hand-written}\n"  # lines 1-2 of every bad profile below


def test_the_four_required_profiles_are_shipped():
    assert {"ideal", "semenova", "optical", "crossbar"} <= {p.stem for p in SHIPPED}
    assert {"ideal", "semenova", "optical", "crossbar"} <= set(available_profiles())


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.stem)
def test_shipped_profile_validates_against_both_validators(path):
    prof = load_profile(path)
    assert prof.version and prof.provenance["source"]
    assert prof.text.startswith("#") or path.stem == "ideal", "shipped profiles state where magnitudes come from"
    # the published JSON Schema file accepts it too (what an editor would check)
    jsonschema.validate(yaml.safe_load(path.read_text()), json.loads(SCHEMA_FILE.read_text()))


def test_published_schema_file_is_up_to_date():
    # regenerate with: hwloop profile schema > hwloop/schema/profile.schema.json
    assert SCHEMA_FILE.read_text() == schema_json()
    jsonschema.Draft202012Validator.check_schema(PROFILE_SCHEMA)


def test_ideal_is_ideal_and_semenova_has_all_four_intensities():
    assert load_profile("ideal").for_layer(0, "x").ideal
    n = load_profile("semenova").for_layer(3, "any").noise
    assert min(n.D_A, n.D_M, n.D_AC, n.D_MC) > 0 and n.placement == "post"
    xb = load_profile("crossbar").for_layer(0, "x")
    assert xb.adc.bits == 8 and xb.weights.program_noise > 0 and xb.weights.read_noise > 0 and xb.gain_offset.active
    op = load_profile("optical").for_layer(0, "x")
    assert op.noise.D_MC > 0 and op.noise.D_A > 0 and op.noise.shot > 0 and op.adc.active


BAD = [  # (text after HEAD, line, key, words in the message)
    ("noise:\n  D_A: -0.1\n", 4, "noise.D_A", ">= 0"),
    ("noise:\n  D_MC: -1e-3\n", 4, "noise.D_MC", ">= 0"),
    ("adc:\n  bits: 40\n  range: [0, 1]\n", 4, "adc.bits", "<= 32"),
    ("dac:\n  range: [0, 1]\n  bits: 0\n", 5, "dac.bits", ">= 1"),
    ("noise:\n  D_A: 1e-3\n  D_X: 3\n", 5, "noise.D_X", "unknown key"),
    ("nosie:\n  D_A: 1\n", 3, "nosie", "unknown key"),
    ("adc:\n  bits: eight\n", 4, "adc.bits", "an integer"),
    ("noise:\n  D_A: [1]\n", 4, "noise.D_A", "a number"),
    ("noise:\n  D_A: true\n", 4, "noise.D_A", "a number"),
    ("noise: 3\n", 3, "noise", "a mapping"),
    ("noise:\n  placement: after\n", 4, "noise.placement", "post, pre, both"),
    ("noise:\n  units: sigma\n", 4, "noise.units", "variance, std"),
    ("layers:\n  fc1:\n    noise: {placement: after}\n", 5, "layers.fc1.noise.placement", "one of"),
    ("layers:\n  2:\n    nois: {D_A: 1}\n", 5, "layers.2.nois", "unknown key"),
    ("layers:\n  fc1:\n    adc:\n      bits: 33\n      range: [0, 1]\n", 6, "layers.fc1.adc.bits", "<= 32"),
    ("noise:\n  D_A: .nan\n", 4, "noise.D_A", "finite"),
    ("adc:\n  range: [1, 0]\n", 4, "adc.range", "below max"),
    ("adc:\n  range: [1]\n", 4, "adc.range", "2 items"),
    ("adc:\n  bits: 8\n", 4, "adc.bits", "needs a range"),
    ("weights:\n  range: 0\n", 4, "weights.range", "> 0"),
    ("array:\n  rows: 0\n", 4, "array.rows", ">= 1"),
]


@pytest.mark.parametrize("body,line,key,words", BAD, ids=[b[2] + ":" + b[3] for b in BAD])
def test_every_schema_error_names_file_line_and_key(tmp_path, body, line, key, words):
    p = tmp_path / "bad.yaml"
    p.write_text(HEAD + body)
    with pytest.raises(HwloopError) as e:
        load_profile(p)
    msg = str(e.value)
    assert msg.startswith(f"{p}:{line}: {key}: "), msg
    assert words in msg and "\n" not in msg


@pytest.mark.parametrize("text,line,words", [
    ("provenance: {source: hand-written}\n", 1, "version: missing required key"),
    ("version: 1\nprovenance: {author: me}\n", 2, "provenance.source: missing required key"),
    ("version: 1\nversion: 2\nprovenance: {source: hand-written}\n", 2, "duplicate key 'version'"),
    ("version: 1\nprovenance: {source: hand-written\n", 3, "not valid YAML"),
    ("- 1\n- 2\n", 1, "must be a mapping"),
    ("version: 1\nprovenance: {source: hand-written}\nformat: 2\n", 3, "format: must be 1"),
    ("version: 1\nprovenance: !!python/object:os.system {}\n", 2, "not valid YAML"),  # no unsafe tags
])
def test_structural_errors(tmp_path, text, line, words):
    p = tmp_path / "bad.yaml"
    p.write_text(text)
    with pytest.raises(HwloopError, match=f"^{p}:{line}: .*{words}"):
        load_profile(p)


def test_yaml_1_2_numbers_and_plain_dates():
    p = parse_profile("version: 2026-01-31\nprovenance: {source: calibrated, date: 2026-01-31}\n"
                      "noise: {D_A: 1e-3, D_M: 2E-4}\n", "p.yaml")
    assert p.version == "2026-01-31" and p.provenance["date"] == "2026-01-31"
    assert p.defaults.noise.D_A == 1e-3 and p.defaults.noise.D_M == 2e-4


def test_std_units_are_squared_and_overrides_apply_by_index_then_name():
    prof = parse_profile(HEAD + """
noise: {units: std, D_A: 0.1, D_M: 0.2}
adc: {bits: 8, range: [-1, 1]}
layers:
  1: {noise: {D_A: 0.5}}                   # variance (units apply per mapping)
  fc2: {noise: {units: std, D_M: 0.3}, adc: {bits: 4}}
""", "p.yaml")
    d = prof.for_layer(0, "fc1")
    assert d.noise.D_A == pytest.approx(0.01) and d.noise.D_M == pytest.approx(0.04)
    one = prof.for_layer(1, "fc2")
    assert one.noise.D_A == 0.5 and one.noise.D_M == pytest.approx(0.09)
    assert one.adc.bits == 4 and one.adc.range == (-1.0, 1.0)  # keys not overridden are inherited
    assert prof.for_layer(2, "fc3") == d


def test_override_naming_no_layer_is_an_error():
    from hwloop.layer import AnalogLayer
    import numpy as np

    prof = parse_profile(HEAD + "layers:\n  fc9:\n    noise: {D_A: 1}\n", "p.yaml")
    layers = [AnalogLayer(0, "fc1", "Gemm", np.zeros((2, 2), np.float32), np.zeros(2, np.float32))]
    with pytest.raises(HwloopError, match=r"^p.yaml:4: layers.fc9: no layer"):
        prof.check_layers(layers)
    parse_profile(HEAD + "layers:\n  0:\n    noise: {D_A: 1}\n", "q.yaml").check_layers(layers)


def test_dump_profile_round_trips_and_refuses_invalid(tmp_path):
    import numpy as np

    data = {"name": "fitted", "version": "2026-01-01",
            "provenance": {"source": "calibrated", "instrument": "Lumen,ANB-64R,SN1,2.3.1", "n_measurements": 1000},
            "noise": {"D_A": np.float64(1.5e-4), "D_MC": 2e-5}, "adc": {"bits": 6, "range": (0.0, 1.0)},
            "uncertainty": {"noise": {"D_A": 3e-6}}, "layers": {0: {"gain_offset": {"gain": 0.01}}}}
    out = dump_profile(data, tmp_path / "fitted.yaml", header="fitted by test\nfrom the simulated bench")
    back = load_profile(tmp_path / "fitted.yaml")
    assert back.text.startswith("# fitted by test\n# from the simulated bench\n")
    assert back.sha256 == out.sha256
    s = back.for_layer(0, "x")
    assert s.noise.D_A == 1.5e-4 and s.adc.range == (0.0, 1.0) and s.gain_offset.gain == 0.01
    assert back.provenance["n_measurements"] == 1000
    dump_profile(back, tmp_path / "again.yaml")
    again = load_profile(tmp_path / "again.yaml")
    assert again.for_layer(0, "x") == s and again.text == back.text  # a loaded profile keeps its comments
    with pytest.raises(HwloopError, match="noise.D_A"):
        dump_profile({**data, "noise": {"D_A": -1}}, tmp_path / "bad.yaml")
    assert not (tmp_path / "bad.yaml").exists() and not list(tmp_path.glob("*.tmp"))


def test_bare_names_and_search_path(tmp_path, monkeypatch):
    assert load_profile("semenova").path == ROOT / "device_profiles" / "semenova.yaml"
    assert load_profile("semenova.yaml").sha256 == load_profile("semenova").sha256
    with pytest.raises(HwloopError, match="no profile of that name.*semenova"):
        load_profile("semenovaa")
    (tmp_path / "mine.yaml").write_text(HEAD + "noise: {D_A: 0.25}\n")
    monkeypatch.setenv("HWLOOP_PROFILE_PATH", str(tmp_path))
    assert load_profile("mine").for_layer(0, "x").noise.D_A == 0.25
    with pytest.raises(HwloopError, match="no such profile file"):
        load_profile(tmp_path / "missing.yaml")


def test_the_example_in_docs_is_a_valid_profile():
    doc = (ROOT / "docs" / "profiles.md").read_text()
    example = doc.split("```yaml\n", 1)[1].split("```", 1)[0]
    prof = parse_profile(example, "docs/profiles.md")
    assert prof.for_layer(0, "x").noise.D_A == 0 and prof.for_layer(2, "/fc3/Gemm").adc.bits == 10
    assert prof.for_layer(1, "y") == prof.defaults


def test_describe_carries_text_and_hash():
    p = load_profile("crossbar")
    d = p.describe()
    json.dumps(d)
    assert d["text"] == p.text and len(d["sha256"]) == 64 and d["version"] == "1"


def test_cli_profile_validate_and_schema(tmp_path):
    ok = hwloop("profile", "validate", *map(str, SHIPPED))
    assert ok.returncode == 0 and ok.stdout.count(": ok") == len(SHIPPED)
    bad = tmp_path / "bad.yaml"
    bad.write_text(HEAD + "adc:\n  bits: 64\n  range: [0, 1]\n")
    r = hwloop("profile", "validate", str(bad))
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [f"hwloop profile: error: {bad}:4: adc.bits: must be <= 32 (got 64)"]
    s = hwloop("profile", "schema")
    assert s.returncode == 0 and json.loads(s.stdout) == PROFILE_SCHEMA
