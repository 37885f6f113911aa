"""The semantic-hashing exact evaluation against this machine's own limits, measured in one run.

    python benchmarks/exact_bench.py --corpus results/quick/semhash/corpus.npz \
        --model results/quick/semhash/seed1/e1/depth0/16bits/model.pt [--threads 2] [--device cpu]

In one process, one after the other:
1. the machine: fp32 GEMM throughput (torch.mm of 2048 x 2048 matrices), memory bandwidth (a
   copy of 256 MB: bytes read and written per second), and the rates of the elementwise work
   the evaluation cannot avoid, on arrays in cache: exp (elements per second) and uniform draws;
2. the model's exact evaluation (evaluate.exact_terms with config.yaml's semhash.exact settings,
   the test set), timed per phase, and each phase's lower bound on time from the work the method
   must do, at the rates of 1 (the phase's bound is the largest of its GEMM, exp, draw and memory
   times; their sum is the method's bound):
   - table: the decoder over every code, scores [2^b, V]: 2 2^b V (k+1) GEMM flops, 2^b V exps;
   - enumeration: log p(x|z) of every document and code, log p(x), the exact ELBO:
     2 N 2^b (k+1) GEMM flops, N 2^b exps (the logsumexp; the ELBO's expectation is a contraction);
   - q_star: per document and sweep it needed, the contractions of a sweep read about 6 x 2^b
     and write 3 x 2^b floats: their bytes at the memory bandwidth (they run in cache, so this
     bound can be beaten);
   - iwae: N K_max b uniform draws.
Prints a table: phase, seconds, bound seconds, bound / seconds (1 is the machine's limit).
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import torch
import yaml

from vae_approx.common import set_threads
from vae_approx.semhash.data import SparseCounts, load_prepared
from vae_approx.semhash.evaluate import exact_terms
from vae_approx.semhash.settings import ExactSettings
from vae_approx.semhash.train import restore

ROOT = Path(__file__).resolve().parents[1]


def best_seconds(fn, repeats: int = 5) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        tic = time.perf_counter()
        fn()
        times.append(time.perf_counter() - tic)
    return min(times)


def machine_rates(device: torch.device) -> dict[str, float]:
    n = 2048
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    gemm = 2 * n**3 / best_seconds(lambda: torch.mm(a, b))
    big = torch.empty(64 * 2**20, device=device)                          # 256 MB
    out = torch.empty_like(big)
    bandwidth = 2 * big.numel() * 4 / best_seconds(lambda: out.copy_(big))
    small = torch.randn(2**20, device=device)                             # 4 MB, in cache
    scratch = torch.empty_like(small)
    exp = small.numel() / best_seconds(lambda: torch.exp(small, out=scratch))
    draws = small.numel() / best_seconds(lambda: scratch.uniform_())
    return {"gemm_flops": gemm, "bandwidth_bytes": bandwidth, "exp": exp, "draws": draws}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", required=True)
    parser.add_argument("--model", required=True, help="a VAE's model.pt at <= semhash.exact.max_bits bits")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    set_threads(args.threads)
    device = torch.device(args.device)
    section = yaml.safe_load((ROOT / "config.yaml").read_text())["semhash"]
    exact = ExactSettings.from_section(section["exact"])

    rates = machine_rates(device)
    corpus = load_prepared(args.corpus)
    encoder, decoder, identity = restore(torch.load(args.model, map_location="cpu", weights_only=False))
    encoder, decoder = encoder.to(device), decoder.to(device)
    smoothing = torch.as_tensor(corpus.smoothing, dtype=torch.float32, device=device)
    test = SparseCounts(corpus.test, device)
    seconds: dict[str, float] = {}
    tic = time.perf_counter()
    terms = exact_terms(encoder, decoder, test, smoothing, exact, section["eval_batch_size"],
                        torch.Generator(device=device).manual_seed(0), seconds)
    total = time.perf_counter() - tic

    b, V, N = decoder.bits, corpus.n_words, len(test)
    k1 = decoder.net[-1].weight.shape[1] + 1
    C, K = 2**b, max(exact.samples(b))
    sweeps = terms["q_star_sweeps"].sum().item()
    work = {  # phase: (GEMM flops, exps, draws, bytes to or from memory)
        "table": (2 * C * V * k1, C * V, 0, 0),
        "enumeration": (2 * N * C * k1, N * C, 0, 0),
        "q_star": (0, 0, 0, sweeps * 9 * C * 4),
        "iwae": (0, 0, N * K * b, 0),
    }
    print(f"machine ({args.threads} threads, {device}): fp32 GEMM {rates['gemm_flops'] / 1e9:.1f} GFLOP/s, "
          f"memory {rates['bandwidth_bytes'] / 1e9:.1f} GB/s, exp {rates['exp'] / 1e9:.2f} G/s, "
          f"uniform draws {rates['draws'] / 1e9:.2f} G/s")
    print(f"model {identity}: {N} test documents, V = {V}, k + 1 = {k1}, {C} codes, q* sweeps {sweeps:.0f} "
          f"(mean {sweeps / N:.1f} per document), IWAE K up to {K}")
    print(f"{'phase':<12} {'seconds':>8} {'bound':>8} {'bound/seconds':>14}")
    bound_total = 0.0
    for phase, (flops, exps, draws, nbytes) in work.items():
        bound = max(flops / rates["gemm_flops"], exps / rates["exp"], draws / rates["draws"],
                    nbytes / rates["bandwidth_bytes"])
        bound_total += bound
        spent = seconds.get(phase, math.nan)
        print(f"{phase:<12} {spent:8.3f} {bound:8.3f} {bound / spent:14.2f}")
    print(f"{'all':<12} {total:8.3f} {bound_total:8.3f} {bound_total / total:14.2f}")


if __name__ == "__main__":
    main()
