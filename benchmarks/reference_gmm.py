"""The reference formulation of the GMM stage, kept only to time ours against it.

Written as the reference scripts do it (and as this pipeline does not): the ELBO assembled in
Python loops over the four codes from Bernoulli probabilities, a hand-typed Gaussian constant,
the log-likelihood and ELBO synced to the host for logging at every step, the allocator and
thread defaults untouched. Same data, model sizes, optimiser and schedule as the pipeline's
`paper` preset: 10,000 encoder steps (lr 1e-3), then 10,000 joint steps (lr 1e-4).

    python benchmarks/reference_gmm.py --steps 10000 --n-per-component 2000
"""

import argparse
import time

import torch
from torch import nn

from vae_approx.gmm.data import sample_mixture
from vae_approx.gmm.model import TRUE_CENTRES

parser = argparse.ArgumentParser()
parser.add_argument("--steps", type=int, required=True, help="steps of each phase (run.py: the paper preset's)")
parser.add_argument("--n-per-component", type=int, required=True, help="run.py: the paper preset's")
args = parser.parse_args()

torch.manual_seed(0)
x = torch.from_numpy(sample_mixture(args.n_per_component, 1.0, 0)[0])
mu = nn.Parameter(torch.tensor(TRUE_CENTRES))
enc = nn.Sequential(nn.Linear(2, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 2))


def log_normal(x, m):
    return -0.9189 * 2 - 0.5 * ((x - m) ** 2).sum(1)  # variance 1, 2-D


def elbo_and_ll():
    p = torch.sigmoid(enc(x))
    elbo, lik = 0, 0
    for b1 in (0, 1):
        for b2 in (0, 1):
            q = (p[:, 0] if b1 else 1 - p[:, 0]) * (p[:, 1] if b2 else 1 - p[:, 1])
            lp = log_normal(x, mu[2 * b1 + b2]) + torch.log(torch.tensor(0.25))
            elbo = elbo + q * (lp - torch.log(q + 1e-12))
            lik = lik + torch.exp(lp)
    return elbo.mean(), torch.log(lik).mean()


start = time.perf_counter()
history = []
for phase, lr in (("pretrain", 1e-3), ("joint", 1e-4)):
    params = list(enc.parameters()) + ([mu] if phase == "joint" else [])
    opt = torch.optim.Adam(params, lr=lr)
    for step in range(args.steps):
        elbo, ll = elbo_and_ll()
        opt.zero_grad()
        (-elbo).backward()
        opt.step()
        history.append((phase, step, elbo.item(), ll.item()))  # what the online logger received
print(f"reference: final ELBO {history[-1][2]:.4f} log-likelihood {history[-1][3]:.4f} "
      f"in {time.perf_counter() - start:.1f}s")
