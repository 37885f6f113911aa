"""Bad configs are rejected before any job starts, with a message naming the key."""

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from vae_approx.config import ConfigError, check_inputs, plan_notes, validate_config

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
    (("semhash", "kl_gradient"), "exact", ["semhash.kl_gradient", "estimator, analytic"]),
    (("semhash", "sha256"), "abc", ["semhash.sha256"]),
    (("semhash", "synthetic", "length_spread"), -1, ["semhash.synthetic.length_spread", "minimum"]),
    (("gmm", "encoders"), ["gaussian"], ["gmm.encoders[0]", "allowed values: factorized, consistent"]),
    (("device",), "tpu", ["device"]),
    (("run",), "a/b", ["run"]),
    (("gmm", "seeds"), DELETE, ["'seeds' is a required property"]),
    (("gmm", "seeds"), [], ["gmm.seeds", "should be non-empty"]),
    (("gmm", "seeds"), [0, 1, 1], ["gmm.seeds", "non-unique"]),
    (("gmm", "seeds"), [0, -1], ["gmm.seeds[1]", "minimum"]),
    (("gmm", "seed"), 0, ["unknown config key", "'seed'", "under 'gmm'"]),
    (("semhash", "seeds"), [], ["semhash.seeds", "should be non-empty"]),
    (("semhash", "seeds"), [1, 1], ["semhash.seeds", "non-unique"]),
    (("semhash", "seed"), 1, ["unknown config key", "'seed'", "under 'semhash'"]),
    (("images", "seeds"), [0, 0], ["images.seeds", "non-unique"]),
    (("images", "seeds"), ["a"], ["images.seeds[0]", "not of type 'integer'"]),
    (("images", "pretrain", "seed"), 0, ["unknown config key", "'seed'", "under 'images.pretrain'"]),
    (("images", "bogus"), 1, ["unknown config key", "'bogus'", "under 'images'"]),
    (("images", "gan", "depth"), 4, ["unknown config key", "'depth'", "under 'images.gan'"]),
    (("images", "source"), "mnist", ["images.source", "allowed values: digits, celeba"]),
    (("images", "features"), "clip", ["images.features", "allowed values: digits, inception"]),
    (("images", "image_size"), 48, ["images.image_size", "allowed values: 16, 32, 64, 128"]),
    (("images", "generator_epoch"), "best", ["images.generator_epoch", "'best'", "completed epochs", "auto"]),
    (("images", "generator_epoch"), 0, ["images.generator_epoch", "auto"]),
    (("images", "fd_tolerance"), -1, ["images.fd_tolerance", "floor"]),
    (("images", "sigma"), 0, ["images.sigma"]),
    (("images", "pretrain", "iterations"), 0, ["images.pretrain.iterations", "minimum"]),
    (("images", "joint", "beta1"), 1.0, ["images.joint.beta1"]),
    (("images", "evaluate", "n_samples"), "many", ["images.evaluate.n_samples", "not of type 'integer'"]),
    (("images", "inception_sha256"), "6726825d", ["images.inception_sha256"]),
    (("images", "inception_unverified_ok"), "yes", ["images.inception_unverified_ok", "not of type 'boolean'"]),
    (("images", "inception_unverified_ok"), DELETE, ["'inception_unverified_ok' is a required property"]),
    (("images", "celeba", "zip"), "faces.tar", ["images.celeba.zip"]),
    (("images", "celeba", "md5"), "00D2C5BC", ["images.celeba.md5", "32 lowercase hex digits"]),
    (("images", "channels_last"), "yes", ["images.channels_last", "not of type 'boolean'"]),
    (("images", "threads"), DELETE, ["'threads' is a required property"]),
    (("images", "protocol", "sampling"), "train", ["images.protocol.sampling", "allowed values: eval, train_batch1"]),
    (("images", "protocol", "decoder_bn"), DELETE, ["'decoder_bn' is a required property"]),
    (("images", "protocol", "noise"), "none", ["unknown config key", "'noise'", "under 'images.protocol'"]),
    (("images", "ablation", "rows"), ["corrected", "bogus"], ["images.ablation.rows[1]", "allowed values"]),
    (("images", "ablation", "rows"), ["reference", "reference"], ["images.ablation.rows", "non-unique"]),
    (("images", "sigma_variants"), [], ["images.sigma_variants", "should be non-empty"]),
    (("images", "sigma_variants"), ["fixed", "both"], ["images.sigma_variants[1]", "allowed values: fixed, learned"]),
    (("images", "learn_sigma"), True, ["unknown config key", "'learn_sigma'", "under 'images'"]),
    (("images", "evaluate", "keep_samples"), "no", ["images.evaluate.keep_samples", "not of type 'boolean'"]),
    (("semhash", "cuda_graphs"), "on", ["semhash.cuda_graphs", "not of type 'boolean'"]),
    # a plain folder name: '..' would put the outputs in the repository's root
    (("run",), "..", ["config key 'run'", "not '.' or '..'"]),
    (("run",), ".", ["config key 'run'", "plain folder name"]),
    # NaN passes every bound of a schema, and infinity every bound but a maximum
    (("gmm", "joint", "lr"), float("nan"), ["config key 'gmm.joint.lr': nan is not a finite number"]),
    (("gmm", "variance"), float("nan"), ["config key 'gmm.variance': nan is not a finite number"]),
    (("semhash", "lr"), float("nan"), ["config key 'semhash.lr': nan"]),
    (("gmm", "variance"), float("inf"), ["config key 'gmm.variance': inf is not a finite number"]),
    (("images", "fd_tolerance"), float("inf"), ["config key 'images.fd_tolerance': inf"]),
    (("semhash", "synthetic", "mean_length"), float("-inf"), ["semhash.synthetic.mean_length", "-inf"]),
    # an integer with a decimal point would reach paths (seed1.0/) and command lines (--steps 100.0) as written
    (("gmm", "pretrain", "steps"), 100.0, ["config key 'gmm.pretrain.steps': 100.0 is not an integer", "(100)"]),
    (("gmm", "seeds"), [1.0], ["config key 'gmm.seeds[0]': 1.0 is not an integer"]),
    (("semhash", "bits"), [8.0], ["config key 'semhash.bits[0]': 8.0 is not an integer"]),
    (("images", "image_size"), 32.0, ["config key 'images.image_size': 32.0 is not an integer"]),
    (("images", "likelihood", "steps"), [25, 100.0], ["images.likelihood.steps[1]", "not an integer"]),
    # seeds every library accepts: 0 to 2^32 - 1
    (("images", "seeds"), [0, 2**32], ["images.seeds[1]", "4294967296 is greater than the maximum of 4294967295"]),
    (("images", "gan", "seed"), 2**40, ["images.gan.seed", "maximum of 4294967295"]),
    (("images", "likelihood", "start"), "posterior", ["images.likelihood.start", "allowed values: prior, encoder"]),
    (("images", "likelihood", "rows"), ["sampling"], ["images.likelihood.rows[0]", "allowed values"]),
]


@pytest.mark.parametrize("path,value,phrases", BAD, ids=[".".join(b[0]) for b in BAD])
def test_a_bad_value_is_rejected_naming_the_key(path, value, phrases):
    with pytest.raises(ConfigError) as err:
        validate_config(edit(path, value), SCHEMA)
    for phrase in phrases:
        assert phrase in str(err.value)


def test_celeba_images_need_inception_features():
    config = edit(("images", "source"), "celeba")  # features: digits needs digit labels CelebA lacks
    with pytest.raises(ConfigError) as err:
        validate_config(config, SCHEMA)
    assert "images.features" in str(err.value) and "allowed values: inception" in str(err.value)
    config["images"]["features"] = "inception"
    validate_config(config, SCHEMA)


def test_snakemake_refuses_a_bad_config_before_any_job(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"run": "badrun", "gmm": {"joint": {"lr": "fast"}}}))
    proc = subprocess.run(["snakemake", "-n", "--cores", "1", "--configfile", str(bad)], cwd=ROOT,
                          capture_output=True, text=True)
    assert proc.returncode != 0
    assert "gmm.joint.lr" in proc.stdout + proc.stderr
    assert not (ROOT / "results" / "badrun").exists()


def test_the_generator_epoch_must_be_one_the_gan_trains(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"run": "badrun", "images": {"generator_epoch": 31, "gan": {"epochs": 30}}}))
    proc = subprocess.run(["snakemake", "-n", "--cores", "1", "--configfile", str(bad)], cwd=ROOT,
                          capture_output=True, text=True)
    assert proc.returncode != 0
    assert "images.generator_epoch" in proc.stdout + proc.stderr and "images.gan.epochs (30)" in proc.stdout + proc.stderr
    assert not (ROOT / "results" / "badrun").exists()


def test_inputs_are_checked_against_the_files_before_any_job(tmp_path):
    """What the schema cannot see: downloads land under resources/, an archive path names a file,
    the published numbers exist, and precision@k fits the corpus the config describes."""
    (tmp_path / "reference").mkdir()
    (tmp_path / "reference" / "published_results.csv").write_text("x\n")
    check_inputs(merged(), tmp_path)
    check_inputs(merged("paper.yaml"), tmp_path)
    cases = [
        (("semhash", "archive"), "/tmp/20news.tgz", "config key 'semhash.archive': '/tmp/20news.tgz' is not under resources/"),
        (("semhash", "archive"), "resources/../../x.tgz", "'semhash.archive'"),
        (("images", "celeba", "zip"), "data/img_align_celeba.zip", "'images.celeba.zip': 'data/img_align_celeba.zip' is not under resources/"),
        (("images", "torch_home"), "..", "'images.torch_home'"),
        (("published_results",), "reference/missing.csv", "'published_results': 'reference/missing.csv' is not a file"),
        (("semhash", "precision_k"), 100000, "'semhash.precision_k': 100000 is more than the 2000 training documents"),
        (("semhash", "exact", "ml_max_bits"), 20, "'semhash.exact.ml_max_bits': 20 is more than 'semhash.exact.max_bits' (16)"),
        (("semhash", "vocab_size"), 5000, "'semhash.vocab_size': 5000 is more than the synthetic corpus's 4000 words"),
    ]
    for path, value, message in cases:
        with pytest.raises(ConfigError, match=re.escape(message)):
            check_inputs(edit(path, value), tmp_path)
    paper = merged("paper.yaml")
    paper["semhash"]["precision_k"] = 20000
    with pytest.raises(ConfigError, match="20000 is more than the 11269 training documents"):
        check_inputs(paper, tmp_path)
    paper["semhash"]["expected_documents"]["train"] = 0  # unknown until prepare_corpus: retrieval checks it
    check_inputs(paper, tmp_path)
    (tmp_path / "resources" / "20news-bydate-matlab.tgz").mkdir(parents=True)
    with pytest.raises(ConfigError, match="'semhash.archive': 'resources/20news-bydate-matlab.tgz' is a directory"):
        check_inputs(merged(), tmp_path)


def test_snakemake_refuses_bad_inputs_before_any_job(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"run": "badrun", "semhash": {"precision_k": 100000}, "gmm": {"variance": float("nan")}}))
    proc = subprocess.run(["snakemake", "-n", "--cores", "1", "--configfile", str(bad)], cwd=ROOT,
                          capture_output=True, text=True)
    assert proc.returncode != 0 and "gmm.variance" in proc.stdout + proc.stderr
    bad.write_text(yaml.safe_dump({"run": "badrun", "published_results": "reference/nothing.csv"}))
    proc = subprocess.run(["snakemake", "-n", "--cores", "1", "--configfile", str(bad)], cwd=ROOT,
                          capture_output=True, text=True)
    assert proc.returncode != 0 and "'published_results'" in proc.stdout + proc.stderr
    assert not (ROOT / "results" / "badrun").exists()


def test_no_bad_value_passes_the_checks_snakemake_runs_before_any_job():
    """Every bad value above, through both checks the workflow runs first (schema and NaN, then
    the files): none is accepted."""
    for path, value, _ in BAD:
        with pytest.raises(ConfigError):
            config = edit(path, value)
            validate_config(config, SCHEMA)
            check_inputs(config, ROOT)


# ---------------------------------------------------------------- one source per setting


def schema_enums(node: dict, path: str = "") -> dict[str, tuple]:
    """{dotted key: allowed values} of every key the schema gives an enum (a list's items included)."""
    out = {}
    for key, spec in node.get("properties", {}).items():
        name = f"{path}{key}"
        enum = spec.get("enum", spec.get("items", {}).get("enum"))
        if enum is not None:
            out[name] = tuple(enum)
        out.update(schema_enums(spec, f"{name}."))
    return out


def test_the_schema_allows_exactly_the_values_each_experiment_declares():
    """Allowed values are written once in Python, in each experiment's settings.py (ALLOWED), and the
    schema's enums agree with them, key by key and in order."""
    import importlib

    from vae_approx.config import EXPERIMENTS

    schema = yaml.safe_load(SCHEMA.read_text())
    enums = schema_enums(schema)
    assert enums.pop("experiments") == EXPERIMENTS
    for experiment in EXPERIMENTS:
        allowed = importlib.import_module(f"vae_approx.{experiment}.settings").ALLOWED
        section = {k.removeprefix(f"{experiment}."): v for k, v in enums.items() if k.startswith(f"{experiment}.")}
        assert {k: tuple(v) for k, v in allowed.items()} == section, experiment
    assert not [k for k in enums if k.split(".")[0] not in EXPERIMENTS], enums


def config_keys(section: dict) -> set[str]:
    """Every key name anywhere in a config section."""
    return {k for key, value in section.items()
            for k in ({key} | (config_keys(value) if isinstance(value, dict) else set()))}


def test_no_settings_dataclass_repeats_a_default_of_the_config():
    """config.yaml is the one source of every default: a stage's settings dataclass gives none of the
    configured keys a default of its own."""
    import dataclasses
    import importlib

    from vae_approx.config import EXPERIMENTS

    config = merged()
    checked = 0
    for experiment in EXPERIMENTS:
        module = importlib.import_module(f"vae_approx.{experiment}.settings")
        keys = config_keys(config[experiment])
        for cls in (c for c in vars(module).values() if dataclasses.is_dataclass(c) and c.__module__ == module.__name__):
            for field in dataclasses.fields(cls):
                has_default = (field.default is not dataclasses.MISSING
                               or field.default_factory is not dataclasses.MISSING)
                assert not (has_default and field.name in keys), f"{cls.__name__}.{field.name}: default in code"
                checked += 1
    assert checked > 0


def test_settings_modules_do_not_import_torch():
    """The workflow imports each experiment's settings while it builds the DAG: they stay free of torch."""
    code = ("import sys; import vae_approx.gmm.settings, vae_approx.semhash.settings, vae_approx.images.settings; "
            "sys.exit('torch' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_the_default_faces_protocol_is_the_corrected_one():
    """config.yaml's images.protocol is the corrected protocol the ablation starts from (settings.FACTORS)."""
    from vae_approx.images.settings import corrected

    assert merged()["images"]["protocol"] == corrected()


def test_the_plan_names_missing_inputs_and_the_disk_it_will_take(tmp_path):
    """The paper preset on a clone without data: each input to download or place by hand, with its rule, and the
    image sets' disk; the quick preset needs nothing and little disk. A dry run prints the same lines."""
    assert plan_notes(merged(), tmp_path) == []
    notes = plan_notes(merged("paper.yaml"), tmp_path)
    for path, rule in (("resources/20news-bydate-matlab.tgz", "download_20newsgroups"),
                       ("resources/celeba/img_align_celeba.zip", "download_celeba"),
                       ("pt_inception-2015-12-05-6726825d.pth", "download_inception")):
        assert any(path in note and f"rule {rule} downloads it" in note and "by hand" in note for note in notes)
    # 200,000 images x 3 x 64 x 64 bytes, five sets, 3 seeds x 5 sampled protocols
    assert any("about 184 GB" in note and "keep_samples: false" in note for note in notes)
    paper = merged("paper.yaml")
    for note in notes[:3]:
        placed = tmp_path / note.split(" at ")[1].split(";")[0]
        placed.parent.mkdir(parents=True, exist_ok=True)
        placed.write_bytes(b"x")
    paper["images"]["evaluate"]["keep_samples"] = False
    assert plan_notes(paper, tmp_path) == []
    dry = subprocess.run(["snakemake", "-n", "--configfile", "presets/paper.yaml"], cwd=ROOT, capture_output=True,
                         text=True, timeout=300)
    assert dry.returncode == 0 and "[vae-approx] disk: the faces' image sets take about 184 GB" in dry.stderr


def test_config_check_names_the_file_snakemake_does_not(tmp_path):
    """Snakemake's error for a --configfile that is not YAML names no file; `python -m vae_approx.config check`
    names it with the line, and validates the merged config as a dry run would."""
    from vae_approx.config import check_files, main

    broken = tmp_path / "mine.yaml"
    broken.write_text("gmm:\n  seeds: [0, 1\n  joint: {lr: 0.01}\n")
    with pytest.raises(ConfigError, match=r"config file .*mine\.yaml: not valid YAML at line 3"):
        check_files([broken], ROOT)
    (tmp_path / "list.yaml").write_text("- gmm\n")
    with pytest.raises(ConfigError, match=r"list\.yaml: expected keys at the top level"):
        check_files([tmp_path / "list.yaml"], ROOT)
    (tmp_path / "float.yaml").write_text("gmm:\n  seeds: [1.0]\n")
    with pytest.raises(ConfigError, match=r"'gmm\.seeds\[0\]': 1\.0 is not an integer"):
        check_files([tmp_path / "float.yaml"], ROOT)
    assert check_files([ROOT / "presets" / "smoke.yaml"], ROOT)["run"] == "smoke"
    with pytest.raises(SystemExit):
        main(["check", str(broken), "--workflow", str(ROOT)])
