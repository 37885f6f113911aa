# Helpers shared by every experiment's rules: config validation, paths, targets.

import os
import sys

# Jobs run `python -m vae_approx...` from this checkout's src/, also inside the conda
# environment (envs/vae-approx.yaml) and on cluster nodes.
SRC = f"{workflow.basedir}/src"
sys.path.insert(0, SRC)
shell.prefix(
    # Snakemake formats the prefix too, hence the doubled braces of the f-string's ${...}.
    f"set -euo pipefail; export PYTHONPATH='{SRC}'${{{{PYTHONPATH:+:$PYTHONPATH}}}}; "
)

from vae_approx.config import validate_config

# Reject a bad config before any job starts, naming the key and the allowed values.
validate_config(config, f"{workflow.basedir}/workflow/schemas/config.schema.yaml")

ENV = "../../envs/vae-approx.yaml"
RUN = config["run"]
RESULTS = f"results/{RUN}"
LOGS = f"{RESULTS}/logs"
BENCHMARKS = f"{RESULTS}/benchmarks"


def all_targets():
    """The final products of every experiment named in config['experiments']."""
    targets = [f"{RESULTS}/claims.csv", f"{RESULTS}/claims.md"]
    if "gmm" in config["experiments"]:
        targets += gmm_targets()
    if "semhash" in config["experiments"]:
        targets += [
            f"{RESULTS}/semhash/test_nelbo_best.md",
            f"{RESULTS}/semhash/curves.png",
        ]
    return targets


def gmm_targets():
    return expand(
        f"{RESULTS}/gmm/{{encoder}}/{{name}}",
        encoder=config["gmm"]["encoders"],
        name=["table.csv", "table.md", "regions.png", "curves.png"],
    )


def experiment_claims():
    """The claims file of every selected experiment, stacked by rule collect_claims."""
    files = []
    if "gmm" in config["experiments"]:
        files += expand(
            f"{RESULTS}/gmm/{{encoder}}/claims.csv", encoder=config["gmm"]["encoders"]
        )
    if "semhash" in config["experiments"]:
        files.append(f"{RESULTS}/semhash/claims.csv")
    return files


def semhash_archive():
    """The raw archive prepare_corpus reads: the real one (placed by hand or by
    download_20newsgroups) or the synthetic one, in the same format."""
    if config["semhash"]["source"] == "download":
        return config["semhash"]["archive"]
    return f"{RESULTS}/semhash/synthetic-20news-bydate-matlab.tgz"


def semhash_grid(name):
    """One file per training job of the grid (encoder x decoder depth x bits), in one fixed order."""
    return expand(
        f"{RESULTS}/semhash/{{encoder}}/depth{{depth}}/{{bits}}bits/{name}",
        encoder=config["semhash"]["encoders"],
        depth=config["semhash"]["depths"],
        bits=config["semhash"]["bits"],
    )
