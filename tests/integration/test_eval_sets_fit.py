"""A fit evaluated on the embedded benchmark's three sets, with a linear probe: the headline set's figures
are the run's CA and ASR, every set gets its block in summary.json, the probe its accuracy, and the
single-run probe tool gives the same accuracy from the run directory. The fit continues the strongly
poisoned small model for one epoch, so the figures are those of a model that learned something."""

from __future__ import annotations

import json

from helpers.end_to_end import _args

from lightning_app.cli import BackdoorCLI
from lightning_app.linear_probe import main as probe_main


def test_a_fit_on_three_sets_writes_a_block_per_set_and_its_probe(learning_benchmark, small_poisoned_run, tmp_path):
    bench, (poisoned, _) = learning_benchmark, small_poisoned_run
    run_dir = tmp_path / "run"
    sets = f"[{{directory: {bench.eval_dir}}}, {{directory: {bench.sketch_dir}}}, {{directory: {bench.retrieval_dir}}}]"
    BackdoorCLI(args=_args(bench, run_dir, epochs=1, extra=[
        "--model.init_args.model.pretrained", str(poisoned / "checkpoints" / "last.ckpt"),
        "--data.init_args.poison.rate", "0.0", "--data.init_args.poison.target", "triangle",
        "--model.init_args.optimizer.lr", "1e-4",
        "--data.init_args.eval", sets,
        "--linear_probe.train.directory", bench.probe_dir, "--linear_probe.test.directory", bench.eval_dir]))
    summary = json.loads((run_dir / "summary.json").read_text())
    assert list(summary["eval"]) == ["eval", "eval_sketch", "retrieval"]
    headline = summary["eval"]["eval"]
    assert (summary["ca_top1"], summary["asr"]) == (headline["ca_top1"], headline["asr"])
    assert summary["metrics"]["val/eval_sketch/ca_top1"] == summary["eval"]["eval_sketch"]["ca_top1"]
    retrieval = summary["eval"]["retrieval"]
    assert retrieval["kind"] == "retrieval" and retrieval["skipped_images"] == 0
    assert retrieval["i2t_r1"] <= retrieval["i2t_r5"] <= retrieval["i2t_r10"]
    assert retrieval["t2i_r10"] > 0.05  # 10 of 1,000 images by chance: 0.01
    # the backdoor reaches retrieval too: triggered non-triangle images fetch a caption naming a triangle
    assert retrieval["asr_hit5"] > 0.5, retrieval
    assert all(block["eval_seconds"] > 0 for block in summary["eval"].values())
    probe = summary["linear_probe"]
    assert probe["train_images"] == 10 * bench.probe_per_class and probe["test_images"] == 10 * bench.eval_per_class
    assert probe["top1"] > 0.2, probe  # chance is 0.1; this weak model's zero-shot CA about 0.3
    assert probe_main([str(run_dir), "--train", bench.probe_dir, "--test", bench.eval_dir])["top1"] == probe["top1"]
