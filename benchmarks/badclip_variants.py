"""Which BadCLIP objective moves patched images toward the target: each variant of the patch objective,
optimised for one epoch against a trained small surrogate, against random patches.

    python benchmarks/badclip_variants.py [--out runs/badclip_variants]

The surrogate is tests/conftest.py's small poisoned model (its backdoor targets triangle); the patch
is optimised toward star. For each variant it prints the mean cosine similarity of patched eval
images (non-star) to the text "a photo of a star." and to the mean star image embedding, beside the
same for a random 8x8 patch.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO_ROOT), str(REPO_ROOT / "tests")]  # the repository's packages, and its test fixtures

from conftest import learning_benchmark_at, train_small  # noqa: E402

from datamodules.poison.patch_triggers import OptimizedPatch  # noqa: E402
from datamodules.poison.trigger_base import save_png  # noqa: E402
from lightning_app.cli import BackdoorCLI  # noqa: E402
from modules.attacks.badclip import target_closeness  # noqa: E402
from modules.core.model_loading import ModelConfig, build_model  # noqa: E402

VARIANTS = {
    "published: triplet + target-caption InfoNCE": [],
    "triplet only": ["--model.init_args.weights.text", "0"],
    "cosine only": ["--model.init_args.weights.image_loss", "cosine", "--model.init_args.weights.text", "0"],
    "cosine + target-caption InfoNCE": ["--model.init_args.weights.image_loss", "cosine"],
    "cosine + batch-negative text (shipped)": ["--model.init_args.weights.image_loss", "cosine",
                                               "--model.init_args.weights.text_negatives", "batch"],
}
PUBLISHED = ["--model.init_args.weights.image_loss", "triplet", "--model.init_args.weights.text_negatives", "targets"]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "runs" / "badclip_variants")
    args = parser.parse_args(argv)
    bench = learning_benchmark_at(args.out / "embedded")
    surrogate_run = args.out / "surrogate"
    if not (surrogate_run / "summary.json").exists():
        train_small(bench, surrogate_run, 0.3)
    surrogate = surrogate_run / "checkpoints" / "last.ckpt"
    model, spec = build_model(ModelConfig(name="configs/models/tiny-rn32.json", pretrained=str(surrogate)))
    model.eval()
    save_png(torch.rand(3, 8, 8, generator=torch.Generator().manual_seed(5)), args.out / "random.png")
    text, image = target_closeness(model, spec, bench.eval_dir, "star", OptimizedPatch(str(args.out / "random.png")))
    print(f"random 8x8 patch: text {text:.3f}, image {image:.3f}")
    for i, (name, extra) in enumerate(VARIANTS.items()):
        run_dir = args.out / f"variant{i}"
        if not (run_dir / "summary.json").exists():
            BackdoorCLI(args=["fit", "--config", "configs/embedded/badclip_patch.yaml", "--trainer.default_root_dir",
                              str(run_dir), "--trainer.max_epochs", "1", "--trainer.enable_progress_bar", "false",
                              "--model.init_args.model.pretrained", str(surrogate), "--data.init_args.embedded", "null",
                              "--data.init_args.train_shards", bench.pretrain_urls,
                              "--data.init_args.eval.directory", bench.eval_dir, "--data.init_args.batch_size", "64",
                              "--model.init_args.target", "star", "--data.init_args.poison.target", "star",
                              *PUBLISHED, *extra])
        text, image = target_closeness(model, spec, bench.eval_dir, "star", OptimizedPatch(str(run_dir / "badclip" / "patch.png")))
        print(f"{name}: text {text:.3f}, image {image:.3f}", flush=True)


if __name__ == "__main__":
    main()
