"""What one evaluation pass costs, per set, against a training epoch: a fit of one epoch on every set of the
embedded benchmark (configs/embedded/eval/all_sets.yaml) on this machine.

    python benchmarks/eval_cost.py [--epochs 1] [--config configs/embedded/badnet.yaml]

Prints each set's pass (seconds, images per second; a retrieval set's captions are encoded too), the
linear probe's seconds, and the training epoch's seconds (pairs read over the training throughput).
An evaluation that costs as much as the training epoch is a bug on a GPU; on this CPU the tiny model's
epoch is 20K pairs against 3,500 eval images.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/embedded/badnet.yaml")
    parser.add_argument("--sets", default="configs/embedded/eval/all_sets.yaml")
    parser.add_argument("--epochs", type=int, default=1)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as run_dir:
        subprocess.run([sys.executable, "main.py", "fit", "--config", args.config, "--config", args.sets,
                        "--trainer.default_root_dir", run_dir, "--trainer.max_epochs", str(args.epochs),
                        "--trainer.num_sanity_val_steps", "0", "--trainer.enable_progress_bar", "false"],
                       cwd=REPO, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        summary = json.loads((Path(run_dir) / "summary.json").read_text())
    epoch = summary["data_health"]["good"] / args.epochs / summary["train_samples_per_s"]
    print(f"training epoch: {epoch:.1f} s ({summary['train_samples_per_s']:.0f} pairs/s)")
    sizes = {"eval": "eval", "eval_sketch": "eval_sketch", "retrieval": "retrieval"}
    for name, block in summary["eval"].items():
        images = _images(REPO / "data" / "embedded" / sizes.get(name, name))
        rate = f", {images / block['eval_seconds']:.0f} images/s" if images else ""
        print(f"{name:12} {block['kind']:15} {block['eval_seconds']:6.2f} s{rate}  "
              f"({100 * block['eval_seconds'] / epoch:.1f}% of the epoch)")
    if summary.get("linear_probe"):
        print(f"linear probe {summary['linear_probe']['seconds']:6.2f} s")


def _images(directory: Path) -> int | None:
    import tarfile

    split = directory / "test"
    if not split.exists():
        return None
    count = 0
    for tar in split.glob("*.tar"):
        with tarfile.open(tar) as archive:
            count += sum(1 for m in archive if m.name.endswith((".png", ".webp", ".jpg")))
    return count


if __name__ == "__main__":
    main()
