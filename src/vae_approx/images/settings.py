"""The faces protocol, factor by factor, and the settings each stage reads from the config's `images` section.

Kept free of torch so that the workflow can import it while it builds the DAG. A protocol is one
value per factor of FACTORS. The defaults are the corrected protocol (every image set drawn
alike, decoder means, eval mode); `reference` is what proger/vae's scripts do
(train_celeba_02_encoder.py to train_celeba_04_fid.py). Factors that change training select the
training jobs (their path segment `bn-<decoder_bn>_init-<encoder_init>`); factors that change
sampling select only the evaluation (`sampling-<sampling>_noise-<pixel_noise>_z-<z_pairing>`),
so the ablation re-runs only what a factor touches.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass


@dataclass(frozen=True)
class Factor:
    values: tuple[str, ...]
    corrected: str  # this pipeline's default
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


def corrected() -> dict[str, str]:
    return {name: f.corrected for name, f in FACTORS.items()}


def reference() -> dict[str, str]:
    return {name: f.reference for name, f in FACTORS.items()}


def configured_protocol(section: dict) -> dict[str, str]:
    """The main run's protocol: `protocol`'s factors, or every factor at the reference's value when
    `reference_protocol` is true."""
    return reference() if section["reference_protocol"] else dict(section["protocol"])


def ablation_protocol(row: str) -> dict[str, str]:
    if row == "corrected":
        return corrected()
    if row == "reference":
        return reference()
    if row not in FACTORS:
        raise ValueError(f"unknown ablation row '{row}'; expected one of {list(ABLATION_ROWS)}")
    return {**corrected(), row: FACTORS[row].reference}


def training_dir(protocol: dict) -> str:
    return f"bn-{protocol['decoder_bn']}_init-{protocol['encoder_init']}"


def sampling_dir(protocol: dict) -> str:
    return f"sampling-{protocol['sampling']}_noise-{protocol['pixel_noise']}_z-{protocol['z_pairing']}"


def run_dir(protocol: dict, sigma: str) -> str:
    """The path of one protocol's evaluation below seed<k>/: training, sigma variant, sampling."""
    return f"{training_dir(protocol)}/sigma-{sigma}/{sampling_dir(protocol)}"


WILDCARDS = {"bn": "decoder_bn", "init": "encoder_init", "sampling": "sampling", "noise": "pixel_noise",
             "pairing": "z_pairing"}  # path wildcard -> factor


def wildcard_constraints() -> dict[str, str]:
    """A regular expression per path wildcard: exactly the factor's values."""
    constraints = {w: "|".join(FACTORS[f].values) for w, f in WILDCARDS.items()}
    return {**constraints, "sigma": "|".join(SIGMA_VARIANTS)}


TRAINING_DIR = re.compile(r"(?P<training>bn-\w+?_init-\w+?)/sigma-(?P<sigma>\w+?)(/|$)")
RUN_DIR = re.compile(r"bn-(?P<bn>\w+?)_init-(?P<init>\w+?)/sigma-(?P<sigma>\w+?)/"
                     r"sampling-(?P<sampling>\w+?)_noise-(?P<noise>\w+?)_z-(?P<pairing>\w+?)(/|$)")


def protocol_of(path) -> tuple[dict[str, str], str]:
    """(protocol, sigma variant) read back from a path holding run_dir(); ValueError if it holds none."""
    match = RUN_DIR.search(str(path))
    if match is None:
        raise ValueError(f"{path}: not under a protocol folder bn-*_init-*/sigma-*/sampling-*_noise-*_z-*")
    return {f: match[w] for w, f in WILDCARDS.items()}, match["sigma"]


def training_of(path) -> tuple[str, str]:
    """(training_dir, sigma variant) read back from a path below one; ValueError if it holds none."""
    match = TRAINING_DIR.search(str(path))
    if match is None:
        raise ValueError(f"{path}: not under a training folder bn-*_init-*/sigma-*")
    return match["training"], match["sigma"]


def describe(protocol: dict) -> str:
    """The factors at the reference's value, in words ('the corrected protocol' when none is)."""
    flipped = [FACTORS[name].meaning for name, value in protocol.items() if value == FACTORS[name].reference]
    others = [f"{name} {value}" for name, value in protocol.items()
              if value not in (FACTORS[name].corrected, FACTORS[name].reference)]
    if not flipped and not others:
        return "the corrected protocol (eval mode, decoder means, independent z, zero-initialised last layer)"
    return "; ".join(flipped + others)


# The keys of the `images` section each stage reads, a dotted path for one key of a subsection (the rule
# hands exactly these, so a change to any other key re-runs nothing of that stage: keep_samples or
# grid_size re-draw no image set); the protocol factors come from the path's wildcards.
STAGE_KEYS = {
    "pretrain": ("sigma", "encoder_ndf", "pretrain", "log_every", "checkpoint_every", "bn_batches", "channels_last",
                 "bf16"),
    "joint": ("joint", "log_every", "checkpoint_every", "bn_batches", "channels_last", "bf16"),
    "generate": ("evaluate.n_samples", "evaluate.batch_size", "channels_last", "bf16"),
    "heldout": ("evaluate.n_eval", "evaluate.batch_size", "channels_last"),
}


def stage_json(section: dict, stage: str) -> str:
    """The keys of STAGE_KEYS[stage] of an `images` section, as the rule passes them (--settings)."""
    out: dict = {}
    for path in STAGE_KEYS[stage]:
        key, _, sub = path.partition(".")
        if sub:
            out.setdefault(key, {})[sub] = section[key][sub]
        else:
            out[key] = section[key]
    return json.dumps(out, sort_keys=True)


def stage_section(text: str, stage: str) -> dict:
    """--settings back into a dict, with exactly the stage's keys (a missing or unknown key is an error)."""
    section = json.loads(text)
    if not isinstance(section, dict):
        raise ValueError(f"images {stage} --settings: expected a JSON object, got {text!r}")
    keys = set(STAGE_KEYS[stage])
    nested = {path.partition(".")[0] for path in keys if "." in path}  # subsections the stage reads a part of
    given = set()
    for key, value in section.items():
        if key in nested and isinstance(value, dict):
            given |= {f"{key}.{sub}" for sub in value}
        else:
            given.add(key)
    missing, unknown = sorted(keys - given), sorted(given - keys)
    if missing or unknown:
        raise ValueError(f"images {stage} --settings: missing {missing}, unknown {unknown}; expected {sorted(keys)}")
    return section
