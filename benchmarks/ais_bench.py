"""The faces' AIS sandwich (images/ais.py) on a run's trained models: how wide the two bounds on
the ground truth's log p(x) of its own held-out images are, against the schedule's length T.

    python benchmarks/ais_bench.py --images results/quick/images --seed 0 \
        --protocol bn-eval_init-zero [--T 50 200 800] [--images-n 8] [--chains 4] [--leapfrog 5]

Draws N images from the ground-truth decoder with their true z (exact posterior samples), then
for each T runs forward AIS from the prior (a stochastic lower bound) and reverse AIS from the
true z (a stochastic upper bound), and prints each bound's mean over the images, the mean and
median width, HMC's acceptance rate and the seconds. Nats per image.
"""

from __future__ import annotations

import argparse
import time

import torch

from vae_approx.common import set_threads
from vae_approx.images.ais import sandwich
from vae_approx.images.evaluate import load_models


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", required=True, help="a run's images folder, results/<run>/images")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--protocol", default="bn-eval_init-zero", help="the trained protocol's folder")
    parser.add_argument("--T", type=int, nargs="+", default=[50, 200, 800])
    parser.add_argument("--images-n", type=int, default=8)
    parser.add_argument("--chains", type=int, default=4)
    parser.add_argument("--leapfrog", type=int, default=5)
    parser.add_argument("--step-size", type=float, default=0.01, help="HMC's first step size (then adapted)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    set_threads(args.threads)
    run = f"{args.images}/seed{args.seed}/{args.protocol}"
    models = load_models(f"{args.images}/gan/generator.pt", f"{run}/pretrained.pt", f"{run}/sigma-fixed/joint.pt")
    truth = models.truth.eval()
    gen = torch.Generator().manual_seed(0)
    nz = truth.generator.nz
    with torch.no_grad():
        z = torch.randn(args.images_n, nz, generator=gen)
        mean = truth(z)
        x = mean + truth.log_sigma.exp() * torch.randn(mean.shape, generator=gen)
    print(f"ground truth of {run}: {args.images_n} images {tuple(x.shape[1:])}, sigma {truth.sigma:.3g}, nz {nz}, "
          f"{args.chains} chains, {args.leapfrog} leapfrog steps, {args.threads} threads")
    print(f"{'T':>6} {'lower':>9} {'upper':>9} {'width':>8} {'median':>8} {'accept':>7} {'seconds':>8}")
    for T in args.T:
        tic = time.perf_counter()
        s = sandwich(x, z, truth, truth.log_sigma.detach(), nz, T, args.leapfrog, args.chains, args.step_size,
                     torch.Generator().manual_seed(1))
        width = s.upper - s.lower
        print(f"{T:>6} {s.lower.mean():9.1f} {s.upper.mean():9.1f} {width.mean():8.1f} {width.median():8.1f} "
              f"{s.acceptance:7.2f} {time.perf_counter() - tic:8.1f}")


if __name__ == "__main__":
    main()
