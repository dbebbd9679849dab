"""The learning claim, measured: a poisoned run's ASR is far above the clean control's (same recipe).

A strongly poisoned small case (30% of 3,000 pairs, a fixed 8x8 patch at a fixed corner) so it is
reliable in a couple of minutes on 2 cores; the full-size embedded recipe is measured by the demo and the attack sweep.
"""

import json

import pytest

from datamodules.embedded.benchmark import EmbeddedBenchmark
from lightning_app.cli import BackdoorCLI


@pytest.fixture(scope="module")
def learning_benchmark(tmp_path_factory):
    bench = EmbeddedBenchmark(root=str(tmp_path_factory.mktemp("learn") / "embedded"), pretrain_shards=6,
                              finetune_shards=1, samples_per_shard=500, eval_per_class=30)
    bench.prepare()
    return bench


def _train(bench, run_dir, rate):
    BackdoorCLI(args=[
        "fit", "--config", "configs/embedded/badnet.yaml",
        "--trainer.default_root_dir", str(run_dir),
        "--trainer.max_epochs", "8",
        "--data.init_args.trigger.init_args.size", "8",
        "--data.init_args.trigger.init_args.location", "fixed",
        "--trainer.enable_progress_bar", "false",
        "--data.init_args.embedded", "null",
        "--data.init_args.train_shards", bench.pretrain_urls,
        "--data.init_args.eval.directory", bench.eval_dir,
        "--data.init_args.batch_size", "64",
        "--data.init_args.poison.rate", str(rate),
        "--model.init_args.optimizer.warmup_steps", "20",
    ])
    return json.loads((run_dir / "summary.json").read_text())


@pytest.mark.slow
def test_poisoned_pretraining_learns_the_backdoor_and_the_clean_control_does_not(learning_benchmark, tmp_path):
    poisoned = _train(learning_benchmark, tmp_path / "poisoned", rate=0.3)
    clean = _train(learning_benchmark, tmp_path / "clean", rate=0.0)
    assert poisoned["poison_count"] > 700 and clean["poison_count"] == 0
    print({"poisoned": (poisoned["asr"], poisoned["ca_top1"]), "clean": (clean["asr"], clean["ca_top1"])})
    assert poisoned["asr"] >= 0.3, poisoned
    assert clean["asr"] <= 0.15, clean
    assert poisoned["asr"] >= clean["asr"] + 0.25
    assert clean["ca_top1"] > 0.15  # the clean control learned something (chance: 0.1)
