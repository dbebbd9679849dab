"""Per-class CA and ASR of a run's model on its eval set: which classes resist the backdoor.

    python -m lightning_app.per_class runs/demo/badnet [--eval data/embedded/eval] [--block NAME]

Uses the run's `config.yaml` (model), `checkpoints/last.ckpt` and `trigger/` (or `--trigger-dir`,
for a defense run whose trigger is its attack's), the same zero-shot classifier as the training-time
metric. With `--file F --block NAME`, writes the table into the block NAME of F.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from datamodules.run_dir import RunDir
from lightning_app.report import write_block
from modules.core.evaluation import zero_shot_counts
from modules.core.model_loading import ModelConfig, build_model


def load_run_model(run_dir: Path) -> tuple[torch.nn.Module, object]:
    """A run's model from its `config.yaml` and `checkpoints/last.ckpt`, in eval mode, and its input spec."""
    run = RunDir(run_dir)
    model, spec = build_model(ModelConfig(name=run.model_name(), pretrained=str(run.checkpoint)))
    return model.eval(), spec


def per_class(run_dir: Path, eval_dir: str, trigger_dir: Path, target: str) -> list[tuple[str, float, float | None]]:
    model, spec = load_run_model(run_dir)
    c = zero_shot_counts(model, spec, eval_dir, trigger_dir, target)
    asr = c["asr"].per_class()
    return [(name, (c["correct"][i] / c["counts"][i]).item(), None if i == c["target_index"] else asr[i].item())
            for i, name in enumerate(c["classnames"])]


def read_target(trigger_dir: Path) -> str:
    """The attack's target class, from the trigger artifacts' target file."""
    run = RunDir(Path(trigger_dir).parent)
    if not run.target_path.exists():
        raise ValueError(f"{run.target_path} is missing; name the attack's target with --target")
    return run.target()


def add_eval_arguments(parser: argparse.ArgumentParser, trigger_default: str) -> None:
    """The eval set, trigger, target and output block options shared by the evaluation tools."""
    parser.add_argument("--eval", default="data/embedded/eval", help="clip_benchmark-format eval directory")
    parser.add_argument("--trigger-dir", type=Path, help=f"default: {trigger_default}")
    parser.add_argument("--target", help="default: the attack's target, from TRIGGER_DIR/target.json")
    parser.add_argument("--block", help="write the table under this block name into --file")
    parser.add_argument("--file", type=Path, help="the markdown file of --block (e.g. docs/results/analysis.md)")


def check_block_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if args.block and not args.file:
        parser.error("--block needs --file, the markdown file to write it into")


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    add_eval_arguments(parser, trigger_default="RUN/trigger")
    args = parser.parse_args(argv)
    check_block_arguments(parser, args)
    torch.set_num_threads(1)
    trigger_dir = args.trigger_dir or RunDir(args.run_dir).trigger_dir
    target = args.target or read_target(trigger_dir)
    rows = per_class(args.run_dir, args.eval, trigger_dir, target)
    lines = ["| class | CA | ASR |", "|---|---:|---:|"]
    lines += [f"| {name} | {ca:.2f} | {'target' if asr is None else f'{asr:.2f}'} |" for name, ca, asr in rows]
    table = "\n".join(lines)
    if args.block:
        command = f"python -m lightning_app.per_class {args.run_dir} --file {args.file} --block {args.block}"
        write_block(args.file, args.block, f"Per-class CA and ASR of `{args.run_dir}`, written by `{command}`.\n\n{table}")
    print(table)
    return table


if __name__ == "__main__":
    main()
