"""Every shipped config parses and instantiates (model, data, trainer) without training."""

from pathlib import Path

import pytest
import torch
import yaml

from lightning_app.cli import BackdoorCLI
from modules.core.base import CLIPModule

# configs/strategies/ holds trainer fragments, added to a full config with a second --config;
# configs/*/triggers/ holds trigger fragments, given as the value of --data.init_args.trigger;
# configs/*/tiers/ holds a tier's data, added with further --config (tests/test_compositions.py parses them);
# configs/embedded/eval/ the evaluation sets, added after a recipe (and its tier)
FRAGMENTS = ("strategies", "triggers", "tiers", "eval")
CONFIGS = sorted(str(p) for p in Path("configs").rglob("*.yaml") if p.parent.name not in FRAGMENTS)
TRIGGERS = sorted(str(p) for p in Path("configs").rglob("triggers/*.yaml"))


def test_there_are_configs():
    assert any("embedded" in c for c in CONFIGS) and any("cc3m" in c for c in CONFIGS)


class _ParseOnly(BackdoorCLI):
    def instantiate_classes(self) -> None:
        pass


@pytest.mark.parametrize("config", CONFIGS)
def test_config_parses_as_shipped(config):
    cli = _ParseOnly(args=["--config", config], run=False)
    assert cli.config.model.class_path.startswith("modules.")
    assert cli.config.data.class_path.startswith("datamodules.")


@pytest.mark.parametrize("config", CONFIGS)
def test_config_instantiates(config, tmp_path):
    args = ["--config", config, "--trainer.default_root_dir", str(tmp_path)]
    text = Path(config).read_text()
    # defenses start from a run that may not exist yet; real-user templates from a weight file of theirs
    if "pretrained: runs/" in text or "pretrained: /path/to/" in text:
        args += ["--model.init_args.model.pretrained", "null"]
    if not torch.cuda.is_available():  # GPU recipes: build everything but the GPU accelerator here
        args += ["--trainer.accelerator", "cpu", "--trainer.devices", "1", "--trainer.strategy", "auto",
                 "--trainer.precision", "32-true"]
    cli = BackdoorCLI(args=args, run=False)
    assert isinstance(cli.model, CLIPModule)
    assert cli.datamodule is not None
    assert cli.trainer.default_root_dir == str(tmp_path)


@pytest.mark.parametrize("trigger", TRIGGERS)
def test_trigger_fragment_replaces_a_recipes_trigger(trigger, tmp_path):
    expected = yaml.safe_load(Path(trigger).read_text())
    # a text-side trigger marks pairs that show the target: its recipe is the label-consistent one
    recipe = "label_consistent" if expected["class_path"] == "datamodules.TextPhrase" else "badnet"
    cli = BackdoorCLI(args=["--config", f"configs/embedded/{recipe}.yaml", "--data.init_args.trigger", trigger,
                            "--trainer.default_root_dir", str(tmp_path)], run=False)
    assert type(cli.datamodule.trigger).__name__ == expected["class_path"].rsplit(".", 1)[1]
    for name, value in expected.get("init_args", {}).items():
        if name == "triggers":  # a MultiTrigger's parts: compare their classes
            value = [part["class_path"].rsplit(".", 1)[1] for part in value]
            assert [type(part).__name__ for part in cli.datamodule.trigger.triggers] == value
        else:
            assert getattr(cli.datamodule.trigger, name) == value


@pytest.mark.parametrize(("configs", "directories"), [
    (["configs/embedded/badnet.yaml", "configs/embedded/eval/all_sets.yaml"], ["eval", "eval_sketch", "retrieval"]),
    (["configs/embedded/badnet.yaml", "configs/embedded/tiers/hard.yaml", "configs/embedded/eval/all_sets_hard.yaml"],
     ["eval", "eval_sketch", "retrieval"]),
])
def test_the_eval_fragments_replace_a_recipes_single_set_with_the_benchmarks_sets(configs, directories, tmp_path):
    args = [a for config in configs for a in ("--config", config)]
    cli = BackdoorCLI(args=[*args, "--trainer.default_root_dir", str(tmp_path)], run=False)
    root = cli.datamodule.embedded.root
    assert [c.directory for c in cli.datamodule.eval_configs] == [f"{root}/{d}" for d in directories]


def test_a_field_of_one_set_given_to_a_list_of_sets_is_refused_naming_the_option(tmp_path):
    # jsonargparse would set it on the list's last set (MSCOCO here), not the headline set the user means
    with pytest.raises(ValueError, match=r"--data.init_args.eval.directory: data.eval is a list of 6 sets"):
        BackdoorCLI(args=["--config", "configs/cc3m/pretrain_badnet.yaml", "--data.init_args.eval.directory", "/data/x",
                          "--trainer.default_root_dir", str(tmp_path)], run=False)
    cli = BackdoorCLI(args=["--config", "configs/cc3m/pretrain_badnet.yaml", "--trainer.default_root_dir", str(tmp_path),
                            "--data.init_args.eval", "[{directory: /data/x}]", "--trainer.accelerator", "cpu",
                            "--trainer.devices", "1", "--trainer.strategy", "auto", "--trainer.precision", "32-true",
                            "--model.init_args.model.pretrained", "null"], run=False)
    assert [c.directory for c in cli.datamodule.eval_configs] == ["/data/x"]
    # a field option that a later whole list replaces changed nothing that stays: accepted
    cli = BackdoorCLI(args=["--config", "configs/embedded/badnet.yaml", "--trainer.default_root_dir", str(tmp_path),
                            "--data.init_args.eval.directory", "/data/x",
                            "--data.init_args.eval", "[{directory: /data/y}, {directory: /data/z}]"], run=False)
    assert [c.directory for c in cli.datamodule.eval_configs] == ["/data/y", "/data/z"]


def test_bad_value_fails_before_training(tmp_path):
    with pytest.raises((ValueError, SystemExit)):
        BackdoorCLI(args=["--config", "configs/embedded/badnet.yaml", "--data.init_args.poison.rate", "1.5",
                          "--trainer.default_root_dir", str(tmp_path)], run=False)


def test_unknown_key_fails_before_training(tmp_path):
    with pytest.raises(SystemExit):
        BackdoorCLI(args=["--config", "configs/embedded/badnet.yaml", "--data.init_args.poison.ratee", "0.1",
                          "--trainer.default_root_dir", str(tmp_path)], run=False)


def test_ddp_strategy_fragment_combines_with_a_recipe(tmp_path):
    from lightning.pytorch.strategies import DDPStrategy

    cli = BackdoorCLI(args=["--config", "configs/cc3m/pretrain_badnet.yaml", "--config", "configs/strategies/ddp.yaml",
                            "--trainer.accelerator", "cpu", "--trainer.devices", "2", "--trainer.precision", "32-true",
                            "--trainer.default_root_dir", str(tmp_path)], run=False)
    assert isinstance(cli.trainer.strategy, DDPStrategy)
    assert cli.trainer.num_devices == 2


def test_the_lower_layers_import_nothing_from_the_application():
    """Imports run one way, down: lightning_app/ → modules/ → datamodules/."""
    import ast
    from pathlib import Path

    above = {"datamodules": ("lightning_app", "modules"), "modules": ("lightning_app",)}
    offenders = []
    for package, forbidden in above.items():
        for path in Path(package).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                    [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
                offenders += [f"{path}: {n}" for n in names if n.split(".")[0] in forbidden]
    assert offenders == []
