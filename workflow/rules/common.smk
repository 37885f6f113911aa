# Helpers shared by every experiment's rules: config validation, paths, targets.

import os
import shlex
import sys

# Jobs run `python -m vae_approx...` from this checkout's src/, also inside the conda
# environment (envs/vae-approx.yaml) and on cluster nodes.
SRC = f"{workflow.basedir}/src"
sys.path.insert(0, SRC)
shell.prefix(
    # Snakemake formats the prefix too, hence the doubled braces of the f-string's ${...}.
    f"set -euo pipefail; export PYTHONPATH='{SRC}'${{{{PYTHONPATH:+:$PYTHONPATH}}}}; "
)

from vae_approx.config import ConfigError, check_inputs, validate_config
from vae_approx.images import settings as images_settings
from vae_approx.semhash.settings import TrainSettings

# Reject a bad config before any job starts, naming the key and the allowed values.
validate_config(config, f"{workflow.basedir}/workflow/schemas/config.schema.yaml")
check_inputs(
    config, os.getcwd()
)  # relative paths are relative to the working directory

ENV = "../../envs/vae-approx.yaml"
RUN = config["run"]
RESULTS = f"results/{RUN}"
LOGS = f"{RESULTS}/logs"
BENCHMARKS = f"{RESULTS}/benchmarks"


# Replicates: the seed wildcard of every experiment's per-seed paths (seed<k>/); the faces
# protocol's wildcards take exactly their factor's values.
wildcard_constraints:
    **images_settings.wildcard_constraints(),
    seed=r"\d+",


def gpu_whole(wildcards):
    """Every GPU slot the run declares (--resources gpu_slots=k, profiles/local): a faces job has the GPU to
    itself, while up to k semantic-hashing or GMM jobs (gpu_slots=1 each) share it. 1 when none is declared.
    """
    declared = workflow.global_resources
    slots = declared["gpu_slots"] if "gpu_slots" in declared else 1
    # a Resource (Snakemake 9) or a number
    return int(getattr(slots, "value", slots) or 1)


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
    if "images" in config["experiments"]:
        targets += images_targets()
    return targets


def gmm_targets():
    return expand(
        f"{RESULTS}/gmm/{{encoder}}/{{name}}",
        encoder=config["gmm"]["encoders"],
        name=["table.csv", "table.md", "curves.png"],
    ) + expand(
        f"{RESULTS}/gmm/seed{{seed}}/{{encoder}}/regions.png",
        seed=config["gmm"]["seeds"],
        encoder=config["gmm"]["encoders"],
    )


def gmm_seeds(name):
    """One file per GMM seed, in the config's seed order; `name` may hold {encoder}."""
    return expand(
        f"{RESULTS}/gmm/seed{{seed}}/{name}",
        seed=config["gmm"]["seeds"],
        allow_missing=True,
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
    if "images" in config["experiments"]:
        files.append(f"{RESULTS}/images/claims.csv")
        if config["images"]["ablation"]["rows"]:
            files.append(f"{RESULTS}/images/ablation_claims.csv")
    return files


def semhash_archive():
    """The raw archive prepare_corpus reads: the real one (placed by hand or by
    download_20newsgroups) or the synthetic one, in the same format."""
    if config["semhash"]["source"] == "download":
        return config["semhash"]["archive"]
    return f"{RESULTS}/semhash/synthetic-20news-bydate-matlab.tgz"


def semhash_grid(name):
    """One file per training job (seed x encoder x decoder depth x bits), in one fixed order."""
    return expand(
        f"{RESULTS}/semhash/seed{{seed}}/{{encoder}}/depth{{depth}}/{{bits}}bits/{name}",
        seed=config["semhash"]["seeds"],
        encoder=config["semhash"]["encoders"],
        depth=config["semhash"]["depths"],
        bits=config["semhash"]["bits"],
    )


# The image sets of the faces experiment, one uint8 file and one PNG grid each (vae_approx.images.evaluate.SETS).
IMAGE_SETS = [
    "ground_truth",
    "ground_truth_resample",
    "pretrained_reconstruction",
    "joint_reconstruction",
    "joint_prior",
]


def images_protocol():
    """The main run's faces protocol: one value per factor (images.protocol, or the reference's)."""
    return images_settings.configured_protocol(config["images"])


def images_run_files(protocol, sigmas, seeds):
    """The files one faces protocol's runs leave, aligned by (sigma variant, seed): the distances, the
    held-out metrics and the joint curve (rules tabulate_images and tabulate_images_ablation).
    """
    files = {"distances": [], "heldout": [], "curves": []}
    distance = f"{images_metric()}.csv"
    for sigma in sigmas:
        for seed in seeds:
            run = f"{RESULTS}/images/seed{seed}/{images_settings.run_dir(protocol, sigma)}"
            trained = os.path.dirname(run)
            files["distances"].append(f"{run}/{distance}")
            files["heldout"].append(f"{trained}/heldout.csv")
            files["curves"].append(f"{trained}/joint_curve.csv")
    return files


def images_ablation_files():
    """images_run_files of every ablation row (fixed sigma), one after another."""
    files = {"distances": [], "heldout": [], "curves": []}
    for row in config["images"]["ablation"]["rows"]:
        protocol = images_settings.ablation_protocol(row)
        for key, paths in images_run_files(
            protocol, ["fixed"], config["images"]["seeds"]
        ).items():
            files[key] += paths
    return files


def images_metric():
    """The faces distance's name: fid (Inception) or fd_digits."""
    return "fid" if config["images"]["features"] == "inception" else "fd_digits"


def images_targets():
    im = config["images"]
    protocol = images_protocol()
    targets = [f"{RESULTS}/images/table.md", f"{RESULTS}/images/curves.png"]
    if im["ablation"]["rows"]:
        targets.append(f"{RESULTS}/images/ablation.md")
    return targets + expand(
        f"{RESULTS}/images/seed{{seed}}/{{run}}/grids/{{name}}.png",
        seed=im["seeds"],
        run=[
            images_settings.run_dir(protocol, sigma) for sigma in im["sigma_variants"]
        ],
        name=[*IMAGE_SETS, "comparison"],
    )


def images_seeds(name):
    """One file per faces seed below the main protocol's training folder, in the config's seed order;
    a {sigma} in `name` is the first of images.sigma_variants."""
    training = images_settings.training_dir(images_protocol())
    return expand(
        f"{RESULTS}/images/seed{{seed}}/{training}/{name}",
        seed=config["images"]["seeds"],
        sigma=config["images"]["sigma_variants"][:1],
    )


def images_setting():
    """The faces setting's name in its table, claims and curves."""
    im = config["images"]
    kind = "CelebA" if im["source"] == "celeba" else "digits"
    return f"{kind} {im['image_size']}x{im['image_size']} DCGAN, sigma {im['sigma']:g}"


def images_sample_files(run):
    """The uint8 image sets of a run folder: Snakemake temp files (deleted once their distances and
    grids are written) unless images.evaluate.keep_samples."""
    files = [f"{run}/samples/{name}.npy" for name in IMAGE_SETS]
    return (
        files
        if config["images"]["evaluate"]["keep_samples"]
        else [temp(f) for f in files]
    )


INCEPTION_WEIGHTS = f"{config['images']['torch_home']}/hub/checkpoints/pt_inception-2015-12-05-6726825d.pth"


def images_array():
    """The uint8 image array every images stage reads: prepared CelebA or digits."""
    return f"{RESULTS}/images/data/{config['images']['source']}.npy"


def images_features():
    """What the image distance needs: the digits classifier, or the Inception weights (FID)."""
    if config["images"]["features"] == "digits":
        return f"{RESULTS}/images/classifier/classifier.pt"
    return INCEPTION_WEIGHTS


def torch_home_of(path):
    """TORCH_HOME of a FID job: the folder whose hub/checkpoints/ holds the Inception weights.
    For digits features (a classifier file) it is the config's torch_home, which nothing reads.
    """
    if path != INCEPTION_WEIGHTS:
        return config["images"]["torch_home"]
    return os.path.dirname(os.path.dirname(os.path.dirname(path)))


def features_args(wildcards, input):
    """The --features arguments of choose-generator and evaluate. With Inception, the weights are
    SHA-256-checked where they are loaded (a file placed by hand never passes through
    download_inception), against images.inception_sha256 when it pins one;
    images.inception_unverified_ok (tests and wiring checks only) lets failing weights through,
    and their distances are labelled NOT FID."""
    im = config["images"]
    if im["features"] == "digits":
        return f"--features digits --classifier {input.features}"
    return (
        f"--features inception --torch-home {torch_home_of(input.features)}"
        f" --inception-sha256 '{im['inception_sha256']}'"
        f" --inception-unverified-ok {str(im['inception_unverified_ok']).lower()}"
    )
