"""The faces' likelihood estimators (images/ais.py) where the answer is known, with the numbers
docs/faces.md quotes: a linear-Gaussian decoder g(z) = W z + b (nz 3, 8 pixels, sigma 0.5, 16
images simulated with their true z; tests/test_images_ais.py's model), whose log p(x) =
log N(x; b, W W^T + sigma^2 I) is closed form.

    python benchmarks/ais_check.py [--repeats 10]

Prints, averaged over the images and --repeats independent runs (the standard error over the
runs in brackets): forward AIS minus the exact value and reverse AIS minus it, from the prior
and from a broad encoder-like proposal (the posterior mean shifted by 0.3, twice the widest
posterior deviation in every dimension), at T = 20, 100, 500 (8 chains, 5 leapfrog steps); and
the IWAE bound and the ELBO of that proposal against K, with the exact ELBO beside them.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from test_images_ais import NZ, SIGMA, broad_proposal, linear_gaussian, posterior  # noqa: E402

from vae_approx.images.ais import iwae, sandwich  # noqa: E402


def mean_se(values: list[float]) -> str:
    t = torch.tensor(values, dtype=torch.float64)
    return f"{t.mean():+.3f} ({t.std() / math.sqrt(len(t)):.3f})" if len(t) > 1 else f"{t.mean():+.3f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=10, help="independent runs (AIS); four times as many for IWAE")
    args = parser.parse_args()
    torch.set_num_threads(1)
    W, b, x, z, exact = linear_gaussian(0)
    mean = lambda zz: zz @ W.T + b  # noqa: E731
    proposal = broad_proposal(W, b, x)
    print(f"exact log p(x), mean over the images: {exact.mean():.3f} nats")
    print("| start | T | forward - exact | reverse - exact | width |")
    print("|---|---|---|---|---|")
    for start in ("prior", "encoder"):
        for T in (20, 100, 500):
            lower, upper = [], []
            for r in range(args.repeats):
                s = sandwich(x, z, mean, math.log(SIGMA), NZ, T, leapfrog=5, chains=8, step_size=0.1,
                             generator=torch.Generator().manual_seed(1 + r),
                             proposal=proposal if start == "encoder" else None)
                lower.append((s.lower - exact).mean().item())
                upper.append((s.upper - exact).mean().item())
            width = [u - lo for u, lo in zip(upper, lower)]
            print(f"| {start} | {T} | {mean_se(lower)} | {mean_se(upper)} | {mean_se(width)} |", flush=True)
    mu, log_sd = proposal
    q = torch.distributions.MultivariateNormal(mu, torch.diag_embed(log_sd.exp() ** 2))
    post_mu, cov = posterior(W, b, x)
    kl = torch.distributions.kl_divergence(q, torch.distributions.MultivariateNormal(post_mu, cov))
    print(f"\nthe proposal's exact ELBO - exact log p(x) = -KL(q || posterior): {-kl.mean():.3f}")
    print("| K | IWAE - exact | ELBO - exact |")
    print("|---|---|---|")
    for K in (1, 10, 100, 1000, 10000):
        bound, elbo = [], []
        for r in range(4 * args.repeats):
            found = iwae(x, mu, log_sd, mean, math.log(SIGMA), K, torch.Generator().manual_seed(100 + r))
            bound.append((found.iwae - exact).mean().item())
            elbo.append((found.elbo - exact).mean().item())
        print(f"| {K} | {mean_se(bound)} | {mean_se(elbo)} |", flush=True)


if __name__ == "__main__":
    main()
