"""The settings of one semantic-hashing training job, built from the config's `semhash` section.

Kept free of torch so that the workflow can import it while it builds the DAG: the rule hands
the stage exactly the keys named here (TrainSettings.config_keys), so a change to any other key
of the section (precision_k, threads) re-runs no training.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, fields

# Set per job by the rule's wildcards, not by the config section (the seed: one of semhash.seeds).
GRID_FIELDS = ("encoder", "depth", "bits", "seed")


@dataclass(frozen=True)
class TrainSettings:
    encoder: str                # e1 (counts, linear), e2 (frequencies, one hidden layer), e3 (frequencies, linear)
    depth: int                  # decoder hidden layers
    bits: int                   # latent bits b
    width: int                  # units of every hidden layer (encoder e2 and decoder)
    estimator: str              # disarm or arm
    epochs_one_pair: int        # phase 1: one antithetic pair per document
    epochs_many_pairs: int      # phase 2: `many_pairs` pairs per document
    many_pairs: int
    batch_size: int
    lr: float
    seed: int                   # replicate: initialisation, batch order and code samples (the corpus stays)
    eval_batch_size: int
    reference_protocol: bool    # evaluate frequency encoders on counts, as the reference code did
    checkpoint_every: int       # epochs between resume checkpoints
    kl_gradient: str = "estimator"  # estimator (the reproduction's code) or analytic; see model.surrogate_loss
    code_values: str = "bits"   # what the decoder reads of a code: bits z (the reproduction) or spins 2z - 1
    test_nelbo_batch: int = 0   # 0: test NELBO averaged over documents; n: mean of n-document batch means (train.reported_mean)

    @property
    def epochs(self) -> int:
        return self.epochs_one_pair + self.epochs_many_pairs

    def pairs(self, epoch: int) -> int:
        """Pairs per document in 1-based `epoch`."""
        return 1 if epoch <= self.epochs_one_pair else self.many_pairs

    @classmethod
    def config_keys(cls) -> list[str]:
        """The keys of the config's `semhash` section a training job reads."""
        return [f.name for f in fields(cls) if f.name not in GRID_FIELDS]

    @classmethod
    def config_json(cls, section: dict) -> str:
        """The training keys of a `semhash` config section, as the rule passes them (--settings)."""
        return json.dumps({key: section[key] for key in cls.config_keys()}, sort_keys=True)

    @classmethod
    def from_config(cls, section: dict, encoder: str, depth: int, bits: int, seed: int) -> "TrainSettings":
        """One grid point and replicate's settings: `section` holds exactly config_keys() (extra keys are an error,
        so a key the stage would silently ignore cannot exist)."""
        keys = set(cls.config_keys())
        missing, unknown = sorted(keys - set(section)), sorted(set(section) - keys)
        if missing or unknown:
            raise ValueError(f"semhash training settings: missing {missing}, unknown {unknown}; "
                             f"expected the keys {sorted(keys)}")
        return cls(encoder=encoder, depth=int(depth), bits=int(bits), seed=int(seed), **section)
