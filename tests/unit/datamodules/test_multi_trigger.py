"""Multi-trigger attacks: which trigger and target each poisoned key gets, the manifest that records it,
the reload of the composite trigger, and per-trigger ASR."""

import json
from types import SimpleNamespace

import pytest
import torch

from datamodules import BadNet, Blended, MultiTrigger, ShardDataModule
from datamodules.poison import SIG, PoisonConfig, Poisoner, load_trigger
from datamodules.poison.selection import names_target
from modules.core.evaluation import Evaluation


def _three(targets=None):
    return MultiTrigger([BadNet(size=4, pattern="fixed", location="fixed"), Blended(alpha=0.2), SIG()], targets, seed=3)


def test_each_key_gets_one_trigger_by_key_and_all_are_used():
    trigger = _three()
    image = torch.rand(3, 32, 32, generator=torch.Generator().manual_seed(0))
    keys = [f"{i:09d}" for i in range(300)]
    counts = [0, 0, 0]
    for key in keys:
        i = trigger.index(key)
        counts[i] += 1
        assert torch.equal(trigger.apply(image, key), trigger.triggers[i].apply(image, key))
    assert min(counts) > 60  # about 100 each
    assert [trigger.index(k) for k in keys] == [_three().index(k) for k in keys]


def test_multi_trigger_saves_each_part_and_reloads_bit_exact(tmp_path):
    trigger = _three(["triangle", "star", "heart"])
    trigger.save(tmp_path, image_size=32)
    assert (tmp_path / "0" / "pattern.png").exists() and (tmp_path / "1" / "pattern.png").exists()
    loaded = load_trigger(tmp_path)
    assert isinstance(loaded, MultiTrigger) and loaded.targets == ["triangle", "star", "heart"]
    image = torch.rand(3, 32, 32)
    for key in ("a", "b", "000000007", "000000042"):
        assert torch.equal(loaded.apply(image, key), trigger.apply(image, key))


def test_targets_must_match_the_triggers():
    with pytest.raises(ValueError, match="targets"):
        MultiTrigger([BadNet(), SIG()], ["triangle"])
    with pytest.raises(ValueError, match="at least two"):
        MultiTrigger([BadNet()])


def test_multi_target_manifest_names_each_keys_trigger_and_target(small_benchmark, tmp_path):
    trigger = _three(["triangle", "star", "heart"])
    config = PoisonConfig(rate=0.2, target="triangle", captions="dataset")
    module = ShardDataModule(train_shards=small_benchmark.pretrain_urls, trigger=trigger, poison=config,
                             run_dir=str(tmp_path))
    module._write_manifest()
    manifest = json.loads(module.manifest_path.read_text())
    assignments = manifest["assignments"]
    assert sorted(assignments) == manifest["keys"] and len(assignments) > 30
    targets = {"triangle", "star", "heart"}
    for key, given in assignments.items():
        assert given["trigger"] == trigger.index(key)
        assert given["target"] == ["triangle", "star", "heart"][given["trigger"]]
    assert {g["target"] for g in assignments.values()} == targets
    assert set(manifest["caption_pools"]) == targets
    for target, pool in manifest["caption_pools"].items():
        assert pool and all(names_target(c, target) for c in pool)
    poisoner = Poisoner(trigger, manifest["keys"], config, manifest["caption_pools"])
    image = torch.zeros(3, 32, 32)
    for key, given in assignments.items():
        _, caption, poisoned = poisoner(key, image, "a red circle")
        assert poisoned and names_target(caption, given["target"])
        others = targets - {given["target"]}
        assert not any(names_target(caption, other) for other in others)


def test_one_target_multi_trigger_captions_all_name_the_poison_target():
    trigger = _three()
    keys = [f"{i:09d}" for i in range(60)]
    poisoner = Poisoner(trigger, keys, PoisonConfig(rate=1.0, target="banana"))
    assert all("banana" in poisoner(k, torch.zeros(3, 32, 32), "x")[1] for k in keys)


def test_per_trigger_asr_toward_each_triggers_own_target():
    classnames = ["circle", "star", "heart"]
    trigger = MultiTrigger([BadNet(size=4), SIG()], ["star", "heart"])
    eval_set = SimpleNamespace(classnames=classnames, trigger=trigger, kind="classification", name="eval")
    data = SimpleNamespace(eval_set=eval_set, eval_sets=[eval_set], target="star")
    logged = {}
    trainer = SimpleNamespace(datamodule=data, sanity_checking=False)
    module = SimpleNamespace(device=torch.device("cpu"), log=lambda name, value, **_: logged.__setitem__(name, float(value)))
    callback = Evaluation()
    callback._start(trainer, module)
    labels = torch.tensor([0, 1, 2, 0])
    eye = torch.eye(3)
    callback._batch({
        "classifier": eye,
        "label": labels,
        "clean": eye[labels],
        "triggered_0_badnet": eye[[1, 1, 1, 1]],  # every image → star: ASR 1 over the 3 non-star images
        "triggered_1_sig": eye[[2, 0, 2, 1]],  # → heart for the first image only, of 3 non-heart images
    })
    callback._end(trainer, module, "val")
    assert logged["val/asr_0_badnet"] == pytest.approx(1.0)
    assert logged["val/asr_1_sig"] == pytest.approx(1 / 3)
    assert logged["val/asr"] == pytest.approx(2 / 3)
    assert logged["val/ca_top1"] == pytest.approx(1.0)
    # cohesion over the images each ASR counts: BadNet's three on one point, SIG's three orthogonal
    assert logged["val/cohesion_triggered_0_badnet"] == pytest.approx(1.0)
    assert logged["val/cohesion_triggered_1_sig"] == pytest.approx(0.0)
    assert logged["val/cohesion_triggered"] == pytest.approx(0.5)
    assert logged["val/cohesion_clean"] == pytest.approx(2 / 12)  # of 12 ordered pairs, images 0 and 3 coincide
