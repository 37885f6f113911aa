# Helpers shared by every experiment's rules: config validation, paths, targets.

import json
import os
import shlex
import sys
from pathlib import Path

# Jobs run `python -m vae_approx...` from this checkout's src/, also inside the conda
# environment (envs/vae-approx.yaml) and on cluster nodes.
SRC = f"{workflow.basedir}/src"
sys.path.insert(0, SRC)
shell.prefix(
    # Snakemake formats the prefix too, hence the doubled braces of the f-string's ${...}.
    f"set -euo pipefail; export PYTHONPATH='{SRC}'${{{{PYTHONPATH:+:$PYTHONPATH}}}}; "
)

from vae_approx.config import (
    EXPERIMENTS,
    ConfigError,
    check_inputs,
    plan_notes,
    stage_json,
    validate_config,
)

# Reject a bad config before any job starts, naming the key and the allowed values.
validate_config(config, f"{workflow.basedir}/workflow/schemas/config.schema.yaml")
check_inputs(
    config, os.getcwd()
)  # relative paths are relative to the working directory
# Missing inputs and the disk the run will take, with the plan (a dry run shows them too).
for note in plan_notes(config, os.getcwd()):
    print(f"[vae-approx] {note}", file=sys.stderr)

ENV = "../../envs/vae-approx.yaml"
RUN = config["run"]
# The run's provenance (vae_approx.provenance) as the jobs that record it get it: the whole config, and the
# config files in the order Snakemake merged them (the Snakefile's config.yaml, then each --configfile),
# relative to the workflow's folder when inside it. Any change to the config re-runs those jobs.
WHOLE_CONFIG = shlex.quote(json.dumps(config))
CONFIG_FILES = " ".join(
    shlex.quote(
        os.path.relpath(path, workflow.basedir)
        if Path(path).is_relative_to(workflow.basedir)
        else path
    )
    for path in map(
        os.path.abspath,
        [f for f in workflow.configfiles if f not in workflow.overwrite_configfiles]
        + list(workflow.overwrite_configfiles),
    )
)
RESULTS = f"results/{RUN}"
LOGS = f"{RESULTS}/logs"
BENCHMARKS = f"{RESULTS}/benchmarks"


# Replicates: the seed wildcard of every experiment's per-seed paths (seed<k>/).
wildcard_constraints:
    seed=r"\d+",


def gpu_whole(wildcards):
    """Every GPU slot the run declares (--resources gpu_slots=k, profiles/local): a faces job has the GPU to
    itself, while up to k semantic-hashing or GMM jobs (gpu_slots=1 each) share it. 1 when none is declared.
    """
    declared = workflow.global_resources
    slots = declared["gpu_slots"] if "gpu_slots" in declared else 1
    # a Resource (Snakemake 9) or a number
    return int(getattr(slots, "value", slots) or 1)


# Each experiment's rules file registers its final products and its claims files here; rule all
# and collect_claims take those of the experiments in config['experiments'], in EXPERIMENTS order
# (the order of the claims table).
# No `def` in an experiment's rules file (snakemake --lint): its path layout lives in
# vae_approx.<experiment>.settings, and the rules file registers lists computed at parse time.
TARGETS = {}  # experiment -> its final products
CLAIMS = {}  # experiment -> its claims CSV files


def selected_experiments():
    return [e for e in EXPERIMENTS if e in config["experiments"]]


def all_targets(provenance=True):
    """The final products of every experiment named in config['experiments'], and the
    run's provenance unless `provenance` is False (rule record_provenance's input)."""
    targets = [f"{RESULTS}/claims.csv", f"{RESULTS}/claims.md"]
    for experiment in selected_experiments():
        targets += TARGETS[experiment]
    if provenance:
        targets += [f"{RESULTS}/provenance.json", f"{RESULTS}/config.yaml"]
    return targets


def experiment_claims():
    """The claims file of every selected experiment, stacked by rule collect_claims."""
    return [f for experiment in selected_experiments() for f in CLAIMS[experiment]]


def settings_json(section, keys):
    """The keys a stage reads of a config section, as its --settings argument (vae_approx.config.stage_json):
    a change to another key of the section re-runs nothing of that stage."""
    return shlex.quote(stage_json(section, keys))


def run_json(wildcards):
    """A job's identity, its wildcards, as its --run argument: the stage writes it as columns of its CSVs,
    which tables and claims group by (nothing parses a path)."""
    run = {k: int(v) if v.isdigit() else v for k, v in wildcards.items()}
    return shlex.quote(json.dumps(run, sort_keys=True))
