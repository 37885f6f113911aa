import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    # Tests run beside each other and beside Snakemake jobs on small machines.
    torch.set_num_threads(1)
