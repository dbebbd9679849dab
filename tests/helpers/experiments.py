"""The toy experiments and fake finished runs the experiment runner's tests share."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

from lightning_app.experiments.expansion import pipeline_stage
from lightning_app.experiments.loading import load_experiment

TOY = """
name: toy
runs: {runs}
seeds: [0, 1]
stages:
  attack:
    config: configs/embedded/badnet.yaml
    seed_keys: [seed_everything, data.init_args.poison.seed]
  cleanclip:
    config: configs/embedded/cleanclip.yaml
    from: attack
  craft:
    config: configs/embedded/abd_craft.yaml
    from: attack
    report: false
  abd:
    config: configs/embedded/abd.yaml
    from: attack
    needs: [craft]
    set: {{model.init_args.patch_dir: "{{craft.run_dir}}/adversarial"}}
    cost_includes: [craft]
axes:
  attack:
    stages: [attack]
    values:
      badnet: {{config: configs/embedded/badnet.yaml}}
      blended: {{config: configs/embedded/clean.yaml, data.init_args.poison.rate: 0.1}}
  lr:
    stages: [cleanclip]
    key: model.init_args.optimizer.lr
    values: [1.0e-3, 2.0e-3]
tables:
  - block: toy
    rows: [attack, stage]
    columns: [ca_top1, asr, cost]
    reference: cleanclip
"""


def toy(tmp_path: Path, text: str = TOY):
    path = tmp_path / "toy.yaml"
    path.write_text(textwrap.dedent(text.format(runs=tmp_path / "runs")))
    experiment = load_experiment(path)
    experiment.archive = str(tmp_path / "results" / "toy.jsonl")
    return experiment


SELECTION = """
name: selection
runs: {runs}
seeds: [0, 1, 2]
stages:
  pretrain: {{config: configs/embedded/badnet.yaml}}
  ft: {{config: configs/embedded/ft.yaml, from: pretrain}}
  cleanclip: {{config: configs/embedded/cleanclip.yaml, from: pretrain}}
axes:
  objective: {{stages: [pretrain], key: model.init_args.objective, values: [mmcl, mmcl_ssl]}}
  lr: {{stages: [ft, cleanclip], key: model.init_args.optimizer.lr, values: [1.0e-3, 2.0e-3]}}
tables:
  - block: best
    stages: [ft, cleanclip]
    rows: [objective]
    columns: [found, ca_top1, asr, selected, candidates]
    select: {{maximise: ca_top1, where: asr, at_most: 0.05}}
    compare: [[mmcl, mmcl_ssl]]
    compare_axis: objective
    compare_on: [ca_top1]
    plot: runs
    colour_by: objective
"""


def _finish(run, summary: dict) -> None:
    """A run directory as the runner leaves it: its fingerprint with its inputs' digests, config, summary."""
    stage = pipeline_stage(run)
    run.run_dir.path.mkdir(parents=True, exist_ok=True)
    (run.run_dir.path / "stage.json").write_text(json.dumps({**stage.fingerprint(), **stage.inputs_fingerprint()}))
    run.run_dir.config_path.write_text(
        "model: {init_args: {model: {name: tiny}}}\ndata: {init_args: {poison: {rate: 0.05, seed: 0}}}\n")
    (run.run_dir.path / "summary.json").write_text(json.dumps(summary))
