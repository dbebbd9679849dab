"""The experiment runner: expansion of stages × axes × seeds, references between runs, the seeds'
intervals, reuse and refusal of run directories, and (slow) a real chain run twice."""

from __future__ import annotations

import dataclasses
import json
import math
import textwrap
from pathlib import Path

import pytest

from lightning_app.experiments import planning as planner
from lightning_app.experiments import runner
from lightning_app.experiments.expansion import command_line, expand, pipeline_stage, resolve, restrict_axes
from lightning_app.experiments.loading import load_experiment
from lightning_app.experiments.statistics import Interval, interval
from lightning_app.experiments.tables import render_table
from lightning_app.pipelines import run_stage

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


def test_axes_and_seeds_expand_to_the_exact_runs_with_their_dependencies(tmp_path):
    runs = expand(toy(tmp_path))
    ids = [run.id for run in runs]
    per_seed = ["attack[attack=badnet]", "attack[attack=blended]",
                "cleanclip[attack=badnet,lr=0.001]", "cleanclip[attack=badnet,lr=0.002]",
                "cleanclip[attack=blended,lr=0.001]", "cleanclip[attack=blended,lr=0.002]",
                "craft[attack=badnet]", "craft[attack=blended]", "abd[attack=badnet]", "abd[attack=blended]"]
    assert ids == [f"{i}@seed{s}" for s in (0, 1) for i in per_seed]
    by_id = {run.id: run for run in runs}
    abd = by_id["abd[attack=blended]@seed1"]
    assert {name: dep.id for name, dep in abd.deps.items()} == {
        "attack": "attack[attack=blended]@seed1", "craft": "craft[attack=blended]@seed1"}
    assert by_id["attack[attack=blended]@seed1"].config == "configs/embedded/clean.yaml"
    assert by_id["attack[attack=blended]@seed1"].settings == {
        "data.init_args.poison.rate": 0.1, "seed_everything": 1, "data.init_args.poison.seed": 1}
    assert by_id["cleanclip[attack=badnet,lr=0.002]@seed0"].settings["model.init_args.optimizer.lr"] == 2e-3
    assert str(by_id["cleanclip[attack=badnet,lr=0.002]@seed0"].run_dir).endswith("cleanclip/attack=badnet,lr=0.002/seed0")


def test_a_stage_restricted_to_some_axis_values_runs_only_there(tmp_path):
    restricted = TOY.replace("    cost_includes: [craft]\n", "    cost_includes: [craft]\n    where: {{attack: [blended]}}\n")
    ids = [run.id for run in expand(toy(tmp_path, restricted))]
    assert [i for i in ids if i.startswith("abd")] == ["abd[attack=blended]@seed0", "abd[attack=blended]@seed1"]
    assert "craft[attack=badnet]@seed0" in ids  # what it needs is not restricted with it
    experiment = toy(tmp_path, restricted)
    restrict_axes(experiment, ["attack=badnet"])
    with pytest.raises(ValueError, match=r"stage\(s\) \['abd'\] have no runs"):
        runner.select(experiment, expand(experiment), ["abd"])
    assert {run.stage.name for run in runner.select(experiment, expand(experiment), ["abd", "craft"])} == {"attack", "craft"}
    with pytest.raises(ValueError, match="stage 'abd': where attack"):
        toy(tmp_path, restricted.replace("[blended]", "[sig]"))
    with pytest.raises(ValueError, match="applies neither to the stage"):
        toy(tmp_path, restricted.replace("{{attack: [blended]}}", "{{lr: [0.001]}}"))


def test_runs_go_one_chain_at_a_time_each_after_what_it_needs(tmp_path):
    ids = [run.id for run in runner.by_chain(expand(toy(tmp_path)))]
    per_attack = ["attack[attack={a}]", "cleanclip[attack={a},lr=0.001]", "cleanclip[attack={a},lr=0.002]",
                  "craft[attack={a}]", "abd[attack={a}]"]
    assert ids == [f"{i.format(a=a)}@seed{s}" for s in (0, 1) for a in ("badnet", "blended") for i in per_attack]
    for path in sorted(Path("experiments").glob("*.yaml")):
        ordered = runner.by_chain(expand(load_experiment(path)))
        position = {run.id: i for i, run in enumerate(ordered)}
        assert all(position[dep.id] < position[run.id] for run in ordered for dep in run.deps.values()), path


def test_a_dependent_run_starts_from_its_parents_checkpoint_trigger_and_architecture(tmp_path):
    experiment = toy(tmp_path)
    abd = next(run for run in expand(experiment) if run.id == "abd[attack=badnet]@seed0")
    parent = abd.deps["attack"].run_dir
    parent.path.mkdir(parents=True)
    parent.config_path.write_text("model: {init_args: {model: {name: configs/models/tiny-vit32.json}}}\n")
    settings = resolve(abd)
    assert settings["model.init_args.model.pretrained"] == str(parent.checkpoint)
    assert settings["data.init_args.trigger_dir"] == str(parent.trigger_dir)
    assert settings["model.init_args.model.name"] == "configs/models/tiny-vit32.json"
    assert settings["model.init_args.patch_dir"] == f"{abd.deps['craft'].run_dir}/adversarial"
    args = command_line(settings)
    assert args[args.index("--seed_everything") + 1] == "0"


def test_a_config_reference_to_a_mapping_becomes_one_setting_per_leaf(tmp_path):
    experiment = toy(tmp_path, TOY.replace("    cost_includes: [craft]", textwrap.indent(textwrap.dedent("""\
        cost_includes: [craft]
      ubt:
        config: configs/embedded/ubt_one_fit.yaml
        from: attack
        set: {{model.init_args.discover.poison: "{{attack.config:data.init_args.poison}}"}}"""), "  ")))
    ubt = next(run for run in expand(experiment) if run.stage.name == "ubt")
    parent = ubt.deps["attack"].run_dir
    parent.path.mkdir(parents=True)
    parent.config_path.write_text(
        "model: {init_args: {model: {name: tiny}}}\ndata: {init_args: {poison: {rate: 0.05, count: null, seed: 0}}}\n")
    settings = resolve(ubt)
    assert settings["model.init_args.discover.poison.rate"] == 0.05
    assert settings["model.init_args.discover.poison.seed"] == 0
    assert "model.init_args.discover.poison.count" not in settings  # None keeps the default


@pytest.mark.parametrize("text, message", [
    (TOY.replace("from: attack\n    report", "from: nowhere\n    report"), "unknown stage 'nowhere'"),
    (TOY.replace("configs/embedded/cleanclip.yaml", "configs/embedded/missing.yaml"), "missing.yaml does not exist"),
    (TOY.replace("    key: model.init_args.optimizer.lr\n", ""), "without a `key`"),
    (TOY.replace("rows: [attack, stage]", "rows: [attack, colour]"), "'colour'"),
    (TOY.replace("    report: false", "    reprot: false"), "unknown key"),
    # names become path components: none may climb out of runs/ or results/
    (TOY.replace("name: toy", "name: ../../outside"), "experiment name '../../outside' is not a safe path component"),
    (TOY.replace("  cleanclip:\n", "  ../escape:\n").replace("reference: cleanclip", "reference: ../escape")
     .replace("[cleanclip]", "['../escape']"), "stage name '../escape' is not a safe"),
    (TOY.replace("      blended: {{", "      /etc: {{"), "axis 'attack' value '/etc' is not a safe"),
    (TOY.replace("[1.0e-3, 2.0e-3]", "[1.0e-3, ..]"), "axis 'lr' value '..' is not a safe"),
    (TOY.replace("block: toy", "block: ../toy"), "table block '../toy' is not a safe"),
])
def test_a_bad_experiment_file_is_refused_naming_the_key(tmp_path, text, message):
    with pytest.raises(ValueError, match=message):
        toy(tmp_path, text)


def test_intervals_on_hand_made_numbers():
    # n = 3: mean 2, sample sd 1, t(0.975, 2) = 4.302653: half-width 4.302653 / sqrt(3) = 2.484138
    three = interval([1.0, 2.0, 3.0])
    assert three.n == 3 and three.kind == "t95"
    assert three.mean == pytest.approx(2.0)
    assert three.high - three.mean == pytest.approx(4.302653 / math.sqrt(3), rel=1e-6)
    assert three.format(2) == "2.00 ± 2.48"
    two = interval([0.5, 0.25, None])
    assert (two.kind, two.low, two.high, two.format(2)) == ("range", 0.25, 0.5, "0.38 [0.25–0.50]")
    assert interval([0.7]).format() == "0.700" and interval([]) is None
    assert Interval(0.1, 0.05, 0.15, 3).separated_from(Interval(0.3, 0.2, 0.4, 3))
    assert not Interval(0.1, 0.05, 0.25, 3).separated_from(Interval(0.3, 0.2, 0.4, 3))


def test_a_table_whose_rows_have_fewer_seeds_than_the_experiment_says_which(tmp_path):
    from lightning_app.experiments.docs_blocks import write_views
    from lightning_app.experiments.tables import seeds_line

    experiment = toy(tmp_path)
    run = {"ca_top1": 0.9, "asr": 0.1}
    rows = [{**run, "stage": "cleanclip", "attack": "badnet", "lr": "0.001", "seed": seed} for seed in (0, 1)]
    assert seeds_line(experiment, experiment.tables[0], rows) == ""
    rows += [{**run, "stage": "abd", "attack": attack, "seed": 1} for attack in ("badnet", "blended")]
    line = seeds_line(experiment, experiment.tables[0], rows)
    assert line == "Seeds of each row's n (of 0, 1): seeds 0, 1 (1 row); seed 1 (2 rows)."
    assert line in write_views(experiment, rows)[0].read_text()
    experiment.seeds = [1, 0]  # as `--seeds 1 0` leaves them
    assert seeds_line(experiment, experiment.tables[0], rows).startswith("Seeds of each row's n (of 0, 1): ")


def test_the_table_shows_mean_and_interval_per_row_and_the_cost_paired_by_seed(tmp_path):
    experiment = toy(tmp_path)
    rows = []
    for seed, (clean_time, abd_time, asr) in enumerate([(100, 50, 0.1), (200, 150, 0.2), (100, 80, 0.3)]):
        rows.append({"stage": "cleanclip", "attack": "badnet", "lr": "0.001", "seed": seed, "ca_top1": 0.9,
                     "asr": 0.05, "cost_s": clean_time})
        rows.append({"stage": "abd", "attack": "badnet", "seed": seed, "ca_top1": 0.8, "asr": asr, "cost_s": abd_time})
    lines = render_table(experiment, experiment.tables[0], rows).splitlines()
    assert lines[0] == "| stage | attack | n | CA top-1 | ASR | cost (× cleanclip) |".replace("stage | attack", "attack | stage")
    abd = next(line for line in lines if "| abd |" in line)
    ratios = interval([0.5, 0.75, 0.8])
    assert abd == f"| badnet | abd | 3 | 0.800 ± 0.000 | 0.200 ± {interval([0.1, 0.2, 0.3]).high - 0.2:.3f} | {ratios.format(2)} |"


def _fake_finished(run, fingerprint: dict | None, summary: dict | None = None) -> None:
    run.run_dir.path.mkdir(parents=True, exist_ok=True)
    (run.run_dir.path / "stage.json").write_text(json.dumps(fingerprint))
    (run.run_dir.path / "summary.json").write_text(json.dumps(summary or {"asr": 0.5, "wall_time_s": 1.0}))
    run.run_dir.config_path.write_text("model: {init_args: {model: {name: tiny}}}\n")


def test_finished_runs_are_reused_interrupted_ones_resumed_and_another_configs_refused(tmp_path):
    experiment = toy(tmp_path)
    runs = {run.id: run for run in expand(experiment)}
    attack, clean = runs["attack[attack=badnet]@seed0"], runs["cleanclip[attack=badnet,lr=0.001]@seed0"]
    _fake_finished(attack, pipeline_stage(attack).fingerprint())
    assert planner.status(attack) == "reuse"
    assert run_stage(pipeline_stage(attack)) == {"asr": 0.5, "wall_time_s": 1.0}  # nothing trained

    clean.run_dir.checkpoints.mkdir(parents=True)
    (clean.run_dir.checkpoints / "last.ckpt").write_bytes(b"")
    (clean.run_dir.path / "stage.json").write_text(json.dumps(pipeline_stage(clean).fingerprint()))
    assert planner.status(clean) == "resume"

    other = runs["attack[attack=blended]@seed0"]
    made = pipeline_stage(other).fingerprint()
    _fake_finished(other, {**made, "values": {**made["values"], "seed_everything": 7}})
    assert planner.status(other).startswith("refuse")
    with pytest.raises(ValueError, match="remove the directory"):
        run_stage(pipeline_stage(other))
    plan = planner.plan(experiment, only=["cleanclip"])
    assert "abd" not in plan and plan.count("attack[") == 4  # --only brings the runs it needs, not the others
    # what the runner refuses to reuse, a report neither shows nor archives as this experiment's run
    from lightning_app.experiments.archive import Summaries, archive_runs, load_archive
    assert Summaries(experiment).get(other) is None and Summaries(experiment).get(attack) is not None
    archive_runs(experiment, [attack, other])
    assert set(load_archive(experiment.archive)) == {str(attack.run_dir)}


def test_only_names_a_stage_of_the_experiment(tmp_path):
    with pytest.raises(ValueError, match="unknown stage"):
        runner.select(experiment := toy(tmp_path), expand(experiment), ["nope"])


@pytest.mark.slow
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
    monkeypatch.setattr(runner, "LOCK", tmp_path / "lock")
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


@pytest.mark.parametrize("path", sorted(Path("experiments").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_experiment_file_loads_and_expands(path):
    experiment = load_experiment(path)
    runs = expand(experiment)
    assert len(runs) == len({run.id for run in runs}) == len({str(run.run_dir) for run in runs}) > 0
    assert {run.seed for run in runs} == set(experiment.seeds)


def test_ubt_study_replays_the_attacks_data_and_chains_its_stages(tmp_path):
    experiment = load_experiment("experiments/ubt.yaml")
    experiment.runs = str(tmp_path)
    runs = {run.id: run for run in expand(experiment)}
    attack = runs["attack[case=badnet_vit]@seed1"].run_dir
    attack.path.mkdir(parents=True)
    attack.config_path.write_text(
        "model: {init_args: {model: {name: configs/models/tiny-vit32.json}}}\n"
        "data: {init_args: {train_shards: 'd/{0..3}.tar', poison: {rate: 0.05, target: star, count: null, seed: 1}}}\n")
    detect = resolve(runs["detect[case=badnet_vit]@seed1"])
    assert detect["data.init_args.train_shards"] == "d/{0..3}.tar"
    assert (detect["data.init_args.poison.target"], detect["data.init_args.poison.seed"]) == ("star", 1)
    assert "data.init_args.poison.count" not in detect and "model.init_args.overfit" not in detect  # one pass
    assert resolve(runs["detect_overfit[case=badnet_vit]@seed1"])["model.init_args.overfit"] is True
    unlearn = runs["unlearn[case=badnet_vit]@seed1"]
    assert unlearn.config == "configs/embedded/ubt_unlearn_vit.yaml"
    assert resolve(unlearn)["model.init_args.suspicious_dir"] == f"{runs['detect[case=badnet_vit]@seed1'].run_dir}/ubt"
    assert unlearn.stage.cost_includes == ["detect"]
    control = resolve(runs["control[case=badnet_vit]@seed1"])
    assert control["model.init_args.lambda_forget"] == 0
    assert control["model.init_args.model.name"] == "configs/models/tiny-vit32.json"
    assert runs["unlearn[case=badnet]@seed1"].config == "configs/embedded/ubt_unlearn.yaml"


def test_a_stage_that_poisons_a_clean_model_takes_its_checkpoint_but_brings_its_own_trigger(tmp_path):
    experiment = load_experiment("experiments/badclip.yaml")
    experiment.runs = str(tmp_path)
    runs = {run.id: run for run in expand(experiment)}
    clean = runs["clean@seed0"].run_dir
    clean.path.mkdir(parents=True)
    clean.config_path.write_text("model: {init_args: {model: {name: configs/models/tiny-rn32.json}}}\n")
    badclip = resolve(runs["attack@seed0"])
    assert badclip["model.init_args.model.pretrained"] == str(clean.checkpoint)
    assert "data.init_args.trigger_dir" not in badclip
    assert badclip["data.init_args.trigger.init_args.patch"] == f"{runs['patch@seed0'].run_dir}/badclip/patch.png"
    badnet = resolve(runs["badnet_ft@seed0"])
    assert badnet["data.init_args.trigger.class_path"] == "datamodules.BadNet"
    attack = runs["attack@seed0"].run_dir
    attack.path.mkdir(parents=True)
    attack.config_path.write_text("model: {init_args: {model: {name: configs/models/tiny-rn32.json}}}\n")
    defense = resolve(runs["cleanclip@seed0"])
    assert defense["data.init_args.trigger_dir"] == str(runs["attack@seed0"].run_dir.trigger_dir)


def test_comparisons_claim_an_ordering_only_where_the_intervals_separate(tmp_path):
    from lightning_app.experiments.comparisons import comparisons

    experiment = toy(tmp_path, TOY.replace("    reference: cleanclip\n",
                                           "    reference: cleanclip\n    compare: [[abd, cleanclip]]\n"))
    rows = []
    for seed, (abd_asr, clean_asr, abd_ca) in enumerate([(0.10, 0.50, 0.90), (0.12, 0.52, 0.80), (0.11, 0.51, 0.99)]):
        rows.append({"stage": "cleanclip", "attack": "badnet", "lr": "0.001", "seed": seed, "asr": clean_asr, "ca_top1": 0.9})
        rows.append({"stage": "abd", "attack": "badnet", "seed": seed, "asr": abd_asr, "ca_top1": abd_ca})
    lines = comparisons(experiment, experiment.tables[0], rows)
    assert len(lines) == 2
    assert lines[0].startswith("- badnet: ASR of abd 0.110 ± ") and "(n = 3, 3): lower, separated;" in lines[0]
    assert lines[0].endswith("paired by seed, the difference -0.400 ± 0.000 (n = 3; lower on 3, higher on 0): lower, "
                             "its interval excludes 0")
    assert "not separated; paired" in lines[1] and lines[1].endswith("its interval includes 0")  # CA 0.80-0.99 vs 0.9
    assert "(n = 3; lower on 1, higher on 1)" in lines[1]  # 0.90 against 0.9 is neither
    two_seeds = [r for r in rows if r["seed"] < 2]
    assert all(line.endswith("no ordering claimed") for line in comparisons(experiment, experiment.tables[0], two_seeds))
    # the poisoned model of each seed sets most of both defenses' ASR: the sides' intervals overlap, while
    # ABD is below CleanCLIP on every seed by about the same amount
    for row in rows:
        if row["stage"] == "cleanclip":
            row["asr"] = [0.10, 0.50, 0.90][row["seed"]]
        else:
            row["asr"] = [0.06, 0.44, 0.86][row["seed"]]
    asr = comparisons(experiment, experiment.tables[0], rows)[0]
    assert "(n = 3, 3): not separated; paired by seed, the difference -0.047 ± 0.029 (n = 3; lower on 3, higher on 0): " \
           "lower, its interval excludes 0" in asr
    shared_two = [r for r in rows if not (r["stage"] == "abd" and r["seed"] == 2)] + \
        [{"stage": "abd", "attack": "badnet", "seed": 3, "asr": 0.5, "ca_top1": 0.9}]
    assert "paired" not in comparisons(experiment, experiment.tables[0], shared_two)[0]  # 2 seeds in common
    with pytest.raises(ValueError, match="compare"):
        toy(tmp_path, TOY.replace("    reference: cleanclip\n", "    reference: cleanclip\n    compare: [[abd, nope]]\n"))


def test_a_detector_table_reports_the_auroc_of_its_score_between_poisoned_and_clean_models(tmp_path):
    from lightning_app.experiments.comparisons import detector_auroc, model_detection

    assert detector_auroc([0.01, 0.02], [0.10, 0.09], "lower") == 1.0
    assert detector_auroc([0.01, 0.20], [0.10], "lower") == 0.5
    assert detector_auroc([0.10], [0.10], "lower") == 0.5  # a tie counts a half
    assert detector_auroc([0.01, 0.02], [0.10, 0.09], "higher") == 0.0

    text = TOY.replace("    reference: cleanclip\n",
                       "    reference: cleanclip\n    detector: {{score: mask, clean: attack, poisoned_when: lower}}\n")
    experiment = toy(tmp_path, text)
    rows = [{"stage": "attack", "attack": "badnet", "seed": s, "mask": m} for s, m in enumerate([0.10, 0.08])]
    rows += [{"stage": "abd", "attack": "badnet", "seed": s, "mask": m} for s, m in enumerate([0.01, 0.09])]
    rows += [{"stage": "cleanclip", "attack": "badnet", "lr": "0.001", "seed": s, "mask": m} for s, m in enumerate([0.2, 0.3])]
    lines = model_detection(experiment, experiment.tables[0], rows)
    assert lines[0].startswith("AUROC of mask as a detector of the poisoned model (lower means poisoned")
    assert lines[2] == "- badnet · cleanclip against attack: 0.000 (2 and 2 models)"
    assert lines[3] == "- badnet · abd against attack: 0.750 (2 and 2 models)"  # 0.09 is above 0.08 only
    assert lines[4] == "- every poisoned model above against attack: 0.375 (4 and 2 models)"
    with pytest.raises(ValueError, match="detector"):
        toy(tmp_path, text.replace("poisoned_when: lower", "poisoned_when: sideways"))


def test_where_keeps_only_the_named_values_of_an_axis():
    experiment = load_experiment("experiments/defenses.yaml")
    restrict_axes(experiment, ["attack=badnet_stripes,multi_target"])
    ids = [run.id for run in expand(experiment)]
    by_attack = [run for run in ids if "[" in run]
    # every stage but the clean control and its inversion
    assert len(by_attack) == len(experiment.seeds) * 2 * (len(experiment.stages) - 2)
    assert {run.split("[")[1].split("]")[0] for run in by_attack} == {"attack=badnet_stripes", "attack=multi_target"}
    assert sorted(set(ids) - set(by_attack)) == sorted(f"{stage}@seed{s}" for s in experiment.seeds
                                                       for stage in ("clean", "invert_clean"))
    with pytest.raises(ValueError, match="no value"):
        restrict_axes(experiment, ["attack=blended_text"])
    with pytest.raises(ValueError, match="no axis"):
        restrict_axes(experiment, ["victim=clean"])


def test_a_table_by_axis_alone_renders_without_comparisons(tmp_path):
    from lightning_app.experiments.comparisons import comparisons
    from lightning_app.experiments.tables import render_table

    experiment = load_experiment("experiments/defenses.yaml")
    table = next(t for t in experiment.tables if t.block == "structured-attacks")
    assert "stage" not in table.rows and not table.compare
    rows = [{"stage": "attack", "attack": "multi_target", "seed": 0, "asr": 0.9, "ca_top1": 0.99,
             "asr_0_badnet": 0.8, "trigger": "multi (badnet, blended, sig) → triangle, star, heart"}]
    assert comparisons(experiment, table, rows) == []
    line = render_table(experiment, table, rows).splitlines()[2]
    assert line.startswith("| multi_target | 1 | multi (badnet, blended, sig)") and "0.800" in line

    table = next(t for t in experiment.tables if t.block == "multi-trigger-defenses")
    rows = [{"stage": "ubt_dense", "attack": "multi_target", "seed": 0, "asr": 0.5, "ca_top1": 0.99, "asr_2_sig": 0.0,
             "unlearned_2_sig": 125, "unlearned_1_blended": 75, "unlearned_0_badnet": 0, "unlearned_clean": 0}]
    header, _, line = render_table(experiment, table, rows).splitlines()[:3]
    assert "| unlearned: 2_sig | unlearned: clean |" in header
    assert line.endswith("| 0.000 | 0 | 75 | 125 | 0 |")


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


def test_the_selection_rule_keeps_per_seed_the_best_run_under_the_bound_and_says_when_none_is(tmp_path):
    from lightning_app.experiments.comparisons import comparisons
    from lightning_app.experiments.docs_blocks import write_views
    from lightning_app.experiments.tables import render_table

    experiment = toy(tmp_path, SELECTION)
    table = experiment.tables[0]
    rows = []
    for seed in range(3):
        # mmcl: the higher-lr CleanCLIP run is best under the bound; FT is better but above it
        for stage, lr, ca, asr in [("ft", "0.001", 0.95, 0.40), ("cleanclip", "0.001", 0.80 + seed / 100, 0.04),
                                   ("cleanclip", "0.002", 0.85 + seed / 100, 0.05)]:
            rows.append({"stage": stage, "objective": "mmcl", "lr": lr, "seed": seed, "ca_top1": ca, "asr": asr})
        # mmcl_ssl: only seed 0 gets below the bound, at a low CA
        for stage, lr in [("ft", "0.001"), ("cleanclip", "0.002")]:
            asr = 0.03 if (seed, stage) == (0, "cleanclip") else 0.6
            rows.append({"stage": stage, "objective": "mmcl_ssl", "lr": lr, "seed": seed, "ca_top1": 0.5, "asr": asr})
    lines = render_table(experiment, table, rows).splitlines()
    assert "seeds with ASR ≤ 0.05" in lines[0] and "chosen run" in lines[0]
    assert "runs chosen from (per seed)" in lines[0]
    assert lines[2].startswith("| mmcl | 3 | 3/3 | 0.860 ± ") and lines[2].endswith("| cleanclip · lr 0.002 | 3 |")
    assert lines[3].startswith("| mmcl_ssl | 1 | 1/3 | 0.500 | 0.030 |") and lines[3].endswith("| 2 |")
    # a seed whose grid has not finished: its choice is among fewer runs, which the row says
    unfinished = [r for r in rows if not (r["seed"] == 2 and r["objective"] == "mmcl" and r["lr"] == "0.002")]
    assert render_table(experiment, table, unfinished).splitlines()[2].endswith("| 2–3 |")
    assert comparisons(experiment, table, rows) == [
        "- CA top-1 of mmcl 0.860 ± 0.025 vs mmcl_ssl 0.500 (n = 3, 1): fewer than 3 seeds: no ordering claimed"]
    none = [r for r in rows if not (r["objective"] == "mmcl_ssl" and r["asr"] < 0.05)]
    assert render_table(experiment, table, none).splitlines()[3] == "| mmcl_ssl | 0 | 0/3 | – | – | none | 1–2 |"
    assert comparisons(experiment, table, none)[0] == ("- mmcl_ssl has no run meeting the rule in any seed: no ordering claimed")
    only_low_lr = toy(tmp_path, SELECTION.replace("    plot: runs\n", "    plot: runs\n    where: {{lr: [1.0e-3]}}\n"))
    assert render_table(experiment, only_low_lr.tables[0], rows).splitlines()[2].startswith("| mmcl | 3 | 3/3 | 0.810 ± ")
    with pytest.raises(ValueError, match="where lr"):
        toy(tmp_path, SELECTION.replace("    plot: runs\n", "    plot: runs\n    where: {{lr: [5.0e-3]}}\n"))
    written = write_views(experiment, rows)
    assert [p.name for p in written] == ["best.md", "best.png"]
    with pytest.raises(ValueError, match="select has unknown key"):
        toy(tmp_path, SELECTION.replace("at_most: 0.05", "below: 0.05"))
    with pytest.raises(ValueError, match="two values of 'objective'"):
        toy(tmp_path, SELECTION.replace("[[mmcl, mmcl_ssl]]", "[[mmcl, siglip]]"))


def test_a_comparison_names_the_stage_by_its_label_and_its_settings_by_their_axis(tmp_path):
    from lightning_app.experiments.comparisons import comparisons

    per_setting = SELECTION.replace("  cleanclip: {{config: configs/embedded/cleanclip.yaml, from: pretrain}}",
                                    "  cleanclip: {{config: configs/embedded/cleanclip.yaml, from: pretrain, label: CleanCLIP}}")
    per_setting = per_setting.replace("    rows: [objective]\n    columns: [found, ca_top1, asr, selected, candidates]\n"
                                      "    select: {{maximise: ca_top1, where: asr, at_most: 0.05}}\n",
                                      "    rows: [stage, objective, lr]\n    columns: [asr]\n")
    per_setting = per_setting.replace("compare_on: [ca_top1]", "compare_on: [asr]")
    experiment = toy(tmp_path, per_setting)
    rows = [{"stage": "cleanclip", "objective": objective, "lr": "0.002", "seed": seed, "asr": asr + seed / 100}
            for seed in range(3) for objective, asr in [("mmcl", 0.01), ("mmcl_ssl", 0.30)]]
    assert comparisons(experiment, experiment.tables[0], rows)[0].startswith(
        "- CleanCLIP · lr 0.002: ASR of mmcl 0.020 ± 0.025 vs mmcl_ssl 0.310 ± 0.025 (n = 3, 3): lower, separated")


def test_the_docs_get_the_runs_plot_as_a_figure_linked_from_each_block(tmp_path):
    from lightning_app.experiments.docs_blocks import write_views
    from lightning_app.experiments.plots import plot_panels

    doc, figure = tmp_path / "docs" / "results.md", tmp_path / "docs" / "figures" / "best.png"
    experiment = toy(tmp_path, SELECTION.replace("    plot: runs\n", f"    plot: runs\n    files: [{doc}]\n"
                                                                         f"    figure: {figure}\n"))
    rows = [{"stage": stage, "objective": objective, "lr": lr, "seed": 0, "ca_top1": 0.8, "asr": 0.01}
            for stage in ("ft", "cleanclip") for objective in ("mmcl", "mmcl_ssl") for lr in ("0.001", "0.002")]
    write_views(experiment, rows)
    assert not figure.exists()  # only --update-docs writes into the docs
    written = write_views(experiment, rows, update_docs=True)
    assert figure in written and figure.read_bytes() == (tmp_path / "runs" / "best.png").read_bytes()
    assert "![best: CA against ASR](figures/best.png)\n<!-- /results:best -->" in doc.read_text()
    # one panel per value of the first row key that is not the colour: two tiers' runs never share axes
    table = experiment.tables[0]
    table.rows = ["lr", "objective"]
    assert plot_panels(table, rows) == ("lr", ["0.001", "0.002"])
    assert plot_panels(table, [r for r in rows if r["lr"] == "0.001"]) == (None, [""])
    with pytest.raises(ValueError, match="figure .* needs a plot"):
        toy(tmp_path, SELECTION.replace("    plot: runs\n", "    plot: false\n    figure: docs/best.png\n"))


def test_docs_get_a_table_only_once_one_of_its_stages_has_run(tmp_path):
    from lightning_app.experiments.docs_blocks import write_views

    doc = tmp_path / "results.md"
    experiment = toy(tmp_path, SELECTION.replace("    plot: runs\n", f"    plot: false\n    files: [{doc}]\n"))
    write_views(experiment, [{"stage": "pretrain", "objective": "mmcl", "seed": 0, "ca_top1": 0.9, "asr": 0.9}],
                update_docs=True)
    assert not doc.exists() and (tmp_path / "runs" / "best.md").exists()
    write_views(experiment, [{"stage": "cleanclip", "objective": "mmcl", "lr": "0.001", "seed": 0, "ca_top1": 0.8,
                              "asr": 0.01}], update_docs=True)
    assert "<!-- results:best -->" in doc.read_text() and "| mmcl | 1 | 1/1 | 0.800 |" in doc.read_text()



def test_docs_update_refuses_to_drop_rows_or_seeds_the_docs_quote_unless_asked(tmp_path):
    from lightning_app.experiments.docs_blocks import write_views

    doc = tmp_path / "results.md"
    experiment = toy(tmp_path, SELECTION.replace("    plot: runs\n", f"    plot: false\n    files: [{doc}]\n"))
    run = {"stage": "cleanclip", "lr": "0.001", "ca_top1": 0.8, "asr": 0.01}
    both = [{**run, "objective": objective, "seed": seed} for objective in ("mmcl", "mmcl_ssl") for seed in (0, 1)]
    write_views(experiment, both, update_docs=True)
    quoted = doc.read_text()
    assert "| mmcl | 2 |" in quoted and "| mmcl_ssl | 2 |" in quoted
    fewer = [row for row in both if row["objective"] == "mmcl" or row["seed"] == 0]
    with pytest.raises(ValueError, match=r"results.md \[best\] mmcl_ssl: n = 2 → 1"):
        write_views(experiment, fewer, update_docs=True)
    with pytest.raises(ValueError, match=r"\[best\] mmcl_ssl: n = 2 → 0"):
        write_views(experiment, [row for row in both if row["objective"] == "mmcl"], update_docs=True)
    assert doc.read_text() == quoted  # nothing written when refused
    assert "mmcl_ssl" not in (tmp_path / "runs" / "best.md").read_text()  # RUNS/ is written either way
    write_views(experiment, both + [{**run, "objective": "mmcl", "seed": 2}], update_docs=True)  # more is fine
    assert "| mmcl | 3 |" in doc.read_text()
    write_views(experiment, fewer, update_docs=True, drop_rows=True)
    assert "| mmcl_ssl | 1 |" in doc.read_text() and "| mmcl | 2 |" in doc.read_text()

def test_docs_update_of_named_blocks_leaves_the_others_and_their_quoted_rows_alone(tmp_path, capsys):
    from lightning_app.experiments.__main__ import main
    from lightning_app.experiments.docs_blocks import write_views

    doc = tmp_path / "results.md"
    text = SELECTION.replace("    plot: runs\n", f"    plot: false\n    files: [{doc}]\n")
    second = text[text.index("  - block: best"):].replace("block: best", "block: second")
    experiment = toy(tmp_path, text + second)
    run = {"stage": "cleanclip", "lr": "0.001", "ca_top1": 0.8, "asr": 0.01}
    both = [{**run, "objective": objective, "seed": 0} for objective in ("mmcl", "mmcl_ssl")]
    write_views(experiment, both, update_docs=True, blocks=["best"])
    quoted = doc.read_text()
    assert "| mmcl_ssl | 1 |" in quoted and "results:second" not in quoted
    # the runs `best` quotes are elsewhere now; `second` gets this machine's two seeds of mmcl
    here = [{**run, "objective": "mmcl", "seed": seed, "asr": 0.02} for seed in (0, 1)]
    with pytest.raises(ValueError, match=r"\[best\] mmcl_ssl: n = 1 → 0"):
        write_views(experiment, here, update_docs=True)
    write_views(experiment, here, update_docs=True, blocks=["second"])
    updated = doc.read_text()
    assert updated != quoted
    assert updated.startswith(quoted.rstrip("\n"))  # best as it was
    assert "| mmcl | 2 |" in updated.split("<!-- results:second -->")[1]
    with pytest.raises(ValueError, match=r"--blocks \['thrid'\]: .*\['best', 'second'\]"):
        write_views(experiment, here, update_docs=True, blocks=["thrid"])
    # a misspelt block fails before a run starts: --dry-run would print the plan and return 0 otherwise
    assert main(["run", str(tmp_path / "toy.yaml"), "--dry-run", "--update-docs", "--blocks", "thrid"]) == 1
    assert "--blocks ['thrid']" in capsys.readouterr().err


UBT_STAGE = TOY.replace("    cost_includes: [craft]", textwrap.indent(textwrap.dedent("""\
    cost_includes: [craft]
  ubt:
    config: configs/embedded/ubt_one_fit.yaml
    from: attack
    set: {{model.init_args.discover.poison: "{{attack.config:data.init_args.poison}}"}}"""), "  "))


def _finish(run, summary: dict) -> None:
    """A run directory as the runner leaves it: its fingerprint with its inputs' digests, config, summary."""
    stage = pipeline_stage(run)
    run.run_dir.path.mkdir(parents=True, exist_ok=True)
    (run.run_dir.path / "stage.json").write_text(json.dumps({**stage.fingerprint(), **stage.inputs_fingerprint()}))
    run.run_dir.config_path.write_text(
        "model: {init_args: {model: {name: tiny}}}\ndata: {init_args: {poison: {rate: 0.05, seed: 0}}}\n")
    (run.run_dir.path / "summary.json").write_text(json.dumps(summary))


def test_the_archive_reports_runs_whose_directories_are_gone_while_it_still_matches(tmp_path):
    import shutil

    from lightning_app.experiments.archive import load_archive
    from lightning_app.experiments.rows import collect

    experiment = toy(tmp_path, UBT_STAGE)
    runs = {run.id: run for run in expand(experiment)}
    attack, craft = runs["attack[attack=badnet]@seed0"], runs["craft[attack=badnet]@seed0"]
    abd, ubt = runs["abd[attack=badnet]@seed0"], runs["ubt[attack=badnet]@seed0"]
    for run, asr in [(attack, 0.98), (craft, None), (abd, 0.2), (ubt, 0.01)]:
        _finish(run, {"ca_top1": 0.9, "asr": asr, "wall_time_s": 10.0})
    here = collect(experiment, list(runs.values()), archive=True)
    assert {row["source"] for row in here} == {"run_dir"} and len(here) == 4
    assert set(load_archive(experiment.archive)) == {str(r.run_dir) for r in (attack, craft, abd, ubt)}

    shutil.rmtree(ubt.run_dir.path)  # one run pruned, its inputs still here
    assert [row["source"] for row in collect(experiment, [attack, ubt])] == ["run_dir", "archive"]
    shutil.rmtree(tmp_path / "runs")  # a fresh checkout: the code and the archive, no run directories
    elsewhere = collect(experiment, list(runs.values()))
    assert {row["source"] for row in elsewhere} == {"archive"}
    strip = ("source",)
    assert [{k: v for k, v in r.items() if k not in strip} for r in elsewhere] == \
        [{k: v for k, v in r.items() if k not in strip} for r in here]
    assert next(r for r in elsewhere if r["stage"] == "abd")["cost_s"] == 20.0  # its crafting, from the archive too
    assert "reported from" in planner.plan(experiment, only=["ubt"])  # it runs again if asked, reported until then

    # the experiment now asks for another recipe: that stage's record no longer describes it
    changed = toy(tmp_path, UBT_STAGE.replace("{{craft.run_dir}}/adversarial", "{{craft.run_dir}}/other"))
    assert {row["stage"] for row in collect(changed, expand(changed))} == {"attack", "craft", "ubt"}

    # the attack was made again (another summary): what was made from the old one is not reported
    _finish(attack, {"ca_top1": 0.9, "asr": 0.97, "wall_time_s": 11.0})
    assert {row["stage"] for row in collect(experiment, list(runs.values()))} == {"attack"}  # craft too


def test_an_input_made_again_with_the_same_result_keeps_what_was_made_from_it(tmp_path):
    import shutil

    from lightning_app.experiments.archive import archive_runs, load_archive
    from lightning_app.experiments.rows import collect

    experiment = toy(tmp_path, UBT_STAGE)
    experiment.seeds = [0]
    everything = {"attack", "craft", "abd", "ubt"}
    runs = {run.id: run for run in expand(experiment) if run.id in {f"{s}[attack=badnet]@seed0" for s in everything}}
    attack, craft = runs["attack[attack=badnet]@seed0"], runs["craft[attack=badnet]@seed0"]
    for run, asr in [(attack, 0.98), (craft, None), (runs["abd[attack=badnet]@seed0"], 0.2),
                     (runs["ubt[attack=badnet]@seed0"], 0.01)]:
        _finish(run, {"ca_top1": 0.9, "asr": asr, "wall_time_s": 10.0})
    archive_runs(experiment, list(runs.values()))
    archive = Path(experiment.archive)
    records = [json.loads(line) for line in archive.read_text().splitlines()]
    for record in records:  # archived before inputs' results were recorded: their bytes only
        results = record["stage"].pop("inputs_result_sha256", {})
        assert set(results) == set(record["stage"].get("inputs_sha256", {}))
    archive.write_text("".join(json.dumps(record) + "\n" for record in records))

    for run in runs.values():
        if run is not attack:
            shutil.rmtree(run.run_dir.path)  # reported from the archive from here on
    _finish(attack, {"ca_top1": 0.9, "asr": 0.98, "wall_time_s": 12.5})  # made again: same metrics, another time
    assert planner.status(craft) == "run"  # not refused: nothing of it is here
    assert {row["stage"] for row in collect(experiment, list(runs.values()))} == everything  # before archiving it
    archive_runs(experiment, [attack])
    assert load_archive(archive)[str(attack.run_dir)]["summary"]["wall_time_s"] == 12.5
    assert {row["stage"] for row in collect(experiment, list(runs.values()))} == everything
    shutil.rmtree(tmp_path / "runs")  # elsewhere, from the archive alone
    assert {row["stage"] for row in collect(experiment, list(runs.values()))} == everything

    _finish(attack, {"ca_top1": 0.9, "asr": 0.97, "wall_time_s": 12.5})  # made again with another result
    assert {row["stage"] for row in collect(experiment, list(runs.values()))} == {"attack"}
    archive_runs(experiment, [attack])
    shutil.rmtree(tmp_path / "runs")
    assert {row["stage"] for row in collect(experiment, list(runs.values()))} == {"attack"}


def test_a_damaged_archive_is_refused_naming_the_file_and_line(tmp_path):
    from lightning_app.experiments.archive import load_archive

    path = tmp_path / "toy.jsonl"
    path.write_text('{"run_dir": "runs/a", "summary": {}}\n{"summary": {}}\n')
    with pytest.raises(ValueError, match=r"toy.jsonl:2: not an archived run"):
        load_archive(path)


def test_report_archives_only_when_asked(tmp_path, monkeypatch):
    from lightning_app.experiments.__main__ import main
    from lightning_app.experiments.archive import load_archive

    experiment = toy(tmp_path)
    attack = next(run for run in expand(experiment) if run.id == "attack[attack=badnet]@seed0")
    _finish(attack, {"ca_top1": 0.9, "asr": 0.98, "wall_time_s": 10.0})
    monkeypatch.chdir(tmp_path)  # the archive's path, results/toy.jsonl, is relative like the runs'
    assert main(["report", experiment.path]) == 0 and not (tmp_path / "results").exists()
    assert main(["report", experiment.path, "--archive"]) == 0
    assert list(load_archive(tmp_path / "results" / "toy.jsonl")) == [str(attack.run_dir)]


def test_archiving_waits_for_another_invocation_archiving_the_same_file(tmp_path):
    import fcntl
    import threading

    from lightning_app.experiments.archive import archive_runs, load_archive

    experiment = toy(tmp_path)
    attack = next(run for run in expand(experiment) if run.id == "attack[attack=badnet]@seed0")
    _finish(attack, {"ca_top1": 0.9, "asr": 0.98, "wall_time_s": 10.0})
    archive = Path(experiment.archive)
    archive.parent.mkdir(parents=True, exist_ok=True)
    with open(archive.with_name(archive.name + ".lock"), "a") as held:  # another invocation is writing
        fcntl.flock(held, fcntl.LOCK_EX)
        writer = threading.Thread(target=archive_runs, args=(experiment, [attack]))
        writer.start()
        writer.join(timeout=1.0)
        assert writer.is_alive() and not archive.exists()
        fcntl.flock(held, fcntl.LOCK_UN)
    writer.join(timeout=10.0)
    assert not writer.is_alive() and list(load_archive(archive)) == [str(attack.run_dir)]


def test_each_run_is_archived_as_it_finishes_not_when_the_invocation_ends(tmp_path, monkeypatch):
    from lightning_app.experiments.archive import load_archive

    experiment = toy(tmp_path)
    experiment.seeds = [0]
    runs = {str(run.run_dir): run for run in expand(experiment)}
    finished = []

    def fake_run_stage(stage):
        if len(finished) == 2:
            raise KeyboardInterrupt  # the machine goes away during the third run
        _finish(runs[stage.run_dir], {"ca_top1": 0.9, "asr": 0.5, "wall_time_s": 1.0})
        finished.append(stage.run_dir)

    monkeypatch.setattr(runner, "LOCK", tmp_path / "lock")
    monkeypatch.setattr(runner, "run_stage", fake_run_stage)
    with pytest.raises(KeyboardInterrupt):
        runner.run_experiment(experiment, archive=True)
    assert sorted(load_archive(experiment.archive)) == sorted(finished) and len(finished) == 2
    # one chain at a time: the attack, then a run made from it, not the other attack
    assert [runs[str(path)].id for path in finished] == ["attack[attack=badnet]@seed0", "cleanclip[attack=badnet,lr=0.001]@seed0"]

    (tmp_path / "other").mkdir()
    unasked = toy(tmp_path / "other")
    unasked.seeds = [0]
    runs.update({str(run.run_dir): run for run in expand(unasked)})
    finished.clear()
    with pytest.raises(KeyboardInterrupt):
        runner.run_experiment(unasked, archive=False)
    assert len(finished) == 2 and not Path(unasked.archive).exists()  # only when asked


def test_the_plan_estimates_its_time_from_the_same_runs_at_other_seeds(tmp_path):
    import shutil

    from lightning_app.experiments.archive import Summaries, archive_runs

    experiment = toy(tmp_path)
    runs = {run.id: run for run in expand(experiment)}
    for seed, wall_time in [(0, 600.0), (1, 1200.0)]:
        _finish(runs[f"attack[attack=badnet]@seed{seed}"],
                {"ca_top1": 0.9, "asr": 0.98, "wall_time_s": wall_time, "epochs": 20})
    archive_runs(experiment, list(runs.values()))
    shutil.rmtree(runs["attack[attack=badnet]@seed1"].run_dir.path)  # made elsewhere: its record is in the archive
    experiment.seeds = [2]
    assert planner.wall_time_elsewhere(next(r for r in expand(experiment) if r.id == "attack[attack=badnet]@seed2"),
                                      planner.archived_wall_times(Summaries(experiment))) == 900.0
    blended = next(r for r in expand(experiment) if r.id == "attack[attack=blended]@seed2")
    assert planner.wall_time_elsewhere(blended, planner.archived_wall_times(Summaries(experiment))) is None
    # no blended attack has finished: the attack stage's other runs (badnet's, one here, one archived) guess it
    assert planner.wall_time_of_stage(blended, planner.archived_wall_times(Summaries(experiment))) == 900.0
    # ...scaled by the epochs it will train against theirs: its config's 20, or an axis's setting
    assert planner.planned_epochs(blended) == 20
    longer = dataclasses.replace(blended, settings={**blended.settings, "trainer.max_epochs": 80})
    assert planner.wall_time_of_stage(longer, planner.archived_wall_times(Summaries(experiment))) == 3600.0
    last = planner.plan(experiment).splitlines()[-1]
    to_run = sum(1 for line in planner.plan(experiment).splitlines() if line.startswith("run "))
    assert last == (f"to run or resume: {to_run} runs, about 30 min of fitting (each a median wall time, here or "
                    "archived: 1 from the same run at other seeds and 1 from the same stage at other axis values, a "
                    f"rougher guess), and {to_run - 2} with nothing finished to tell")
    experiment.seeds = [0]
    shutil.rmtree(tmp_path / "runs")
    experiment.archive = str(tmp_path / "none.jsonl")
    assert planner.plan(experiment).splitlines()[-1] == \
        f"to run or resume: {to_run} runs, none finished at another seed to estimate its time from"


def test_the_ca_change_is_from_the_model_a_run_was_given_not_from_its_step_0(tmp_path):
    from lightning_app.experiments.archive import Summaries
    from lightning_app.experiments.rows import result_row

    experiment = toy(tmp_path)
    runs = {run.id: run for run in expand(experiment)}
    attack, cleanclip = runs["attack[attack=badnet]@seed0"], runs["cleanclip[attack=badnet,lr=0.001]@seed0"]
    _finish(attack, {"ca_top1": 0.9, "asr": 0.98, "wall_time_s": 10.0})
    # shrink-and-perturb on loading: the model at step 0 is worse than the poisoned model it was given
    _finish(cleanclip, {"ca_top1": 0.8, "asr": 0.01, "wall_time_s": 10.0, "before": {"ca_top1": 0.6, "asr": 0.5}})
    summaries = Summaries(experiment)
    row = result_row(experiment, cleanclip, summaries)
    assert (row["input_ca_top1"], row["input_asr"]) == (0.9, 0.98)
    assert (row["before_ca_top1"], row["before_asr"]) == (0.6, 0.5)
    assert row["ca_change"] == pytest.approx(-0.1)
    first = result_row(experiment, attack, summaries)  # a stage with no `from`: from its step 0, if it has one
    assert first["input_ca_top1"] is None and "ca_change" not in first


def test_a_one_seed_table_reads_as_one_seed_and_names_an_archive_only_where_there_is_one(tmp_path):
    from lightning_app.experiments.tables import table_note

    experiment = toy(tmp_path)
    experiment.seeds = [0]
    note = table_note(experiment, experiment.tables[0])
    assert "one seed (0)" in note and "t-interval" not in note and "records in" not in note
    experiment.seeds = [0, 1, 2]
    Path(experiment.archive).parent.mkdir(parents=True)
    Path(experiment.archive).write_text("")
    note = table_note(experiment, experiment.tables[0])
    assert "t-interval" in note and f"records in `{experiment.archive}`" in note
