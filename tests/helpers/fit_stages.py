"""Fit every stage of the toolkit for a few steps, one after the other in this process, each from the
shipped embedded config (channels_last as shipped) with the given strategy fragments added.

    torchrun --nproc_per_node 2 tests/helpers/fit_stages.py OUT BENCH_ROOT --devices 2 \\
        --strategy configs/strategies/deepspeed_zero3.yaml configs/strategies/cpu.yaml [--stages ...]
    python tests/helpers/fit_stages.py OUT BENCH_ROOT --precision bf16-mixed   # one process, no strategy

One process group serves every fit (Lightning and DeepSpeed both reuse an initialised one), so the
2-rank start-up is paid once, not once per stage. Each stage writes OUT/STAGE (its run directory); a
stage that fails stops the script with its traceback (exit 1) after writing OUT/failed.txt.
The tests in tests/test_strategy_stages.py read the run directories.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

# stage name: (shipped config, the stage it starts from, its own overrides)
STAGES: dict[str, tuple[str, str | None, list[str]]] = {
    "pretrain": ("configs/embedded/badnet.yaml", None, []),
    "pretrain_ssl": ("configs/embedded/badnet_ssl.yaml", None, []),
    "pretrain_siglip": ("configs/embedded/badnet.yaml", None, ["--model.init_args.objective", "siglip"]),
    "pretrain_cyclip": ("configs/embedded/badnet.yaml", None, ["--model.init_args.objective", "cyclip"]),
    "ft": ("configs/embedded/ft.yaml", "pretrain", []),
    "cleanclip": ("configs/embedded/cleanclip.yaml", "pretrain", []),
    "abd_craft": ("configs/embedded/abd_craft.yaml", "pretrain", []),
    "abd": ("configs/embedded/abd.yaml", "pretrain", ["--model.init_args.patch_dir", "{abd_craft}/adversarial"]),
    "abd_pgd": ("configs/embedded/abd_pgd.yaml", "pretrain", ["--model.init_args.pgd_steps", "2"]),
    "ubt_detect": ("configs/embedded/ubt_detect.yaml", "pretrain",
                   ["--model.init_args.top_m", "16", "--model.init_args.report_k", "[16]"]),
    "ubt_unlearn": ("configs/embedded/ubt_unlearn.yaml", "pretrain",
                    ["--model.init_args.suspicious_dir", "{ubt_detect}/ubt", "--model.init_args.m", "16",
                     "--model.init_args.forget_batch_size", "8",
                     # the token-local set: frozen parameters beside trained ones, the case a strategy can get wrong
                     "--model.init_args.trainable", "null"]),
    "decree": ("configs/embedded/decree.yaml", "pretrain", ["--trainer.max_steps", "2"]),
    "repair": ("configs/embedded/repair.yaml", "pretrain",
               ["--model.init_args.recovered_trigger", "{decree}/inversion/trigger"]),
    "oracle_finder": ("configs/embedded/oracle_finder.yaml", "pretrain", ["--model.init_args.max_pairs", "64"]),
    "roclip": ("configs/embedded/roclip.yaml", None, ["--model.init_args.break_epoch", "1",
                                                      "--model.init_args.bank_size", "256"]),
    # two epochs: the unimodal warm-up, then a split epoch (scoring every pair outside a step)
    "safeclip": ("configs/embedded/safeclip.yaml", None, ["--model.init_args.warmup_epochs", "1",
                                                          "--model.init_args.cross_epochs", "0", "--trainer.max_epochs", "2"]),
    "badclip_patch": ("configs/embedded/badclip_patch.yaml", "pretrain", []),
}


class _Shards:
    """An embedded benchmark's shard pattern and eval directory, read from its root."""

    def __init__(self, root: Path):
        shards = sorted((root / "pretrain").glob("*.tar"))
        if not shards:
            raise SystemExit(f"{root}/pretrain holds no shards: build an EmbeddedBenchmark there first")
        self.pretrain_urls = f"{root}/pretrain/{{{shards[0].stem}..{shards[-1].stem}}}.tar"
        self.eval_dir = str(root / "eval")


def stage_args(name: str, out: Path, bench, steps: int, devices: int, strategy: list[str], precision: str) -> list[str]:
    config, parent, own = STAGES[name]
    args = ["fit", "--config", config]
    for fragment in strategy:
        args += ["--config", fragment]
    args += ["--trainer.default_root_dir", str(out / name), "--trainer.devices", str(devices),
             "--trainer.precision", precision, "--trainer.enable_progress_bar", "false",
             "--trainer.max_epochs", "1", "--trainer.limit_train_batches", str(steps), "--trainer.log_every_n_steps", "1",
             "--torch_threads", "1", "--data.init_args.embedded", "null",
             # every stage on the 4 pretraining shards (2 ranks need 2); the defenses' configs poison none of them
             "--data.init_args.train_shards", bench.pretrain_urls,
             "--data.init_args.eval.directory", bench.eval_dir, "--data.init_args.batch_size", "32",
             # one worker each, started by the forkserver (the default): a worker forked from this process,
             # which by its second stage runs gloo's and the loggers' threads, hung right after the fork
             "--data.init_args.num_workers", "1", "--data.init_args.eval.num_workers", "1"]
    args += ["--data.init_args.text_synonyms", "none"]  # EDA without WordNet: the tests need no apt package
    if parent is not None:
        args += ["--model.init_args.model.pretrained", str(out / parent / "checkpoints" / "last.ckpt"),
                 "--data.init_args.trigger_dir", str(out / parent / "trigger")]
    return args + [value.format(**{stage: out / stage for stage in STAGES}) for value in own]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("bench_root", help="an EmbeddedBenchmark root built at 32 px (tests: small_benchmark)")
    parser.add_argument("--strategy", nargs="*", default=[], help="strategy config fragments")
    parser.add_argument("--devices", type=int, default=1)
    parser.add_argument("--precision", default="32-true")
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--stages", nargs="*", default=list(STAGES))
    parser.add_argument("--override", default="",
                        help='CLI overrides appended to every stage, one string: --override="--trainer.x 1 --model.y 2"')
    args = parser.parse_args(argv)
    unknown = sorted(set(args.stages) - set(STAGES))
    if unknown:
        parser.error(f"unknown stages {unknown}; known: {sorted(STAGES)}")

    from lightning_app.cli import BackdoorCLI

    bench = _Shards(Path(args.bench_root))
    for name in args.stages:
        start = time.perf_counter()
        try:
            BackdoorCLI(args=stage_args(name, args.out, bench, args.steps, args.devices, args.strategy, args.precision)
                        + shlex.split(args.override))
        except BaseException:
            args.out.mkdir(parents=True, exist_ok=True)
            (args.out / "failed.txt").write_text(f"{name}\n{traceback.format_exc()}")
            raise
        print(f"stage {name}: {time.perf_counter() - start:.1f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
