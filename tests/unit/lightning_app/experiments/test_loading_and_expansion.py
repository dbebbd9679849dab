"""An experiment file is checked when it is read (a mistake names the key) and expands to the exact runs,
with their dependencies, references and settings."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
from helpers.experiments import TOY, toy

from lightning_app.experiments import runner
from lightning_app.experiments.expansion import command_line, expand, pipeline_stage, resolve, restrict_axes
from lightning_app.experiments.loading import load_experiment


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
    assert unlearn.config == "configs/embedded/fixed/ubt_unlearn_vit.yaml"  # the recipe its archived runs ran
    assert resolve(unlearn)["model.init_args.suspicious_dir"] == f"{runs['detect[case=badnet_vit]@seed1'].run_dir}/ubt"
    assert unlearn.stage.cost_includes == ["detect"]
    control = resolve(runs["control[case=badnet_vit]@seed1"])
    assert control["model.init_args.lambda_forget"] == 0
    assert control["model.init_args.model.name"] == "configs/models/tiny-vit32.json"
    assert runs["unlearn[case=badnet]@seed1"].config == "configs/embedded/fixed/ubt_unlearn.yaml"


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


def test_an_axis_value_can_start_its_stage_from_another_stage(tmp_path):
    """threats.yaml: BadNet's and Blended's poisoned models are pretrained from scratch, BadCLIP's fine-tunes
    the clean model with the patch optimised against it; the defenses start from whichever it is."""
    experiment = load_experiment("experiments/threats.yaml")
    experiment.runs = str(tmp_path)
    runs = {run.id: run for run in expand(experiment)}
    assert runs["attack[attack=badnet]@seed3"].deps == {} and runs["attack[attack=blended]@seed3"].deps == {}
    badclip = runs["attack[attack=badclip]@seed3"]
    assert sorted(badclip.deps) == ["clean", "patch"] and badclip.stage.parent == "clean"
    assert badclip.config == "configs/embedded/badclip.yaml"
    assert experiment.stages["attack"].parent is None  # the stage as written is left as it was
    clean = runs["clean@seed3"].run_dir
    clean.path.mkdir(parents=True)
    clean.config_path.write_text("model: {init_args: {model: {name: configs/models/tiny-rn32.json}}}\n")
    settings = resolve(badclip)
    assert settings["model.init_args.model.pretrained"] == str(clean.checkpoint)
    assert "data.init_args.trigger_dir" not in settings  # inherit: its own trigger, not the clean model's
    assert settings["data.init_args.trigger.init_args.patch"] == f"{runs['patch@seed3'].run_dir}/badclip/patch.png"
    assert "from" not in str(command_line(settings))
    # the defenses of each attack start from its poisoned model, wherever that came from
    for attack in ("badnet", "badclip"):
        abd = runs[f"abd[attack={attack}]@seed3"]
        assert {name: dep.id for name, dep in abd.deps.items() if name in ("attack", "abd_craft")} == {
            "attack": f"attack[attack={attack}]@seed3", "abd_craft": f"abd_craft[attack={attack}]@seed3"}
    assert sorted(runs["abd[attack=badclip]@seed3"].deps) == ["abd_craft", "attack", "clean", "patch"]
    # BadNet's and Blended's poisoned models are made as the file made them before BadCLIP joined (the same
    # config values, no dependency), so that their archived runs still match
    for attack in ("badnet", "blended"):
        values = pipeline_stage(runs[f"attack[attack={attack}]@seed0"]).fingerprint()["values"]
        assert values["data.init_args.trigger.class_path"] == ("datamodules.BadNet" if attack == "badnet" else "datamodules.Blended")
        assert "model.init_args.model.pretrained" not in values


PER_VALUE = TOY.replace("      blended: {{config: configs/embedded/clean.yaml, data.init_args.poison.rate: 0.1}}\n",
                        "      blended: {{attack: {{config: configs/embedded/clean.yaml, from: FROM}}}}\n"
                        ).replace("      badnet: {{config: configs/embedded/badnet.yaml}}\n",
                                  "      badnet: {{attack: {{config: configs/embedded/badnet.yaml}}}}\n"
                                  ).replace("    stages: [attack]\n    values:", "    stages: [attack]\n    per_stage: true\n    values:")


@pytest.mark.parametrize("parent, message", [("nowhere", r"stage 'attack' at attack=blended refers to unknown stage 'nowhere'"),
                                             ("cleanclip", r"stage 'attack' at attack=blended depends on 'cleanclip', which must be listed before")])
def test_an_axis_values_other_start_is_checked_when_the_file_is_read(tmp_path, parent, message):
    assert [run.id for run in expand(toy(tmp_path, PER_VALUE.replace("from: FROM", "inherit: [checkpoint]")))][:2] == [
        "attack[attack=badnet]@seed0", "attack[attack=blended]@seed0"]
    with pytest.raises(ValueError, match=message):
        toy(tmp_path, PER_VALUE.replace("FROM", parent))


def test_the_reactivation_stages_start_from_each_defended_model_with_its_attacks_trigger(tmp_path):
    experiment = load_experiment("experiments/threats.yaml")
    experiment.runs = str(tmp_path)
    runs = {run.id: run for run in expand(experiment)}
    for name in ("clean@seed1", "cleanclip[attack=blended]@seed1", "attack[attack=blended]@seed1"):
        runs[name].run_dir.path.mkdir(parents=True)
        runs[name].run_dir.config_path.write_text("model: {init_args: {model: {name: configs/models/tiny-rn32.json}}}\n")
    after_cleanclip = resolve(runs["reactivate_cleanclip[attack=blended]@seed1"])
    assert after_cleanclip["model.init_args.model.pretrained"] == str(runs["cleanclip[attack=blended]@seed1"].run_dir.checkpoint)
    assert after_cleanclip["data.init_args.trigger_dir"] == str(runs["cleanclip[attack=blended]@seed1"].run_dir.trigger_dir)
    # the clean control's re-activation: its own weights, the attack's trigger, one run per attack
    control = resolve(runs["reactivate_clean[attack=blended]@seed1"])
    assert control["model.init_args.model.pretrained"] == str(runs["clean@seed1"].run_dir.checkpoint)
    assert control["data.init_args.trigger_dir"] == str(runs["attack[attack=blended]@seed1"].run_dir.trigger_dir)
    assert runs["reactivate_clean[attack=blended]@seed1"].run_dir != runs["reactivate_clean[attack=badnet]@seed1"].run_dir
    assert {run.config for run in runs.values() if run.stage.name.startswith("reactivate_")} == {"configs/embedded/reactivate.yaml"}


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
