"""RoCLIP's memory bank on hand-made embeddings (nearest caption, FIFO, never the query's own caption
before it is added), `cross_aug` training on the augmented views, and (slow) the swap on every
break_epoch-th epoch only, counted from 1 as RoCLIP does.

The unit tests: tests/unit/modules/test_roclip.py."""

from __future__ import annotations


def test_roclip_swaps_captions_on_every_break_epoch_only(small_benchmark, tmp_path):
    import csv
    import json

    from lightning_app.cli import BackdoorCLI

    run_dir = tmp_path / "run"
    BackdoorCLI(args=["fit", "--config", "configs/embedded/roclip.yaml", "--trainer.default_root_dir", str(run_dir),
                      "--trainer.max_epochs", "3", "--trainer.enable_progress_bar", "false",
                      "--trainer.log_every_n_steps", "1", "--data.init_args.embedded", "null",
                      "--data.init_args.train_shards", small_benchmark.pretrain_urls,
                      "--data.init_args.eval.directory", small_benchmark.eval_dir, "--data.init_args.batch_size", "32",
                      "--model.init_args.optimizer.warmup_steps", "5", "--model.init_args.bank_size", "256"])
    rows = [r for r in csv.DictReader(open(run_dir / "metrics.csv")) if r.get("train/swapped")]
    by_epoch = {e: [float(r["train/swapped"]) for r in rows if int(r["epoch"]) == e] for e in (0, 1, 2)}
    # RoCLIP counts epochs from 1 and swaps on its 2nd, 4th, ...: Lightning's epochs 1, 3, ...; the bank
    # filled during the plain first epoch, so the swap epoch's first batch already finds something
    assert not any(by_epoch[0]) and all(by_epoch[1]) and not any(by_epoch[2])
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["ca_top1"] is not None
    assert 0.0 <= summary["roclip"]["poisoned_swapped_to_poisoned"] <= 1.0  # epoch 1's, the only swap epoch
