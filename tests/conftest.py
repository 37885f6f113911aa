from pathlib import Path

import pytest
import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _one_thread():
    # Tests run beside each other and beside Snakemake jobs on small machines.
    torch.set_num_threads(1)


def config_section(experiment: str, preset: str | None = None) -> dict:
    """An experiment's config section as a run sees it: config.yaml's (the one source of every default),
    updated by presets/<preset> when given, as Snakemake merges --configfile."""
    from snakemake.utils import update_config

    config = yaml.safe_load((ROOT / "config.yaml").read_text())
    if preset:
        update_config(config, yaml.safe_load((ROOT / "presets" / preset).read_text()))
    return config[experiment]
