"""What each poisoned-pair detector costs beyond the scoring pass, as the data grows toward CC3M:

    python benchmarks/detector_cost.py [--pairs 20000 100000 500000] [--dim 512] [--reference 4096]

On random unit embeddings (the cost does not depend on what they hold): the density scores (kdist,
SLOF, DAO and `dense` share one search of each pair's 16 nearest neighbours among `reference`
images), SafeCLIP's mixture over the similarities, `cluster`'s centroid, and the mixture rule of
UBT's label-free set. Prints seconds per size and per million pairs, on this machine's CPU (torch's
threads as set by --threads). The scoring pass itself (the model over every pair) is not included:
it is the model's inference cost, in the `cost_scoring_pass_s` column of the detection tables.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from modules.detection.detectors import gmm_risk, local_density_scores, reference_rows  # noqa: E402
from modules.detection.suspicious_set import choose_suspicious  # noqa: E402


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, nargs="+", default=[20_000, 100_000, 500_000])
    parser.add_argument("--dim", type=int, default=512, help="embedding width (RN50: 1024, ViT-B-32: 512)")
    parser.add_argument("--reference", type=int, default=4096)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch threads {args.threads}, dim {args.dim}, reference {args.reference}")
    print(f"{'pairs':>9} {'density (s)':>12} {'gmm (s)':>8} {'cluster (s)':>11} {'set rule (s)':>12} {'density s/1M':>13}")
    for n in args.pairs:
        gen = torch.Generator().manual_seed(0)
        images = F.normalize(torch.randn(n, args.dim, generator=gen), dim=-1).half()
        similarity = torch.rand(n, generator=gen)
        density = timed(lambda: local_density_scores(images.float(), 16, reference_rows(n, args.reference, 0)))
        gmm = timed(lambda: gmm_risk(similarity))
        seed = similarity.argsort()[:1000]
        cluster = timed(lambda: images.float() @ F.normalize(images[seed].float().mean(0), dim=0))
        rule = timed(lambda: choose_suspicious(similarity, 200))
        print(f"{n:>9} {density:>12.2f} {gmm:>8.2f} {cluster:>11.3f} {rule:>12.2f} {density / n * 1e6:>13.1f}")


if __name__ == "__main__":
    main()
