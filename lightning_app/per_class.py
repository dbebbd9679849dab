"""Per-class CA and ASR of a run's model on its eval set: which classes resist the backdoor.

    python -m lightning_app.per_class runs/demo/badnet [--eval data/embedded/eval] [--block NAME]

Uses the run's `config.yaml` (model), `checkpoints/last.ckpt` and `trigger/` (or `--trigger-dir`,
for a defense run whose trigger is its attack's), the same zero-shot classifier as the training-time
metric. With `--block`, writes the table into docs/results.md.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from datamodules.poison import load_trigger
from datamodules.pretrain import TARGET_FILE
from datamodules.zeroshot import ZeroShotEvalConfig, ZeroShotSet
from lightning_app.export import _model_name
from lightning_app.metrics import zeroshot_classifier
from lightning_app.report import write_block
from modules.model_loading import ModelConfig, build_model


def load_run_model(run_dir: Path) -> tuple[torch.nn.Module, object]:
    """A run's model from its `config.yaml` and `checkpoints/last.ckpt`, in eval mode, and its input spec."""
    model, spec = build_model(ModelConfig(name=_model_name(run_dir), pretrained=str(run_dir / "checkpoints" / "last.ckpt")))
    return model.eval(), spec


@torch.no_grad()
def zero_shot_counts(model: torch.nn.Module, spec, eval_dir: str, trigger_dir: Path, target: str) -> dict:
    """Per class of the eval set: images, clean hits and triggered images classified as `target`."""
    data = ZeroShotSet(ZeroShotEvalConfig(directory=eval_dir), spec, load_trigger(trigger_dir), 0, 1)
    classifier = zeroshot_classifier(lambda t: model.encode_text(t, normalize=True), spec.tokenizer,
                                     data.classnames, data.templates, "cpu")
    target_index = data.classnames.index(target)
    n = len(data.classnames)
    counts, correct, hits = torch.zeros(n), torch.zeros(n), torch.zeros(n)
    for batch in torch.utils.data.DataLoader(data, batch_size=250):
        labels = batch["label"]
        clean = (model.encode_image(batch["image"], normalize=True) @ classifier).argmax(1)
        triggered = (model.encode_image(batch["image_triggered"], normalize=True) @ classifier).argmax(1)
        counts += torch.bincount(labels, minlength=n)
        correct += torch.bincount(labels[clean == labels], minlength=n)
        hits += torch.bincount(labels[triggered == target_index], minlength=n)
    return {"classnames": data.classnames, "target_index": target_index, "counts": counts, "correct": correct, "hits": hits}


def per_class(run_dir: Path, eval_dir: str, trigger_dir: Path, target: str) -> list[tuple[str, float, float | None]]:
    model, spec = load_run_model(run_dir)
    c = zero_shot_counts(model, spec, eval_dir, trigger_dir, target)
    return [(name, (c["correct"][i] / c["counts"][i]).item(),
             None if i == c["target_index"] else (c["hits"][i] / c["counts"][i]).item())
            for i, name in enumerate(c["classnames"])]


def read_target(trigger_dir: Path) -> str:
    """The attack's target class, from the trigger artifacts' target file."""
    target_file = trigger_dir / TARGET_FILE
    if not target_file.exists():
        raise ValueError(f"{target_file} is missing; name the attack's target with --target")
    return json.loads(target_file.read_text())["target"]


def add_eval_arguments(parser: argparse.ArgumentParser, trigger_default: str) -> None:
    """The eval set, trigger, target and output block options shared by the evaluation tools."""
    parser.add_argument("--eval", default="data/embedded/eval", help="clip_benchmark-format eval directory")
    parser.add_argument("--trigger-dir", type=Path, help=f"default: {trigger_default}")
    parser.add_argument("--target", help="default: the attack's target, from TRIGGER_DIR/target.json")
    parser.add_argument("--block", help="write the table into docs/results.md under this block name")


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    add_eval_arguments(parser, trigger_default="RUN/trigger")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    trigger_dir = args.trigger_dir or args.run_dir / "trigger"
    target = args.target or read_target(trigger_dir)
    rows = per_class(args.run_dir, args.eval, trigger_dir, target)
    lines = ["| class | CA | ASR |", "|---|---:|---:|"]
    lines += [f"| {name} | {ca:.2f} | {'target' if asr is None else f'{asr:.2f}'} |" for name, ca, asr in rows]
    table = "\n".join(lines)
    if args.block:
        command = f"python -m lightning_app.per_class {args.run_dir} --block {args.block}"
        write_block("docs/results.md", args.block, f"Per-class CA and ASR of `{args.run_dir}`, written by `{command}`.\n\n{table}")
    print(table)
    return table


if __name__ == "__main__":
    main()
