from datamodules.poison import SIG, BadNet, MultiTrigger
from lightning_app.report import results_table, write_block


def test_table_names_the_attack_its_target_and_formats_numbers():
    summary = {"attack": {"name": "badnet", "size": 8, "cell": 1, "seed": 0, "position": None}, "target": "star",
               "poison_count": 996, "ca_top1": 0.90612, "ca_top5": 1.0, "asr": 0.7991, "steps": 3120, "wall_time_s": 491.6}
    row = results_table([("run", summary)]).splitlines()[2]
    assert row == "| run | badnet (size=8) → star | 996 | 0.906 | 1.000 | 0.799 | 3120 | 492 |"


def test_write_block_replaces_only_between_its_markers(tmp_path):
    path = tmp_path / "doc.md"
    path.write_text("intro\n<!-- results:a -->\nold\n<!-- /results:a -->\noutro\n")
    write_block(path, "a", "new")
    write_block(path, "b", "other")
    assert path.read_text() == ("intro\n<!-- results:a -->\nnew\n<!-- /results:a -->\noutro\n\n"
                                "<!-- results:b -->\nother\n<!-- /results:b -->\n")


def test_a_multi_trigger_attack_is_named_by_its_parts_and_targets():
    from lightning_app.report import attack_name

    trigger = MultiTrigger([BadNet(size=4), SIG()], ["star", "heart"])
    assert attack_name({"attack": trigger.describe(), "target": "star"}) == "multi (badnet, sig) → star, heart"
    one = MultiTrigger([BadNet(size=4), SIG()])
    assert attack_name({"attack": one.describe(), "target": "star"}) == "multi (badnet, sig) → star"
