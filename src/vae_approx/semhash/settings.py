"""What the semantic-hashing stages read of the config's `semhash` section, its allowed values, and the
layout of the files the rules make.

Kept free of torch so that the workflow can import it while it builds the DAG. config.yaml is the
one source of every default: nothing here repeats a configured value. Each stage gets exactly the
keys STAGE_KEYS names (--settings), so a change to any other key of the section re-runs none of it;
a training job's identity (seed, encoder, decoder depth, bits) comes from its wildcards (--run)
and travels as the first columns of every CSV the job writes.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

EXPERIMENT = "semhash"  # the config's section, the claims' experiment column

# The values of each key of the section that the schema (workflow/schemas/config.schema.yaml) lists,
# in its order; for the list-valued `encoders`, those of its items. The only place they are written.
ALLOWED = {
    "source": ("synthetic", "download"),        # the offline synthetic corpus, or the real archive
    "encoders": ("e1", "e2", "e3"),
    "estimator": ("disarm", "arm"),
    # How the KL term's gradient reaches the encoder: through the estimator, with log q(z|x) -
    # log p(z) of each code added to its reconstruction (the reproduction's code), or as the
    # analytic KL's exact gradient (lower variance); both unbiased (estimators.surrogate_loss).
    "kl_gradient": ("estimator", "analytic"),
    # What the decoder's first layer reads of a code z in {0, 1}^b: z itself (the reproduction) or 2z - 1.
    "code_values": ("bits", "spins"),
    # Which of the words tied at the vocabulary's cut are kept (data.prepare).
    "vocabulary_ties": ("torch_topk", "lowest_index"),
}

# The reproduction's encoders, in the tables' words (model.ENCODER_SPECS builds them).
ENCODER_NAMES = dict(zip(ALLOWED["encoders"], ("counts, linear", "frequencies, one hidden layer",
                                               "frequencies, linear")))
# What an encoder reads of a document: its smoothed counts x, or x / |x|.
REPRESENTATIONS = ("counts", "frequencies")

# How a training step runs: eager (autograd, as written), static (the same step on fixed-size
# buffers, as a CUDA graph replays it, without the capture: the CPU's test of that path) or
# cuda_graphs (semhash.cuda_graphs on a CUDA device).
STEP_MODES = ("eager", "static", "cuda_graphs")

# ---------------------------------------------------------------- a training job's identity and settings

# The wildcards of a training job, which are the identity columns of its CSVs, in that order.
RUN = {"seed": int, "encoder": ALLOWED["encoders"], "depth": int, "bits": int}


@dataclass(frozen=True)
class TrainSettings:
    # the run's identity (--run); the seed is the replicate: initialisation, batch order and code
    # samples (the corpus stays)
    seed: int
    encoder: str                # e1 (counts, linear), e2 (frequencies, one hidden layer), e3 (frequencies, linear)
    depth: int                  # decoder hidden layers
    bits: int                   # latent bits b
    # the config's keys (--settings), explained in config.yaml
    width: int                  # units of every hidden layer (encoder e2 and decoder)
    estimator: str              # ALLOWED["estimator"]
    kl_gradient: str            # ALLOWED["kl_gradient"]
    code_values: str            # ALLOWED["code_values"]
    epochs_one_pair: int        # phase 1: one antithetic pair per document
    epochs_many_pairs: int      # phase 2: `many_pairs` pairs per document
    many_pairs: int
    batch_size: int
    lr: float
    eval_batch_size: int        # documents per batch of the test NELBO and of the codes
    reference_protocol: bool    # evaluate frequency encoders on counts, as the reference code did
    test_nelbo_batch: int       # 0: test NELBO averaged over documents; n: mean of n-document batch means
    checkpoint_every: int       # epochs between resume checkpoints

    @property
    def epochs(self) -> int:
        return self.epochs_one_pair + self.epochs_many_pairs

    def pairs(self, epoch: int) -> int:
        """Pairs per document in 1-based `epoch`."""
        return 1 if epoch <= self.epochs_one_pair else self.many_pairs


TRAIN_KEYS = tuple(f.name for f in fields(TrainSettings) if f.name not in RUN)

# ---------------------------------------------------------------- the approximation error (exact.py)

# The maximum-likelihood control: a decoder of the grid's architecture trained by the exact
# log-likelihood (no encoder), per seed and (depth, bits <= exact.ml_max_bits). Its rows in the
# tables carry this name in the encoder column.
ML_ENCODER = "ml"
ML_RUN = {"seed": int, "depth": int, "bits": int}


def ml_identity(settings: dict) -> dict:
    """The control's identity as the tables' columns (RUN's, the encoder ML_ENCODER), from its settings."""
    return {"seed": settings["seed"], "encoder": ML_ENCODER, "depth": settings["depth"], "bits": settings["bits"]}


@dataclass(frozen=True)
class LikelihoodTrainSettings:
    """The control's training: the VAE's decoder settings, optimiser and epochs (same names as TrainSettings)."""
    seed: int
    depth: int
    bits: int
    width: int
    code_values: str
    epochs_one_pair: int        # the control trains for the VAE's epochs, both phases
    epochs_many_pairs: int
    batch_size: int
    lr: float
    eval_batch_size: int
    checkpoint_every: int

    @property
    def epochs(self) -> int:
        return self.epochs_one_pair + self.epochs_many_pairs


ML_TRAIN_KEYS = tuple(f.name for f in fields(LikelihoodTrainSettings) if f.name not in ML_RUN)


@dataclass(frozen=True)
class ExactSettings:
    """The config's semhash.exact keys the evaluation reads (config.yaml explains them)."""
    max_bits: int               # enumerate every code up to this many bits; above, the IWAE bound only
    train_documents: int        # evenly spaced training documents evaluated beside the test set
    iwae_samples: int           # K of the IWAE bound above max_bits
    iwae_curve: tuple           # the K at which the bound is compared with the exact value, up to max_bits
    tolerance: float            # nats per document: q*'s coordinate ascent stops when a sweep gains less
    max_sweeps: int             # sweeps over the bits before q*'s ascent stops regardless

    @classmethod
    def from_section(cls, exact: dict) -> "ExactSettings":
        """From the config's semhash.exact subsection (its other keys, the workflow's, are left out)."""
        return cls(**{f.name: tuple(exact[f.name]) if f.name == "iwae_curve" else exact[f.name] for f in fields(cls)})

    def samples(self, bits: int) -> list[int]:
        """The K of the IWAE bounds computed at `bits`: the curve's and iwae_samples up to max_bits, else iwae_samples."""
        return reported_samples(self.iwae_curve, self.iwae_samples) if bits <= self.max_bits else [self.iwae_samples]


def reported_samples(iwae_curve, iwae_samples: int) -> list[int]:
    """Every K an exact.csv has a column nll_iwae_<K> of: the curve's and iwae_samples."""
    return sorted({*iwae_curve, iwae_samples})


EXACT_KEYS = tuple(f"exact.{f.name}" for f in fields(ExactSettings))
# The sets an exact.csv has a row of: the test set, and the fixed subset of the training set.
EXACT_SETS = ("test", "train")

# The keys of the `semhash` section each stage reads; dotted paths for keys of a subsection.
SYNTHETIC_KEYS = ("n_train", "n_test", "raw_vocab_size", "n_classes", "n_topics", "mean_length", "length_spread",
                  "topic_concentration", "seed")
STAGE_KEYS = {
    "fetch": ("url", "sha256"),
    "synthesize": tuple(f"synthetic.{key}" for key in SYNTHETIC_KEYS),
    # the pinned SHA-256 belongs to the real archive: `source` says whether the archive is that one
    "prepare": ("source", "sha256", "vocab_size", "vocabulary_ties", "expected_documents.train",
                "expected_documents.test"),
    "train": (*TRAIN_KEYS, "cuda_graphs"),
    "retrieval": ("precision_k",),
    "tabulate": ("precision_k",),
    "train_ml": ML_TRAIN_KEYS,
    "exact": (*EXACT_KEYS, "eval_batch_size"),
    "gaps": ("exact.max_bits", "exact.iwae_samples", "exact.iwae_curve"),
}

# ---------------------------------------------------------------- the files of the rules

SYNTHETIC_ARCHIVE = "synthetic-20news-bydate-matlab.tgz"  # the offline corpus, in the real archive's format
# One training job of the grid, under the experiment's folder; its wildcards are RUN's columns.
RUN_DIR = "seed{seed}/{encoder}/depth{depth}/{bits}bits"
# The tables of tabulate: a grid encoder x depth by bits of each value, as <value>.csv and <value>.md.
TABLES = ("test_nelbo_best", "test_nelbo_last", "train_nelbo_last", "precision")
CLAIMS_CELLS = "claims_cells.csv"  # beside the claims file: the per-cell rows of the encoder claims
# The control's files, apart from the grid's: ml/<ML_RUN_DIR>/{decoder.pt, history.csv, exact.csv}.
ML_RUN_DIR = "ml/seed{seed}/depth{depth}/{bits}bits"
# The tables of tabulate_semhash_gaps, as <name>.csv and <name>.md, and its figure.
GAPS_TABLES = ("gaps", "iwae", "split")
GAPS_FIGURE = "gaps.png"
GAPS_CELLS = "gaps_cells.csv"  # beside the gap claims: their per-cell rows


def archive_file(section: dict, folder: str) -> str:
    """The raw archive prepare_corpus reads: the real one (placed by hand or by download_20newsgroups)
    or the synthetic one in the experiment's `folder`, in the same format."""
    return section["archive"] if section["source"] == "download" else f"{folder}/{SYNTHETIC_ARCHIVE}"


def run_files(section: dict, folder: str, name: str) -> list[str]:
    """File `name` of every training job (seed x encoder x decoder depth x bits) under the experiment's
    `folder`, in one fixed order."""
    return [f"{folder}/{RUN_DIR.format(seed=seed, encoder=encoder, depth=depth, bits=bits)}/{name}"
            for seed in section["seeds"] for encoder in section["encoders"]
            for depth in section["depths"] for bits in section["bits"]]


def ml_run_files(section: dict, folder: str, name: str) -> list[str]:
    """File `name` of every maximum-likelihood control (seed x depth x bits <= exact.ml_max_bits)."""
    return [f"{folder}/{ML_RUN_DIR.format(seed=seed, depth=depth, bits=bits)}/{name}"
            for seed in section["seeds"] for depth in section["depths"] for bits in section["bits"]
            if bits <= section["exact"]["ml_max_bits"]]
