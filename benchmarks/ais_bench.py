"""The faces' AIS sandwich (images/ais.py) on a run's trained models: how wide the two bounds on
the ground truth's log p(x) of its own held-out images are, against the schedule's length T, and
what one HMC leapfrog step costs against the decoder's training step.

    python benchmarks/ais_bench.py --images results/quick/images --seed 0 \
        --protocol bn-eval_init-zero [--T 50 200 800] [--images-n 8] [--chains 4] [--leapfrog 5] \
        [--start prior encoder] [--throughput 16 64 256]

Sandwich: draws N images from the ground-truth decoder with their true z (exact posterior
samples), then for each start and T runs forward AIS (a stochastic lower bound) and reverse AIS
from the true z (a stochastic upper bound), and prints each bound's mean over the images, the mean
and median width, HMC's acceptance rate and the seconds. Nats per image.

Throughput (--throughput B ...): for each batch of B latents, the HMC leapfrog step's decoder pass
(the ground truth's forward and backward in z, eval mode: ais._value_and_grad) against the same
network's training step on B latents (forward, backward to the weights, Adam), alternating A B A B
for --repeats rounds of --calls calls each; prints milliseconds per call and their ratio.
"""

from __future__ import annotations

import argparse
import time

import torch

from vae_approx.common import set_threads
from vae_approx.images.ais import _value_and_grad, gaussian_likelihood, sandwich
from vae_approx.images.evaluate import load_models


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", required=True, help="a run's images folder, results/<run>/images")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--protocol", default="bn-eval_init-zero", help="the trained protocol's folder")
    parser.add_argument("--T", type=int, nargs="*", default=[50, 200, 800])
    parser.add_argument("--images-n", type=int, default=8)
    parser.add_argument("--chains", type=int, default=4)
    parser.add_argument("--leapfrog", type=int, default=5)
    parser.add_argument("--step-size", type=float, default=0.1, help="HMC's first step size (the pilot adapts it)")
    parser.add_argument("--start", nargs="+", default=["encoder"], choices=["prior", "encoder"],
                        help="where the chains start: the prior, or the pretrained encoder's q(z|x)")
    parser.add_argument("--throughput", type=int, nargs="*", default=[], metavar="B",
                        help="batches of latents for the leapfrog-against-training comparison (none: skip it)")
    parser.add_argument("--calls", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=3)
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
    print(f"{'start':>8} {'T':>6} {'lower':>9} {'upper':>9} {'width':>8} {'median':>8} {'accept':>7} {'seconds':>8}")
    for start in args.start:
        with torch.no_grad():
            proposal = models.pretrained.eval()(x) if start == "encoder" else None
        for T in args.T:
            tic = time.perf_counter()
            s = sandwich(x, z, truth, truth.log_sigma.detach(), nz, T, args.leapfrog, args.chains, args.step_size,
                         torch.Generator().manual_seed(1), proposal)
            width = s.upper - s.lower
            print(f"{start:>8} {T:>6} {s.lower.mean():9.1f} {s.upper.mean():9.1f} {width.mean():8.1f} "
                  f"{width.median():8.1f} {s.acceptance:7.2f} {time.perf_counter() - tic:8.1f}", flush=True)
    for batch in args.throughput:
        throughput(truth, batch, args.calls, args.repeats)


def throughput(truth, batch: int, calls: int, repeats: int) -> None:
    """Milliseconds per call of the leapfrog step's decoder pass and of the decoder's training step, B latents."""
    import copy

    gen = torch.Generator().manual_seed(2)
    nz = truth.generator.nz
    with torch.no_grad():
        z = torch.randn(batch, nz, generator=gen)
        x = truth(z) + truth.log_sigma.exp() * torch.randn(truth(z).shape, generator=gen)
    ll = gaussian_likelihood(truth, x, truth.log_sigma.detach())
    trained = copy.deepcopy(truth).eval().requires_grad_(True)  # BatchNorm as the corrected protocol trains: eval
    optimizer = torch.optim.Adam(trained.parameters(), lr=1e-5)
    train_ll = gaussian_likelihood(trained, x, trained.log_sigma.detach())

    def leapfrog_pass():
        _value_and_grad(z, ll)

    def training_step():
        optimizer.zero_grad(set_to_none=True)
        (-train_ll(z).mean()).backward()
        optimizer.step()

    times = {"leapfrog": [], "training": []}
    for fn in (leapfrog_pass, training_step):  # warm-up
        fn()
    for _ in range(repeats):
        for name, fn in (("leapfrog", leapfrog_pass), ("training", training_step)):
            tic = time.perf_counter()
            for _ in range(calls):
                fn()
            times[name].append((time.perf_counter() - tic) / calls * 1e3)
    lf, tr = min(times["leapfrog"]), min(times["training"])
    print(f"batch {batch:>5}: leapfrog pass {lf:.2f} ms, training step {tr:.2f} ms, ratio {lf / tr:.2f} "
          f"(best of {repeats} rounds of {calls} calls each)", flush=True)


if __name__ == "__main__":
    main()
