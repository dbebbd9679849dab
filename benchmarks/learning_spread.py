"""The spread of the learning test's outcome over seeds and torch thread counts.

    python benchmarks/learning_spread.py [--seeds 0 1 2] [--threads 1 2] [--out runs/learning_spread]

Trains tests/conftest.py's small recipe (the one `tests/integration/test_learning.py` asserts on), poisoned and
clean, for each seed and thread count, and prints ASR and CA of each run, the poisoned-minus-clean
ASR margin, and the minimum and maximum of each over all runs: the evidence behind the test's
thresholds (quoted in its docstring).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO_ROOT), str(REPO_ROOT / "tests")]  # the repository's packages, and its test fixtures

from conftest import learning_benchmark_at, train_small  # noqa: E402


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "runs" / "learning_spread")
    args = parser.parse_args(argv)
    bench = learning_benchmark_at(args.out / "embedded")
    rows = []
    for seed in args.seeds:
        for threads in args.threads:
            runs = {}
            for name, rate in (("poisoned", 0.3), ("clean", 0.0)):
                run_dir = args.out / f"{name}-seed{seed}-threads{threads}"
                runs[name] = train_small(bench, run_dir, rate, "--seed_everything", str(seed), "--data.init_args.poison.seed", str(seed),
                                         "--torch_threads", str(threads))
            row = {"seed": seed, "threads": threads, "poisoned_asr": runs["poisoned"]["asr"],
                   "poisoned_ca": runs["poisoned"]["ca_top1"], "clean_asr": runs["clean"]["asr"],
                   "clean_ca": runs["clean"]["ca_top1"]}
            row["margin"] = row["poisoned_asr"] - row["clean_asr"]
            rows.append(row)
            print(" ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()), flush=True)
    for key in ("poisoned_asr", "poisoned_ca", "clean_asr", "clean_ca", "margin"):
        values = [row[key] for row in rows]
        print(f"{key}: min {min(values):.3f} max {max(values):.3f} over {len(values)} runs")
    return rows


if __name__ == "__main__":
    main()
