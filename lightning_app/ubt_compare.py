"""UBT against CleanCLIP on one poisoned model, in one paired invocation, with the tables written into
docs/results.md (block `ubt-<attack>`, or `ubt-<attack>-vit` with the ViT stage-2 config):

    python -m lightning_app.ubt_compare --attack badnet    # the demo's poisoned model
    python -m lightning_app.ubt_compare --attack blended   # the attack sweep's Blended model
    python -m lightning_app.ubt_compare --attack badnet_vit --unlearn-config configs/embedded/ubt_unlearn_vit.yaml

Stages (each a `main.py fit`, reused when finished): UBT stage 1 (configs/embedded/ubt_detect.yaml)
streams the poisoned model's own training data (shards and poisoning read from its config.yaml), stage
2 (configs/embedded/ubt_unlearn.yaml, or `--unlearn-config`) unlearns the top-m suspicious pairs, and a
control repeats stage 2 without the forget term; CleanCLIP (configs/embedded/cleanclip.yaml) runs in
its own directory here so that both wall times come from the same session on the same machine. For
the `weak` ranking, which needs no overfitting, one more stage-1 run with UBT's overfitting scores
every ranking for the detection table; it is not counted in UBT's time.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
from pathlib import Path

import yaml

from datamodules.poison import PoisonConfig
from lightning_app.defense_compare import POISONED, defense_stages, same_model
from lightning_app.pipelines import Stage, run_stage
from lightning_app.report import fmt, results_table, write_block

DETECTION_K = (100, 200, 1000)


def poisoning_overrides(poisoned_run: Path) -> list[str]:
    """Command-line overrides that make a stream of the poisoned run's training data as its model saw it."""
    data = yaml.safe_load((poisoned_run / "config.yaml").read_text())["data"]["init_args"]
    overrides = ["--data.init_args.train_shards", str(data["train_shards"])]
    # keys the run's config lacks (written before they existed) had their default then
    poison = {**dataclasses.asdict(PoisonConfig()), **data["poison"]}
    for key, value in poison.items():
        if value is not None:  # None is every optional key's default (and jsonargparse takes no "null" here)
            overrides += [f"--data.init_args.poison.{key}", str(value)]
    return overrides


ONE_PASS_SCORES = ("weak", "cluster")  # rankings by the incoming model alone


def ubt_stages(poisoned: Stage, root: Path, score: str, m: int, unlearn_config: str = "configs/embedded/ubt_unlearn.yaml"
               ) -> tuple[Stage, Stage, Stage, Stage | None]:
    """UBT's two stages, the control, and (for the rankings that need no overfitting, `weak` and `cluster`)
    a stage-1 run with UBT's overfitting that measures every ranking; it is not part of UBT's time.
    Run directories other than `weak`'s end in `_<score>`."""
    run = Path(poisoned.run_dir)
    start = ["--model.init_args.model.pretrained", str(run / "checkpoints" / "last.ckpt"),
             "--data.init_args.trigger_dir", str(run / "trigger")]
    detect_config = "configs/embedded/ubt_detect.yaml"
    tag = score_suffix(score)
    def ranked_by(name: str) -> list[str]:
        return [*start, *same_model(poisoned, detect_config), *poisoning_overrides(run),
                "--model.init_args.score", name, "--model.init_args.top_m", str(m)]

    detect = Stage("UBT 1: suspicious pairs", detect_config, str(root / f"detect{tag}"), ranked_by(score))
    overfit = ["--model.init_args.overfit", "true"]  # the config's `overfit: false` allows `weak` and `cluster`
    if score not in ONE_PASS_SCORES:
        detect.overrides += overfit
    every_ranking = None if score not in ONE_PASS_SCORES else Stage(
        "UBT 1 with overfitting (measures every ranking; not in UBT's time)", detect_config, str(root / "detect_overfit"),
        [*ranked_by("weak"), *overfit])
    suffix = variant_suffix(unlearn_config) + tag
    unlearn = Stage("UBT 2: token unlearning", unlearn_config, str(root / f"unlearn{suffix}"),
                    [*start, *same_model(poisoned, unlearn_config),
                     "--model.init_args.suspicious_dir", str(Path(detect.run_dir) / "ubt"), "--model.init_args.m", str(m)])
    control = Stage("control: stage 2 without the forget term", unlearn_config, str(root / f"retain_only{suffix}"),
                    [*unlearn.overrides, "--model.init_args.lambda_forget", "0"])
    return detect, unlearn, control, every_ranking


def score_suffix(score: str) -> str:
    """'' for the default ranking (`weak`), else `_<score>` (run directories, doc block)."""
    return "" if score == "weak" else f"_{score}"


def variant_suffix(unlearn_config: str) -> str:
    """'' for the default stage-2 config, else `_<its name after ubt_unlearn>` (run directories, doc block)."""
    stem = Path(unlearn_config).stem
    return "" if stem == "ubt_unlearn" else "_" + stem.removeprefix("ubt_unlearn_")


def detection_table(detection: dict) -> str:
    lines = ["| ranking score | AUROC | " + " | ".join(f"precision@{k} | recall@{k}" for k in DETECTION_K) + " |",
             "|---|---:|" + "---:|---:|" * len(DETECTION_K)]
    for score, metrics in detection.items():
        cells = " | ".join(f"{fmt(metrics.get(f'precision@{k}'))} | {fmt(metrics.get(f'recall@{k}'))}" for k in DETECTION_K)
        lines.append(f"| {score} | {fmt(metrics['auroc'])} | {cells} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--attack", choices=sorted(POISONED), default="badnet")
    parser.add_argument("--score", choices=["after", "rise", "weak", "cluster"], default="weak",
                        help="which stage-1 ranking picks the unlearning set")
    parser.add_argument("--m", type=int, default=200, help="suspicious pairs to unlearn (≤ 1%% of 20K pairs)")
    parser.add_argument("--unlearn-config", default="configs/embedded/ubt_unlearn.yaml",
                        help="stage 2's config (configs/embedded/ubt_unlearn_vit.yaml: the ViT recipe)")
    parser.add_argument("--runs", default="runs/ubt")
    parser.add_argument("--skip-cleanclip", action="store_true",
                        help="no paired CleanCLIP run (a ViT's CleanCLIP is slow on a CPU)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    poisoned = POISONED[args.attack]
    root = Path(args.runs) / args.attack
    summaries = {poisoned.label: run_stage(poisoned)}  # stage 1 reads the poisoned run's config.yaml
    cleanclip = None if args.skip_cleanclip else defense_stages(poisoned, root, ("cleanclip",))[0]
    detect, unlearn, control, every_ranking = ubt_stages(poisoned, root, args.score, args.m, args.unlearn_config)
    stages = (cleanclip, detect, unlearn, control, every_ranking)
    summaries.update({stage.label: run_stage(stage) for stage in stages if stage is not None})
    ubt_time = summaries[detect.label]["wall_time_s"] + summaries[unlearn.label]["wall_time_s"]
    before = summaries[poisoned.label]
    after = summaries[unlearn.label]
    pairs = summaries[detect.label]["detection"]["before"]["num_pairs"]
    if cleanclip is None:
        timing = f"UBT wall time (both stages): {fmt(ubt_time, 0)} s; no paired CleanCLIP run. "
    else:
        cleanclip_time = summaries[cleanclip.label]["wall_time_s"]
        timing = (f"UBT wall time (both stages): {fmt(ubt_time, 0)} s = {fmt(100 * ubt_time / cleanclip_time, 1)}% of "
                  f"CleanCLIP's {fmt(cleanclip_time, 0)} s. CleanCLIP's CA change: "
                  f"{fmt(100 * (summaries[cleanclip.label]['ca_top1'] - before['ca_top1']), 1)} points. ")
    detection_run = summaries[(every_ranking or detect).label]
    command = f"python -m lightning_app.ubt_compare --attack {args.attack} --score {args.score} --m {args.m}"
    command += " --skip-cleanclip" if cleanclip is None else ""
    command += f" --unlearn-config {args.unlearn_config}" if variant_suffix(args.unlearn_config) else ""
    suffix = variant_suffix(args.unlearn_config) + score_suffix(args.score)
    text = (
        f"Generated by `{command}` "
        f"from each run's summary.json. UBT unlearns {after['unlearned_pairs']} of {pairs} training pairs "
        f"({100 * after['unlearned_pairs'] / pairs:.1f}%), ranked by `{args.score}`"
        + (" (one scoring pass, no overfitting)" if every_ranking else "")
        + ("" if cleanclip is None else "; CleanCLIP: the clean fine-tuning split (10K pairs), 10 epochs")
        + ". Stage 1 has no CA/ASR of its own (it changes no weights of the model it hands on). The control "
        "is stage 2 with λ_forget = 0: the same steps, trainable parameters and retain loss, so what it "
        "removes is not the unlearning's doing.\n\n"
        + results_table([(label, {**s, "ca_top1": None, "ca_top5": None, "asr": None} if s.get("module") == "SuspiciousPairDiscovery" else s)
                         for label, s in summaries.items()])
        + f"\n\n{timing}UBT's CA change: {fmt(100 * (after['ca_top1'] - before['ca_top1']), 1)} points.\n\n"
        "Detection of the poisoned pairs (against the poison manifest, which no decision reads). `cluster`: "
        f"each image's similarity to the centroid of the images of the {detection_run.get('cluster_seed', '–')} weakest "
        "pairs" + ("; the unlearning set is the top of those pairs by it.\n\n" if args.score == "cluster"
                   else "; reported only, it does not pick the unlearning set here.\n\n")
        + detection_table(detection_run["detection"])
    )
    write_block("docs/results.md", f"ubt-{args.attack}{suffix.replace('_', '-')}", text)
    print(text)
    return text


if __name__ == "__main__":
    main()
