"""(slow) The trigger finders on a really poisoned model (conftest.small_poisoned_run: 30% BadNet, target
triangle): the oracle finder names the target and finds the patch; DECREE's recovered trigger, stamped
by the repair, removes most of the backdoor in 2 epochs."""

from __future__ import annotations

import json

import pytest
import torch

from lightning_app.cli import BackdoorCLI


def _fit(config: str, run_dir, *extra: str) -> dict:
    BackdoorCLI(args=["fit", "--config", config, "--trainer.default_root_dir", str(run_dir), "--torch_threads", "1",
                      "--trainer.enable_progress_bar", "false", "--data.init_args.embedded", "null", *extra])
    return json.loads((run_dir / "summary.json").read_text())


def _data(bench, poisoned_dir, shards) -> list[str]:
    return ["--model.init_args.model.pretrained", str(poisoned_dir / "checkpoints" / "last.ckpt"),
            "--data.init_args.trigger_dir", str(poisoned_dir / "trigger"),
            "--data.init_args.train_shards", shards, "--data.init_args.eval.directory", bench.eval_dir,
            "--data.init_args.batch_size", "64"]


@pytest.mark.parametrize("rule", ["collapse", "transplant"])
def test_the_oracle_finder_names_the_target_and_finds_the_patch(learning_benchmark, small_poisoned_run, tmp_path, rule):
    poisoned_dir, poisoned = small_poisoned_run
    summary = _fit("configs/embedded/oracle_finder.yaml", tmp_path / "oracle",
                   *_data(learning_benchmark, poisoned_dir, learning_benchmark.pretrain_urls),
                   "--data.init_args.poison.rate", "0.3", "--model.init_args.max_pairs", "1500",
                   "--model.init_args.victim_rule", rule)
    found = summary["oracle"]
    print(found, summary["detection"])
    assert found["victim_label"] == "triangle" and found["victim_rule"] == rule
    assert found["mean_iou"] >= 0.5
    assert summary["detection"]["oracle"]["precision@100"] >= 0.6  # 30% of the pairs are poisoned
    assert (tmp_path / "oracle" / "oracle" / "trigger" / "mask.png").exists()
    # the victim set UBT can unlearn: the finder's best-ranked victim samples, as the model saw them
    from modules.detection.pair_scoring import SUSPICIOUS_PAIRS, load_suspicious_pairs

    finding = json.loads((tmp_path / "oracle" / "oracle" / "finding.json").read_text())
    keys, images, _ = load_suspicious_pairs(tmp_path / "oracle" / "oracle" / SUSPICIOUS_PAIRS, 10_000)
    rates = finding["transplant_rate_of"]
    assert keys == [k for k in finding["ranked"] if rates[k] >= 0.5][:200] and found["victim_set"] == len(keys) > 0
    manifest = set(json.loads((tmp_path / "oracle" / "poison" / "manifest.json").read_text())["keys"])
    assert found["victim_set_share_poisoned"] == pytest.approx(sum(k in manifest for k in keys) / len(keys))
    assert images.dtype == torch.uint8 and images.shape[1:] == (3, 32, 32)


def test_decree_then_repair_removes_most_of_the_backdoor(learning_benchmark, small_poisoned_run, tmp_path):
    poisoned_dir, poisoned = small_poisoned_run
    assert poisoned["asr"] >= 0.7
    inversion = _fit("configs/embedded/decree.yaml", tmp_path / "invert",
                     *_data(learning_benchmark, poisoned_dir, learning_benchmark.finetune_urls), "--trainer.max_steps", "300")
    print(inversion["inversion"])
    assert inversion["inversion"]["reached"]
    repaired = _fit("configs/embedded/repair.yaml", tmp_path / "repair",
                    *_data(learning_benchmark, poisoned_dir, learning_benchmark.finetune_urls),
                    "--model.init_args.recovered_trigger", str(tmp_path / "invert" / "inversion" / "trigger"),
                    "--trainer.max_epochs", "4")
    print({"before": repaired["before"], "after": (repaired["asr"], repaired["ca_top1"])})
    assert repaired["before"]["asr"] >= 0.7
    assert repaired["asr"] <= 0.3
    assert repaired["ca_top1"] >= repaired["before"]["ca_top1"] - 0.1
