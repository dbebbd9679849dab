"""An experiment run end to end on the small benchmark: a chain runs once, and a second invocation
reuses it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lightning_app.experiments import planning as planner
from lightning_app.experiments import runner
from lightning_app.experiments.expansion import expand
from lightning_app.experiments.loading import load_experiment


def test_a_chain_runs_once_and_a_second_invocation_reuses_it(tmp_path, small_benchmark, monkeypatch):
    import yaml

    small = {"data.init_args.embedded": None, "data.init_args.eval.directory": small_benchmark.eval_dir,
             "data.init_args.batch_size": 32, "trainer.enable_progress_bar": False, "trainer.max_epochs": 1}
    chain = {
        "name": "chain", "runs": str(tmp_path / "runs"), "seeds": [0],
        "stages": {
            "attack": {"config": "configs/embedded/badnet.yaml", "seed_keys": ["seed_everything", "data.init_args.poison.seed"],
                       "set": {**small, "data.init_args.train_shards": small_benchmark.pretrain_urls,
                               "data.init_args.poison.rate": 0.1}},
            "ft": {"config": "configs/embedded/ft.yaml", "from": "attack",
                   "set": {**small, "data.init_args.train_shards": small_benchmark.finetune_urls}},
        },
        "tables": [{"block": "chain", "rows": ["stage"], "columns": ["ca_top1", "asr", "cost"], "reference": "ft"}],
    }
    (tmp_path / "chain.yaml").write_text(yaml.safe_dump(chain))
    monkeypatch.setattr(runner, "SLOTS", tmp_path / "slots")
    experiment = load_experiment(tmp_path / "chain.yaml")
    rows = runner.run_experiment(experiment, update_docs=False)
    attack, ft = expand(experiment)
    assert [r["stage"] for r in rows] == ["attack", "ft"]
    ft_config = ft.run_dir.config
    assert ft_config["model"]["init_args"]["model"]["pretrained"] == str(attack.run_dir.checkpoint)
    assert ft_config["data"]["init_args"]["trigger_dir"] == str(attack.run_dir.trigger_dir)
    assert ft.run_dir.summary()["before"]["asr"] == pytest.approx(attack.run_dir.summary()["asr"], abs=0.02)
    results = [json.loads(line) for line in (Path(experiment.runs) / "results.jsonl").read_text().splitlines()]
    assert [r["run_dir"] for r in results] == [str(attack.run_dir), str(ft.run_dir)]
    assert results[1]["input_ca_top1"] == attack.run_dir.summary()["ca_top1"]
    assert results[1]["ca_change"] == pytest.approx(results[1]["ca_top1"] - results[1]["input_ca_top1"])
    assert (Path(experiment.runs) / "chain.md").exists() and (Path(experiment.runs) / "chain.png").exists()

    stamp = ft.run_dir.summary_path.stat().st_mtime_ns
    assert planner.plan(experiment).split()[0] == "reuse"
    runner.run_experiment(experiment, update_docs=False)
    assert ft.run_dir.summary_path.stat().st_mtime_ns == stamp
