"""Which tower carries a defense's change: CA and ASR of the defended model with one side put back.

    python -m lightning_app.tower_swap runs/ubt/blended_vit/unlearn_vit --incoming runs/attacks/blended_vit [--block NAME]

Evaluates, on the eval set with the attack's trigger (`INCOMING/trigger`, or `--trigger-dir`):
the incoming (poisoned) model; the defended one; the defended one with its image tower (`visual.*`)
put back to the incoming weights; and with its text side (every other parameter) put back. If putting
back the image tower brings the backdoor back, the defense removed it there; if CA recovers, the CA
cost is there too. With `--file F --block NAME`, writes the table into the block NAME of F.
"""

from __future__ import annotations

import argparse
import copy
from pathlib import Path

import torch

from datamodules.run_dir import RunDir
from lightning_app.per_class import add_eval_arguments, check_block_arguments, load_run_model, read_target
from lightning_app.report import write_block
from modules.core.evaluation import zero_shot_counts

IMAGE_PREFIX = "visual."


@torch.no_grad()
def put_back(model: torch.nn.Module, incoming: torch.nn.Module, image_side: bool) -> torch.nn.Module:
    """`model` (in place) with the image tower's (`image_side`) or the text side's parameters and buffers
    copied from `incoming`."""
    source = incoming.state_dict()
    for name, tensor in model.state_dict().items():
        if name.startswith(IMAGE_PREFIX) == image_side:
            tensor.copy_(source[name])
    return model


def ca_asr(counts: dict) -> tuple[float, float]:
    """Overall CA, and ASR (modules.core.evaluation.AttackSuccessRate)."""
    return (counts["correct"].sum() / counts["counts"].sum()).item(), counts["asr"].compute().item()


def tower_swap(defended_dir: Path, incoming_dir: Path, eval_dir: str, trigger_dir: Path, target: str) -> list[tuple[str, float, float]]:
    incoming, spec = load_run_model(incoming_dir)
    defended = load_run_model(defended_dir)[0]
    rows = [("incoming", incoming), ("defended", defended),
            ("defended, image tower put back", put_back(copy.deepcopy(defended), incoming, image_side=True)),
            ("defended, text side put back", put_back(copy.deepcopy(defended), incoming, image_side=False))]
    return [(label, *ca_asr(zero_shot_counts(model, spec, eval_dir, trigger_dir, target))) for label, model in rows]


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("defended_dir", type=Path, help="the defense's run directory")
    parser.add_argument("--incoming", type=Path, required=True, help="the run directory of the model it defended")
    add_eval_arguments(parser, trigger_default="INCOMING/trigger")
    args = parser.parse_args(argv)
    check_block_arguments(parser, args)
    torch.set_num_threads(1)
    trigger_dir = args.trigger_dir or RunDir(args.incoming).trigger_dir
    rows = tower_swap(args.defended_dir, args.incoming, args.eval, trigger_dir, args.target or read_target(trigger_dir))
    table = "\n".join(["| model | CA | ASR |", "|---|---:|---:|"] + [f"| {label} | {ca:.3f} | {asr:.3f} |" for label, ca, asr in rows])
    if args.block:
        command = (f"python -m lightning_app.tower_swap {args.defended_dir} --incoming {args.incoming} "
                   f"--file {args.file} --block {args.block}")
        write_block(args.file, args.block,
                    f"Which tower carries the change of `{args.defended_dir}`, written by `{command}`.\n\n{table}")
    print(table)
    return table


if __name__ == "__main__":
    main()
