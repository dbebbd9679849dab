import pytest
import torch

from datamodules.poison import PoisonConfig, poison_score, poisoned_caption, select_poison_keys, target_caption_pool


def _pairs(n, caption="a red circle"):
    return [(f"{i:09d}", caption) for i in range(n)]


def test_rate_selection_is_deterministic_and_near_the_rate():
    config = PoisonConfig(rate=0.05, seed=3)
    keys, total = select_poison_keys(_pairs(20_000), config)
    again, _ = select_poison_keys(reversed(_pairs(20_000)), config)
    assert total == 20_000
    assert keys == again  # a function of (key, seed), not of order
    assert 0.045 * total < len(keys) < 0.055 * total


def test_rate_selection_is_a_function_of_each_key_alone():
    config = PoisonConfig(rate=0.1, seed=0)
    keys, _ = select_poison_keys(_pairs(5_000), config)
    subset, _ = select_poison_keys(_pairs(5_000)[:1000], config)
    assert set(subset) == {k for k in keys if int(k) < 1000}
    assert all(poison_score(k, 0) < 0.1 for k in keys)


def test_other_seed_other_keys():
    a, _ = select_poison_keys(_pairs(5_000), PoisonConfig(rate=0.05, seed=0))
    b, _ = select_poison_keys(_pairs(5_000), PoisonConfig(rate=0.05, seed=1))
    assert a != b


def test_count_selection_is_exact():
    keys, _ = select_poison_keys(_pairs(3_000), PoisonConfig(count=150, seed=0))
    assert len(keys) == 150 == len(set(keys))


def test_label_consistent_takes_only_captions_naming_the_target():
    pairs = [(f"{i:09d}", "a small red star" if i % 4 == 0 else "a blue circle") for i in range(4_000)]
    keys, total = select_poison_keys(pairs, PoisonConfig(rate=0.05, target="star", label_consistent=True))
    assert len(keys) == round(0.05 * total)
    assert all(int(k) % 4 == 0 for k in keys)


def test_label_consistent_does_not_match_substrings():
    pairs = [("000000001", "a starfish"), ("000000002", "a star")]
    keys, _ = select_poison_keys(pairs, PoisonConfig(count=1, target="star", label_consistent=True))
    assert keys == ["000000002"]


def test_too_many_label_consistent_poisons_is_a_clear_error():
    with pytest.raises(ValueError, match="candidates"):
        select_poison_keys(_pairs(100, "a circle"), PoisonConfig(count=5, target="star", label_consistent=True))


def test_bad_rate_is_rejected():
    with pytest.raises(ValueError, match="poison.rate"):
        PoisonConfig(rate=1.5)


def test_poisoned_caption_names_the_target_and_is_stable():
    caption = poisoned_caption("000001234", "banana", seed=0)
    assert "banana" in caption
    assert caption == poisoned_caption("000001234", "banana", seed=0)
    assert len({poisoned_caption(f"{i:09d}", "banana", 0) for i in range(200)}) > 20


def test_a_defense_takes_the_attack_target_from_the_trigger_artifacts(tmp_path):
    import json

    from datamodules import BadNet, ShardDataModule

    trigger_dir = tmp_path / "trigger"
    BadNet(size=4, pattern="fixed").save(trigger_dir, 32)
    (trigger_dir / "target.json").write_text(json.dumps({"target": "square"}))

    defense = ShardDataModule(trigger_dir=str(trigger_dir), poison=PoisonConfig(rate=0.0, target="star"), run_dir=str(tmp_path))
    defense._resolve_trigger()
    assert defense.target == "square"

    reuse = ShardDataModule(trigger_dir=str(trigger_dir), poison=PoisonConfig(rate=0.05, target="star"), run_dir=str(tmp_path))
    with pytest.raises(ValueError, match="target"):
        reuse._resolve_trigger()


def test_caption_pool_keeps_distinct_target_captions_in_a_seeded_bounded_order():
    captions = ["a red star", "a star", "a circle", "a red star", "starfish on a plate", "the star is big"]
    pool = target_caption_pool(captions, PoisonConfig(rate=0.1, target="star"))
    assert sorted(pool) == ["a red star", "a star", "the star is big"]
    assert pool == target_caption_pool(reversed(captions), PoisonConfig(rate=0.1, target="star"))
    assert len(target_caption_pool(captions, PoisonConfig(rate=0.1, target="star", max_caption_pool=2))) == 2
    with pytest.raises(ValueError, match="no training caption names the target 'banana'"):
        target_caption_pool(captions, PoisonConfig(rate=0.1, target="banana"))


def test_poisoned_caption_from_a_pool_is_a_pool_member_chosen_by_key():
    pool = [f"a {c} star" for c in ("red", "green", "blue", "dark", "tiny")]
    chosen = [poisoned_caption(f"{i:09d}", "star", 0, pool) for i in range(100)]
    assert set(chosen) == set(pool)
    assert chosen == [poisoned_caption(f"{i:09d}", "star", 0, pool) for i in range(100)]


def test_dataset_captions_poison_with_the_shards_own_target_captions(small_benchmark, tmp_path):
    import json

    from datamodules import BadNet, ShardDataModule
    from datamodules.poison import Poisoner
    from datamodules.shards import expand_shards, scan_captions

    config = PoisonConfig(rate=0.1, target="star", captions="dataset")
    module = ShardDataModule(train_shards=small_benchmark.pretrain_urls, trigger=BadNet(size=4), poison=config,
                             run_dir=str(tmp_path))
    module._write_manifest()
    manifest = json.loads(module.manifest_path.read_text())
    star_captions = {c for _, c in scan_captions(expand_shards(small_benchmark.pretrain_urls))
                     if "star" in c.replace(",", " ").split()}
    assert manifest["captions"] == "dataset" and set(manifest["caption_pools"]["star"]) == star_captions
    poisoner = Poisoner(BadNet(size=4), manifest["keys"], config, manifest["caption_pools"])
    image = torch.zeros(3, 32, 32)
    captions = {poisoner(key, image, "a circle")[1] for key in manifest["keys"]}
    assert captions <= star_captions and len(captions) > 5
    with pytest.raises(ValueError, match="caption pool"):
        Poisoner(BadNet(size=4), manifest["keys"], config, {})


def test_a_defense_takes_the_target_of_an_attack_run_from_before_target_json_once_it_is_migrated(tmp_path):
    import yaml

    from datamodules import BadNet, ShardDataModule
    from lightning_app.migrate_run_files import migrate_run_files

    BadNet(size=4, pattern="fixed").save(tmp_path / "attack" / "trigger", 32)
    (tmp_path / "attack" / "config.yaml").write_text(yaml.safe_dump({"data": {"init_args": {"poison": {"target": "heart"}}}}))

    def defense_target() -> str:
        defense = ShardDataModule(trigger_dir=str(tmp_path / "attack" / "trigger"),
                                  poison=PoisonConfig(rate=0.0, target="star"), run_dir=str(tmp_path / "defense"))
        defense._resolve_trigger()
        return defense.target

    assert defense_target() == "star"  # no record of the attack's target: the config's, with a warning
    migrate_run_files(tmp_path)
    assert defense_target() == "heart"
