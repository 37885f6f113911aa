"""Config validation with messages that name the key, for the Snakefile and the stages."""

from __future__ import annotations

import json
import math
from pathlib import Path

import jsonschema
import yaml


class ConfigError(ValueError):
    """A config value the schema rejects; the message names its key."""


def key_name(path) -> str:
    """['gmm', 'pretrain', 'lr'] -> 'gmm.pretrain.lr'; list positions as [i]."""
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "<top level>"


def _integer(checker, instance) -> bool:
    """An integer is an int (YAML's 100), not a float with an integral value (100.0, which JSON Schema counts as
    one): such a value would reach paths (seed1.0/) and command lines (--steps 100.0) as written."""
    return isinstance(instance, int) and not isinstance(instance, bool)


# Draft 2020-12 with that stricter integer.
Validator = jsonschema.validators.extend(
    jsonschema.Draft202012Validator,
    type_checker=jsonschema.Draft202012Validator.TYPE_CHECKER.redefine("integer", _integer))


def describe(error: jsonschema.ValidationError) -> str:
    key = key_name(error.absolute_path)
    if error.validator == "type" and isinstance(error.instance, float) and error.instance.is_integer():
        return (f"config key '{key}': {error.instance!r} is not an integer; write it without the decimal point "
                f"({int(error.instance)})")
    if error.validator == "enum":
        return f"config key '{key}': {error.instance!r} is not allowed; allowed values: {', '.join(map(str, error.validator_value))}"
    if error.validator == "additionalProperties":
        allowed = sorted(error.schema.get("properties", {}))
        unknown = sorted(set(error.instance) - set(allowed))
        where = f"under '{key}'" if error.absolute_path else "at the top level"
        return f"unknown config key(s) {', '.join(repr(u) for u in unknown)} {where}; allowed keys: {', '.join(allowed)}"
    if error.validator == "required":
        return f"config key '{key}': {error.message}"
    if error.validator in ("oneOf", "anyOf", "not", "pattern") and "description" in error.schema:
        return f"config key '{key}': {error.instance!r} is not allowed; expected {error.schema['description']}"
    return f"config key '{key}': {error.message}"


def refuse(problems: list[str]) -> None:
    """Raise ConfigError listing the problems, one line each; nothing when there are none."""
    if problems:
        lines = "\n".join(f"  - {p}" for p in problems)
        raise ConfigError(f"invalid configuration ({len(problems)} problem(s)):\n{lines}")


def non_finite(value, path=()) -> list[str]:
    """Every number in a config that is NaN or infinite, as a message naming its key: such a
    value passes every bound of a JSON schema (NaN compares false with all of them)."""
    if isinstance(value, dict):
        return [m for key, item in value.items() for m in non_finite(item, (*path, key))]
    if isinstance(value, list):
        return [m for i, item in enumerate(value) for m in non_finite(item, (*path, i))]
    if isinstance(value, float) and not math.isfinite(value):
        return [f"config key '{key_name(path)}': {value!r} is not a finite number"]
    return []


def validate_config(config: dict, schema_path) -> None:
    """Raise ConfigError listing every violation of the schema, and every NaN or infinity, one
    line each."""
    schema = yaml.safe_load(Path(schema_path).read_text())
    validator = Validator(schema)
    errors = sorted(validator.iter_errors(config), key=lambda e: list(map(str, e.absolute_path)))
    refuse(non_finite(config) + [describe(e) for e in errors])


RESOURCES = "resources"  # where every download lands


def check_inputs(config: dict, basedir) -> None:
    """What the schema cannot know, checked before any job starts: where the downloads land,
    that input files are files, that precision@k can be computed on the corpus the config
    describes, that the synthetic corpus has the words its vocabulary is chosen from, and that the
    likelihood control is trained only where it can be enumerated.
    Raises ConfigError naming the key."""
    base = Path(basedir)
    problems = []
    downloads = {"semhash.archive": config["semhash"]["archive"],
                 "images.celeba.zip": config["images"]["celeba"]["zip"],
                 "images.torch_home": config["images"]["torch_home"]}
    for key, value in downloads.items():
        parts = Path(value).parts
        if Path(value).is_absolute() or ".." in parts or parts[:1] != (RESOURCES,) or len(parts) < 2:
            problems.append(f"config key '{key}': {value!r} is not under {RESOURCES}/; downloads land only there "
                            f"(a relative path such as {RESOURCES}/...; link a file kept elsewhere into it)")
    for key in ("semhash.archive", "images.celeba.zip"):
        if (base / downloads[key]).is_dir():
            problems.append(f"config key '{key}': {downloads[key]!r} is a directory; it must name the archive file")
    published = base / config["published_results"]
    if not published.is_file():
        problems.append(f"config key 'published_results': {config['published_results']!r} is not a file")
    sh = config["semhash"]
    documents = sh["synthetic"]["n_train"] if sh["source"] == "synthetic" else sh["expected_documents"]["train"]
    if documents and sh["precision_k"] > documents:
        problems.append(f"config key 'semhash.precision_k': {sh['precision_k']} is more than the {documents} training "
                        "documents searched (the retrieval database); use at most that")
    if sh["source"] == "synthetic" and sh["vocab_size"] > sh["synthetic"]["raw_vocab_size"]:
        problems.append(f"config key 'semhash.vocab_size': {sh['vocab_size']} is more than the synthetic corpus's "
                        f"{sh['synthetic']['raw_vocab_size']} words ('semhash.synthetic.raw_vocab_size'); the "
                        "vocabulary is chosen among them (prepare_corpus also refuses more than the words present)")
    exact = sh["exact"]
    if exact["ml_max_bits"] > exact["max_bits"]:
        problems.append(f"config key 'semhash.exact.ml_max_bits': {exact['ml_max_bits']} is more than "
                        f"'semhash.exact.max_bits' ({exact['max_bits']}); the likelihood control's log p(x) is "
                        "exact only where every code is enumerated")
    refuse(problems)


def plan_notes(config: dict, basedir) -> list[str]:
    """What a user should know before the run starts, printed with its plan (a dry run shows it): each input
    the run needs that is not there yet, with the rule that downloads it and where a copy obtained by hand
    goes, and the disk the kept image sets will take when over a gigabyte."""
    from .images.settings import inception_weights, kept_image_bytes

    base, notes = Path(basedir), []
    inputs = []
    if "semhash" in config["experiments"] and config["semhash"]["source"] != "synthetic":
        sh = config["semhash"]
        inputs.append(("the 20 Newsgroups archive", sh["archive"], "download_20newsgroups", sh["url"]))
    if "images" in config["experiments"]:
        im = config["images"]
        if im["source"] == "celeba":
            inputs.append(("CelebA's img_align_celeba.zip", im["celeba"]["zip"], "download_celeba",
                           "Google Drive, as torchvision's CelebA loader fetches it"))
        if im["features"] == "inception":
            inputs.append(("pytorch-fid's Inception weights", inception_weights(im), "download_inception",
                           "pytorch-fid's release on GitHub"))
    for what, path, rule, source in inputs:
        if not (base / path).is_file():
            notes.append(f"missing input: {what} at {path}; rule {rule} downloads it from {source}, or place a "
                         "copy obtained by hand there")
    if "images" in config["experiments"]:
        kept = kept_image_bytes(config["images"])
        if kept > 1e9:
            notes.append(f"disk: the faces' image sets take about {kept / 1e9:,.0f} GB under results/{config['run']}/"
                         "images/ (images.evaluate.keep_samples: false deletes each once it is scored)")
    return notes


# ---------------------------------------------------------------- what a stage reads of the config

# The experiments, in the order their claims are stacked (the schema's `experiments` enum).
EXPERIMENTS = ("gmm", "semhash", "images")


def stage_json(section: dict, keys) -> str:
    """The keys a stage reads of a config section, as the rule hands them (--settings): a dotted
    path ("evaluate.n_samples") takes one key of a subsection. A change to any other key of the
    section then re-runs nothing of that stage."""
    out: dict = {}
    for path in keys:
        key, _, sub = path.partition(".")
        if sub:
            out.setdefault(key, {})[sub] = section[key][sub]
        else:
            out[key] = section[key]
    return json.dumps(out, sort_keys=True)


def stage_section(text: str, keys, what: str) -> dict:
    """--settings back into a dict holding exactly `keys` (stage_json's); a missing or unknown key,
    or text that is not a JSON object, is a ConfigError naming `what` (a stage exits with its message)."""
    try:
        section = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{what} --settings: not JSON ({exc})") from None
    if not isinstance(section, dict):
        raise ConfigError(f"{what} --settings: expected a JSON object, got {text!r}")
    nested = {path.partition(".")[0] for path in keys if "." in path}  # subsections the stage reads a part of
    given = set()
    for key, value in section.items():
        if key in nested and isinstance(value, dict):
            given |= {f"{key}.{sub}" for sub in value}
        else:
            given.add(key)
    missing, unknown = sorted(set(keys) - given), sorted(given - set(keys))
    if missing or unknown:
        raise ConfigError(f"{what} --settings: missing {missing}, unknown {unknown}; expected {sorted(keys)}")
    return section


def run_identity(text: str, allowed: dict, what: str) -> dict:
    """--run back into a run's identity {column: value}: exactly the keys of `allowed`, each an int
    (allowed[key] is int) or one of the allowed values. The identity becomes columns of every CSV
    the stage writes; tables and claims group by those columns, never by a path."""
    try:
        run = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{what} --run: not JSON ({exc})") from None
    if not isinstance(run, dict) or set(run) != set(allowed):
        raise ConfigError(f"{what} --run: expected a JSON object with the keys {sorted(allowed)}, got {text!r}")
    out = {}
    for key, values in allowed.items():
        value = run[key]
        if values is int:
            if isinstance(value, bool) or not isinstance(value, int):
                raise ConfigError(f"{what} --run: {key} must be an integer, got {value!r}")
        elif value not in values:
            raise ConfigError(f"{what} --run: {key} {value!r} is not one of {list(values)}")
        out[key] = value
    return {key: out[key] for key in allowed}


# ---------------------------------------------------------------- checking config files by hand


def read_config_file(path) -> dict:
    """One config file (a preset, a user's overrides) as a mapping; ConfigError names the file and, for
    YAML that does not parse, the line and column (Snakemake's own message names neither)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path}: not found")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        raise ConfigError(f"config file {path}: not valid YAML{where}: {getattr(exc, 'problem', None) or exc}") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"config file {path}: not a text file ({exc.reason})") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path}: expected keys at the top level (key: value), got a {type(data).__name__}")
    return data


def merged(base: dict, update: dict) -> dict:
    """`update` laid over `base` as Snakemake merges --configfile files: mappings key by key, anything else replaced."""
    out = dict(base)
    for key, value in update.items():
        out[key] = merged(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def check_files(paths, basedir) -> dict:
    """config.yaml with each file laid over it in turn, validated as the Snakefile does (the schema, then
    check_inputs); returns the merged config. Every error names its file or its key."""
    basedir = Path(basedir)
    config = read_config_file(basedir / "config.yaml")
    for path in paths:
        config = merged(config, read_config_file(path))
    validate_config(config, basedir / "workflow" / "schemas" / "config.schema.yaml")
    check_inputs(config, basedir)
    return config


def main(argv: list[str] | None = None) -> None:
    import argparse
    import sys

    parser = argparse.ArgumentParser(
        prog="python -m vae_approx.config",
        description="Check config files as `snakemake --configfile FILE ...` would read them, naming the file or "
                    "key at fault (Snakemake's message for a file that is not YAML does not name the file).")
    sub = parser.add_subparsers(dest="command", required=True)
    check = sub.add_parser("check", help="config.yaml with FILE... laid over it, in order")
    check.add_argument("files", nargs="*", help="presets or override files, as given to --configfile")
    check.add_argument("--workflow", default=".", help="the workflow's folder (holds config.yaml); default: here")
    args = parser.parse_args(argv)
    try:
        config = check_files(args.files, args.workflow)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(1)
    print(f"config ok: run '{config['run']}', experiments {', '.join(config['experiments'])}")


if __name__ == "__main__":
    main()
