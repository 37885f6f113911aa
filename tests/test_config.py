"""Bad configs are rejected before any job starts, with a message naming the key."""

import copy
import subprocess
from pathlib import Path

import pytest
import yaml

from vae_approx.config import ConfigError, validate_config

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = ROOT / "workflow/schemas/config.schema.yaml"


def merged(preset=None):
    from snakemake.utils import update_config

    config = yaml.safe_load((ROOT / "config.yaml").read_text())
    if preset:
        update_config(config, yaml.safe_load((ROOT / "presets" / preset).read_text()))
    return config


@pytest.mark.parametrize("preset", [None, "smoke.yaml", "paper.yaml"])
def test_every_preset_is_valid(preset):
    validate_config(merged(preset), SCHEMA)


def edit(path, value):
    config = merged()
    node = config
    for key in path[:-1]:
        node = node[key]
    if value is DELETE:
        del node[path[-1]]
    else:
        node[path[-1]] = value
    return config


DELETE = object()
BAD = [
    (("gmm", "bogus"), 1, ["unknown config key", "'bogus'", "under 'gmm'"]),
    (("colour",), "red", ["unknown config key", "'colour'", "top level"]),
    (("gmm", "pretrain", "steps"), "many", ["gmm.pretrain.steps", "not of type 'integer'"]),
    (("gmm", "joint", "lr"), -0.1, ["gmm.joint.lr", "minimum"]),
    (("gmm", "variance"), 0, ["gmm.variance"]),
    (("experiments",), ["gmm", "mnist"], ["experiments[1]", "'mnist'", "allowed values: gmm"]),
    (("semhash", "encoders"), ["e4"], ["semhash.encoders[0]", "allowed values: e1, e2, e3"]),
    (("semhash", "estimator"), "reinforce", ["semhash.estimator", "disarm, arm"]),
    (("semhash", "sha256"), "abc", ["semhash.sha256"]),
    (("semhash", "synthetic", "length_spread"), -1, ["semhash.synthetic.length_spread", "minimum"]),
    (("gmm", "encoders"), ["gaussian"], ["gmm.encoders[0]", "allowed values: factorized, consistent"]),
    (("device",), "tpu", ["device"]),
    (("run",), "a/b", ["run"]),
    (("gmm", "seed"), DELETE, ["'seed' is a required property"]),
]


@pytest.mark.parametrize("path,value,phrases", BAD, ids=[".".join(b[0]) for b in BAD])
def test_a_bad_value_is_rejected_naming_the_key(path, value, phrases):
    with pytest.raises(ConfigError) as err:
        validate_config(edit(path, value), SCHEMA)
    for phrase in phrases:
        assert phrase in str(err.value)


def test_snakemake_refuses_a_bad_config_before_any_job(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"run": "badrun", "gmm": {"joint": {"lr": "fast"}}}))
    proc = subprocess.run(["snakemake", "-n", "--cores", "1", "--configfile", str(bad)], cwd=ROOT,
                          capture_output=True, text=True)
    assert proc.returncode != 0
    assert "gmm.joint.lr" in proc.stdout + proc.stderr
    assert not (ROOT / "results" / "badrun").exists()
