"""What each faces stage reads of the config's `images` section, the protocol factor by factor, the
experiment's labels, and where its files live.

Torch-free (the standard library only): the workflow imports it while it builds the DAG. The
defaults of every key are in config.yaml, their allowed values in ALLOWED; the rule hands a stage
exactly the keys STAGE_KEYS names (--settings), so a change to any other key re-runs nothing of
that stage, and the run's identity (its wildcards) as --run.

A protocol is one value per factor of FACTORS. The corrected protocol (config.yaml's
`images.protocol`) draws every image set alike, from decoder means, in eval mode; `reference` is
what proger/vae's scripts do (train_celeba_02_encoder.py to train_celeba_04_fid.py). Factors that
change training select the training jobs (their path segment `bn-<decoder_bn>_init-<encoder_init>`);
factors that change sampling select only the evaluation
(`sampling-<sampling>_noise-<pixel_noise>_z-<z_pairing>`), so the ablation re-runs only what a
factor touches.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

EXPERIMENT = "images"

SOURCES = ("digits", "celeba")        # scikit-learn's digits (offline), or CelebA's zip
IMAGE_SIZES = (16, 32, 64, 128)       # pixels per side: a power of two the DCGAN networks support
# feature extractor -> the name of the Frechet distance on its features: FID only on Inception's
DISTANCES = {"digits": "fd_digits", "inception": "fid"}
INCEPTION_FILE = "pt_inception-2015-12-05-6726825d.pth"  # pytorch-fid's FID weights, as torch.hub names them
AUTO = "auto"    # images.generator_epoch: the epoch whose generator is closest to the data
FLOOR = "floor"  # images.fd_tolerance: each seed's rise must exceed its own floor
STARTS = ("prior", "encoder")  # images.likelihood.start: where AIS's chains start


@dataclass(frozen=True)
class Factor:
    values: tuple[str, ...]
    corrected: str  # the corrected protocol's value
    reference: str  # what the reference code does
    stage: str      # "training" (pretraining and joint training re-run) or "sampling" (the evaluation only)
    meaning: str    # the reference's value, in words, for table notes


FACTORS = {
    "decoder_bn": Factor(("eval", "train"), "eval", "train", "training",
                         "decoders' BatchNorm in training mode while training (batch statistics)"),
    "encoder_init": Factor(("zero", "normal"), "zero", "normal", "training",
                           "encoder's last layer drawn from N(0, 0.02)"),
    "sampling": Factor(("eval", "train_batch1"), "eval", "train_batch1", "sampling",
                       "image sets drawn in training mode, one image at a time"),
    "pixel_noise": Factor(("none", "joint", "every"), "none", "joint", "sampling",
                          "pixel noise on the joint reconstructions only"),
    "z_pairing": Factor(("independent", "shared"), "independent", "shared", "sampling",
                        "reference set and reconstructions from the same z"),
}
SIGMA_VARIANTS = ("fixed", "learned")  # joint training's decoder sigma: the ground truth's, or learned from it

# The ablation's rows: the corrected protocol, each factor alone at the reference's value, every factor.
ABLATION_ROWS = ("corrected", *FACTORS, "reference")
# The likelihood's rows: the trained protocols it measures (a sampling factor changes no decoder).
LIKELIHOOD_ROWS = ("corrected", *(name for name, f in FACTORS.items() if f.stage == "training"), "reference")

# Each key of the `images` section the schema restricts to an enum (a list-valued key: its items' values).
ALLOWED = {
    "source": SOURCES,
    "image_size": IMAGE_SIZES,
    "features": tuple(DISTANCES),
    "sigma_variants": SIGMA_VARIANTS,
    **{f"protocol.{name}": factor.values for name, factor in FACTORS.items()},
    "ablation.rows": ABLATION_ROWS,
    "likelihood.rows": LIKELIHOOD_ROWS,
    "likelihood.start": STARTS,
}

# phase -> its stage label in the tables (the published tables' wording)
PHASES = {
    "pretrain": "encoder pretrained (decoder frozen)",
    "joint": "joint training",
}

# The image sets of one run, one uint8 file and one PNG grid each (vae_approx.images.evaluate draws them).
IMAGE_SETS = ("ground_truth", "ground_truth_resample", "pretrained_reconstruction", "joint_reconstruction",
              "joint_prior")

# The likelihood stage's CSV columns after the run's identity: which decoder, whose images (the ground truth's
# held-out ones, or the joint decoder's own for BDMC), which estimate (ais_lower, ais_upper, iwae, elbo), its T
# (0: no AIS), its chains or K, the mean and standard deviation over the images (nats per image), how many
# images, their pixels, HMC's acceptance rate and the seconds the estimate took.
LIKELIHOOD_COLUMNS = ("decoder", "images", "estimate", "steps", "samples", "value", "sd", "n", "pixels",
                      "acceptance", "seconds")

# stage -> the keys of the `images` section it reads, a dotted path for one key of a subsection: a
# change to any other key re-runs nothing of the stage (keep_samples or grid_size re-draw no image
# set). The protocol's factors come with the run's identity (--run), not from here.
STAGE_KEYS = {
    "prepare-digits": ("image_size",),
    "prepare-celeba": ("image_size", "celeba.expected_count", "celeba.md5"),
    "fetch-inception": ("inception_sha256",),
    "train-classifier": ("classifier",),
    "train-gan": ("gan", "log_every"),
    "choose-generator": ("generator_epoch", "choose", "evaluate.batch_size", "features", "inception_sha256",
                         "inception_unverified_ok"),
    "pretrain": ("sigma", "encoder_ndf", "pretrain", "log_every", "checkpoint_every", "bn_batches", "channels_last",
                 "bf16"),
    "joint": ("joint", "log_every", "checkpoint_every", "bn_batches", "channels_last", "bf16"),
    "generate": ("evaluate.n_samples", "evaluate.batch_size", "channels_last", "bf16"),
    "heldout": ("evaluate.n_eval", "evaluate.batch_size", "channels_last"),
    "likelihood": ("likelihood.images", "likelihood.steps", "likelihood.leapfrog", "likelihood.chains",
                   "likelihood.start", "likelihood.step_size", "likelihood.iwae_samples"),
    "distances": ("evaluate.batch_size", "features", "inception_sha256", "inception_unverified_ok"),
    "grids": ("evaluate.grid_size",),
    "curves": ("source", "image_size", "sigma"),
    "tabulate": ("source", "image_size", "sigma", "fd_tolerance"),
    "ablate": ("source", "image_size", "sigma", "fd_tolerance", "ablation.rows"),
    "tabulate-likelihood": ("source", "image_size", "sigma"),
}

# A run's identity, {column: int or allowed values}: the wildcards of its rule, and the first columns
# of every CSV its stage writes. Training factors, then the sigma variant, then sampling factors.
TRAINING_FACTORS = tuple(name for name, f in FACTORS.items() if f.stage == "training")
SAMPLING_FACTORS = tuple(name for name, f in FACTORS.items() if f.stage == "sampling")
TRAINED_RUN = {"seed": int, **{name: FACTORS[name].values for name in TRAINING_FACTORS}}
JOINT_RUN = {**TRAINED_RUN, "sigma_variant": SIGMA_VARIANTS}
SAMPLED_RUN = {**JOINT_RUN, **{name: FACTORS[name].values for name in SAMPLING_FACTORS}}
RUNS = {"pretrain": TRAINED_RUN, "joint": JOINT_RUN, "heldout": JOINT_RUN, "likelihood": JOINT_RUN,
        "generate": SAMPLED_RUN,
        "distances": SAMPLED_RUN, "grids": SAMPLED_RUN}  # per-run stage -> its identity

# Where each file lives below results/<run>/images/; the wildcards are named as the identity columns,
# one folder level per part of the identity, so that a factor re-runs only what it touches.
TRAINED = "seed{seed}/bn-{decoder_bn}_init-{encoder_init}"
JOINT = f"{TRAINED}/sigma-{{sigma_variant}}"
SAMPLED = f"{JOINT}/sampling-{{sampling}}_noise-{{pixel_noise}}_z-{{z_pairing}}"
PATHS = {
    "pretrained": f"{TRAINED}/pretrained.pt",
    "pretrain_curve": f"{TRAINED}/pretrain_curve.csv",
    "joint": f"{JOINT}/joint.pt",
    "joint_curve": f"{JOINT}/joint_curve.csv",
    "heldout": f"{JOINT}/heldout.csv",
    "likelihood": f"{JOINT}/likelihood.csv",
    **{metric: f"{SAMPLED}/{metric}.csv" for metric in DISTANCES.values()},  # fd_digits, fid: the distances
    "comparison": f"{SAMPLED}/grids/comparison.png",
}


# ---------------------------------------------------------------- the protocol


def corrected() -> dict[str, str]:
    return {name: f.corrected for name, f in FACTORS.items()}


def reference() -> dict[str, str]:
    return {name: f.reference for name, f in FACTORS.items()}


def configured_protocol(section: dict) -> dict[str, str]:
    """The main run's protocol: `protocol`'s factors, or every factor at the reference's value when
    `reference_protocol` is true."""
    return reference() if section["reference_protocol"] else {name: section["protocol"][name] for name in FACTORS}


def ablation_protocol(row: str) -> dict[str, str]:
    if row == "corrected":
        return corrected()
    if row == "reference":
        return reference()
    if row not in FACTORS:
        raise ValueError(f"unknown ablation row '{row}'; expected one of {list(ABLATION_ROWS)}")
    return {**corrected(), row: FACTORS[row].reference}


def describe(protocol: dict) -> str:
    """The factors at the reference's value, in words ('the corrected protocol' when none is)."""
    flipped = [FACTORS[name].meaning for name, value in protocol.items() if value == FACTORS[name].reference]
    others = [f"{name} {value}" for name, value in protocol.items()
              if value not in (FACTORS[name].corrected, FACTORS[name].reference)]
    if not flipped and not others:
        return "the corrected protocol (eval mode, decoder means, independent z, zero-initialised last layer)"
    return "; ".join(flipped + others)


def learns_sigma(sigma_variant: str) -> bool:
    """Whether joint training learns the decoder's sigma (the original paper's second variant)."""
    return sigma_variant == SIGMA_VARIANTS[1]


def setting_name(section: dict) -> str:
    """The faces setting's name in its table, claims and curves."""
    kind = "CelebA" if section["source"] == "celeba" else "digits"
    return f"{kind} {section['image_size']}x{section['image_size']} DCGAN, sigma {section['sigma']:g}"


def distance_metric(section: dict) -> str:
    """The faces distance's name: fid (Inception features) or fd_digits."""
    return DISTANCES[section["features"]]


# ---------------------------------------------------------------- stage settings


@dataclass(frozen=True)
class GanSettings:
    epochs: int            # passes over the data (the paper: up to 100)
    batch_size: int        # images per step (the paper: 128)
    lr: float              # Adam learning rate of both networks (the paper: 2e-4)
    beta1: float           # Adam beta1 (the paper: 0.5)
    nz: int                # latent dimensions (the paper: 100)
    ngf: int               # generator width (the paper: 64)
    ndf: int               # discriminator width (the paper: 64)
    seed: int              # the paper: 999
    checkpoint_every: int  # iterations between resume checkpoints (epoch ends always checkpoint)
    log_every: int         # iterations between progress lines

    @classmethod
    def from_section(cls, section: dict) -> "GanSettings":
        """`section`: the keys STAGE_KEYS["train-gan"] names."""
        return cls(**{key: section["gan"][key] for key in ("epochs", "batch_size", "lr", "beta1", "nz", "ngf", "ndf",
                                                           "seed", "checkpoint_every")},
                   log_every=section["log_every"])


@dataclass(frozen=True)
class VaeSettings:
    """One training phase's settings; asdict() is the config a resume checkpoint must match."""

    phase: str             # "pretrain": encoder by log q(z|x), decoder = ground truth; "joint": ELBO, both
    iterations: int        # Adam steps, each on a fresh batch from the ground-truth decoder (the paper: 1e6)
    batch_size: int        # the paper: 128
    lr: float              # the reference code: 2e-5 (pretrain), 1e-5 (joint)
    beta1: float           # Adam beta1; the reference code: 0.5 (pretrain), 0.9 (joint)
    sigma: float           # pixel noise of the ground-truth decoder (the paper: 0.05)
    seed: int              # the stage's stream of the replicate (common.stage_seed), not a config key
    log_every: int         # iterations per row of the curve CSV (the row holds their mean)
    checkpoint_every: int  # iterations between resume checkpoints
    ndf: int               # encoder width (joint: the pretrained encoder's)
    learn_sigma: bool      # joint: learn the decoder's sigma (the sigma variant "learned")
    channels_last: bool    # speed option: channels-last memory layout
    bf16: bool             # speed option: bf16 autocast of the forward passes (CUDA only)
    bn_batches: int        # batches of fresh samples that re-estimate the encoder's BatchNorm statistics at the end
    decoder_bn: str        # BatchNorm mode of both decoders while training: eval or train (the reference)
    encoder_init: str      # the encoder's last layer, zero or normal (the reference); model.Encoder

    @classmethod
    def pretrain(cls, section: dict, run: dict, seed: int) -> "VaeSettings":
        """Pretraining of run `run` (TRAINED_RUN) from STAGE_KEYS["pretrain"]'s keys."""
        return cls._of(section, "pretrain", run, seed, section["sigma"], section["encoder_ndf"], False)

    @classmethod
    def joint(cls, section: dict, run: dict, seed: int, sigma: float, ndf: int) -> "VaeSettings":
        """Joint training of run `run` (JOINT_RUN) from STAGE_KEYS["joint"]'s keys; `sigma` and `ndf` come
        with the pretrained encoder's file."""
        return cls._of(section, "joint", run, seed, sigma, ndf, learns_sigma(run["sigma_variant"]))

    @classmethod
    def _of(cls, section: dict, phase: str, run: dict, seed: int, sigma: float, ndf: int,
            learn_sigma: bool) -> "VaeSettings":
        stage = section[phase]
        return cls(phase, stage["iterations"], stage["batch_size"], stage["lr"], stage["beta1"], sigma, seed,
                   section["log_every"], section["checkpoint_every"], ndf, learn_sigma, section["channels_last"],
                   section["bf16"], section["bn_batches"], run["decoder_bn"], run["encoder_init"])


@dataclass(frozen=True)
class LikelihoodSettings:
    """The AIS likelihood stage's settings (config.yaml's images.likelihood, which says what each is)."""

    images: int             # N held-out ground-truth images per run, drawn with their true z
    steps: tuple[int, ...]  # AIS lengths T, one run each (the figure); the largest is the table's and the claims'
    leapfrog: int           # L leapfrog steps per HMC transition
    chains: int             # M chains per image
    start: str              # STARTS: the prior, or each decoder's own encoder q(z|x)
    step_size: float        # HMC's first step size, in the start's whitened coordinates (then adapted)
    iwae_samples: int       # K of the IWAE bound and of the ELBO's Monte Carlo mean

    @classmethod
    def from_section(cls, section: dict) -> "LikelihoodSettings":
        """`section`: the keys STAGE_KEYS["likelihood"] names."""
        s = section["likelihood"]
        return cls(s["images"], tuple(s["steps"]), s["leapfrog"], s["chains"], s["start"], s["step_size"],
                   s["iwae_samples"])


# ---------------------------------------------------------------- file lists of the rules


def folder(results: str) -> str:
    """The experiment's folder below `results` (results/<run>)."""
    return f"{results}/{EXPERIMENT}"


def path(results: str, name: str) -> str:
    """The template of file `name` (a key of PATHS) below `results`, wildcards kept."""
    return f"{folder(results)}/{PATHS[name]}"


def wildcard_constraints() -> dict[str, str]:
    """A regular expression per path wildcard but the seed (common.smk's): exactly its allowed values."""
    return {key: "|".join(map(re.escape, values)) for key, values in SAMPLED_RUN.items() if key != "seed"}


def wildcards(template: str) -> tuple[str, ...]:
    """The wildcards of a path template, in order."""
    return tuple(dict.fromkeys(re.findall(r"{(\w+)}", template)))


def identity(seed: int, protocol: dict, sigma_variant: str) -> dict:
    """The identity of one sampled run (SAMPLED_RUN's columns)."""
    return {"seed": seed, **{name: protocol[name] for name in TRAINING_FACTORS}, "sigma_variant": sigma_variant,
            **{name: protocol[name] for name in SAMPLING_FACTORS}}


def run_files(section: dict, results: str, protocol: dict, sigma_variants) -> dict[str, list[str]]:
    """The files one protocol's runs leave for the tables, per sigma variant and seed in the config's order
    (the tables keep it): the distances, the held-out metrics and the joint curve, each file once."""
    files: dict[str, list[str]] = {"distances": [], "heldout": [], "curves": []}
    for sigma_variant in sigma_variants:
        for seed in section["seeds"]:
            run = identity(seed, protocol, sigma_variant)
            kinds = (("distances", distance_metric(section)), ("heldout", "heldout"), ("curves", "joint_curve"))
            for key, name in kinds:
                file = path(results, name).format(**run)
                if file not in files[key]:
                    files[key].append(file)
    return files


def table_files(section: dict, results: str) -> dict[str, list[str]]:
    """run_files of the main protocol and every sigma variant (rule tabulate_images)."""
    return run_files(section, results, configured_protocol(section), section["sigma_variants"])


def ablation_files(section: dict, results: str) -> dict[str, list[str]]:
    """run_files of every ablation row (fixed sigma), one after another, each file once (rule
    tabulate_images_ablation)."""
    files: dict[str, list[str]] = {"distances": [], "heldout": [], "curves": []}
    for row in section["ablation"]["rows"]:
        for key, paths in run_files(section, results, ablation_protocol(row), SIGMA_VARIANTS[:1]).items():
            files[key] += [p for p in paths if p not in files[key]]
    return files


def likelihood_runs(section: dict) -> list[dict]:
    """The trained runs the likelihood measures (JOINT_RUN identities): each row of likelihood.rows (a
    protocol), sigma variant and seed, in that order, each run once."""
    runs = []
    for row in section["likelihood"]["rows"]:
        protocol = ablation_protocol(row)
        for sigma_variant in section["sigma_variants"]:
            for seed in section["seeds"]:
                run = {key: value for key, value in identity(seed, protocol, sigma_variant).items() if key in JOINT_RUN}
                if run not in runs:
                    runs.append(run)
    return runs


def likelihood_files(section: dict, results: str) -> list[str]:
    """The likelihood.csv of every run likelihood_runs names (rule tabulate_images_likelihood)."""
    return [path(results, "likelihood").format(**run) for run in likelihood_runs(section)]


def sampled_runs(section: dict) -> list[dict]:
    """Every sampled run the config plans (SAMPLED_RUN identities), each once: the main protocol with every
    sigma variant, and each ablation row with the fixed sigma, per seed."""
    plans = [(configured_protocol(section), sigma) for sigma in section["sigma_variants"]]
    plans += [(ablation_protocol(row), SIGMA_VARIANTS[0]) for row in section["ablation"]["rows"]]
    runs = []
    for seed in section["seeds"]:
        for protocol, sigma in plans:
            run = identity(seed, protocol, sigma)
            if run not in runs:
                runs.append(run)
    return runs


def kept_image_bytes(section: dict) -> int:
    """The disk the kept image sets take (evaluate.keep_samples): uint8, five sets per sampled run."""
    channels = 3 if section["source"] == "celeba" else 1
    per_set = section["evaluate"]["n_samples"] * channels * section["image_size"] ** 2
    return len(IMAGE_SETS) * per_set * len(sampled_runs(section)) if section["evaluate"]["keep_samples"] else 0


def curve_files(section: dict, results: str) -> dict[str, list[str]]:
    """The training curves of the main protocol's seeds (the first sigma variant's joint curve), in the
    config's seed order (rule plot_images_curves)."""
    runs = [identity(seed, configured_protocol(section), section["sigma_variants"][0]) for seed in section["seeds"]]
    return {"pretrain": [path(results, "pretrain_curve").format(**run) for run in runs],
            "joint": [path(results, "joint_curve").format(**run) for run in runs]}


def sample_files(results: str) -> list[str]:
    """The uint8 image sets of one run, wildcards kept."""
    return [f"{folder(results)}/{SAMPLED}/samples/{name}.npy" for name in IMAGE_SETS]


def grid_files(results: str) -> list[str]:
    """The PNG grid of each image set of one run, wildcards kept."""
    return [f"{folder(results)}/{SAMPLED}/grids/{name}.png" for name in IMAGE_SETS]


def inception_weights(section: dict) -> str:
    """Where torch.hub (and so pytorch-fid) finds the FID Inception weights under images.torch_home."""
    return f"{section['torch_home']}/hub/checkpoints/{INCEPTION_FILE}"


def data_array(section: dict, results: str) -> str:
    """The uint8 image array every images stage reads: prepared CelebA or digits."""
    return f"{folder(results)}/data/{section['source']}.npy"


def features_file(section: dict, results: str) -> str:
    """What the image distance needs: the digits classifier, or the Inception weights (FID)."""
    if section["features"] == "digits":
        return f"{folder(results)}/classifier/classifier.pt"
    return inception_weights(section)


def targets(section: dict, results: str) -> list[str]:
    """The experiment's final products: the table and curves, the ablation's table (when it has rows),
    and every seed's grids of the main protocol, per sigma variant."""
    out = [f"{folder(results)}/table.md", f"{folder(results)}/curves.png"]
    if section["ablation"]["rows"]:
        out.append(f"{folder(results)}/ablation.md")
    if section["likelihood"]["rows"]:
        out += [f"{folder(results)}/likelihood.md", f"{folder(results)}/likelihood.png"]
    protocol = configured_protocol(section)
    for seed in section["seeds"]:
        for sigma_variant in section["sigma_variants"]:
            run = identity(seed, protocol, sigma_variant)
            out += [grid.format(**run) for grid in grid_files(results)] + [path(results, "comparison").format(**run)]
    return out


def claims_files(section: dict, results: str) -> list[str]:
    """The main table's claims, and the ablation's when it has rows."""
    files = [f"{folder(results)}/claims.csv"]
    if section["ablation"]["rows"]:
        files.append(f"{folder(results)}/ablation_claims.csv")
    if section["likelihood"]["rows"]:
        files.append(f"{folder(results)}/likelihood_claims.csv")
    return files
