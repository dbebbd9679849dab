"""SafeCLIP's split loss on hand-made features, its schedule, its safe share and its lr in the cross phase.

The unit tests: tests/unit/modules/test_safeclip.py."""

import pytest


def test_safeclip_fits_through_its_phases_and_its_splits_keep_poison_out(small_poisoned_run, learning_benchmark, tmp_path):
    """From the strongly poisoned small model (30% poisoned; its weights start the run, so the first split
    sees a model that already fits the poisoned pairs): one cross epoch, then two splits. Each split is
    written once and its safe set holds a smaller share of poisoned pairs than the data."""
    import json

    from lightning_app.cli import BackdoorCLI

    poisoned, _ = small_poisoned_run
    run_dir = tmp_path / "run"
    BackdoorCLI(args=["fit", "--config", "configs/embedded/safeclip.yaml", "--trainer.default_root_dir", str(run_dir),
                      "--trainer.max_epochs", "3", "--trainer.enable_progress_bar", "false",
                      "--data.init_args.embedded", "null", "--data.init_args.train_shards", learning_benchmark.pretrain_urls,
                      "--data.init_args.eval.directory", learning_benchmark.eval_dir, "--data.init_args.batch_size", "64",
                      "--data.init_args.poison.rate", "0.3", "--model.init_args.warmup_epochs", "0",
                      "--model.init_args.cross_epochs", "1", "--model.init_args.ratio_step", "0.1",
                      "--model.init_args.model.pretrained", str(poisoned / "checkpoints" / "last.ckpt"),
                      "--model.init_args.optimizer.warmup_steps", "5",
                      "--data.init_args.text_synonyms", "none"])  # needs no WordNet: test_text_augment tests them
    splits = [json.loads((run_dir / "safeclip" / f"epoch_{e:03d}.json").read_text()) for e in (1, 2)]
    assert not (run_dir / "safeclip" / "epoch_000.json").exists()  # the cross epoch has no split
    first, second = splits
    print({k: v for k, v in first.items() if k != "safe_keys"}, {k: v for k, v in second.items() if k != "safe_keys"})
    assert first["pairs"] == 3000 and first["safe_pairs"] == round(first["ratio"] * 3000)
    assert second["ratio"] == pytest.approx(min(0.85, first["ratio"] + 0.1))
    assert first["poisoned_in_safe"] / first["safe_pairs"] < first["poisoned"] / first["pairs"]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["safeclip"]["epoch"] == 2 and summary["asr"] is not None
    assert summary["safeclip"]["first_safe_pairs"] == first["safe_pairs"]
    assert summary["safeclip"]["first_poisoned_in_safe"] == first["poisoned_in_safe"]
    assert summary["safeclip"]["scoring_s_total"] == pytest.approx(first["scoring_s"] + second["scoring_s"], abs=0.02)
