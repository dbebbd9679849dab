"""Rows, intervals, tables and the orderings they may claim, on hand-made results."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from helpers.experiments import SELECTION, TOY, _finish, toy

from lightning_app.experiments.expansion import expand
from lightning_app.experiments.loading import load_experiment
from lightning_app.experiments.statistics import Interval, interval
from lightning_app.experiments.tables import render_table


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


def test_a_table_of_some_seeds_with_a_row_per_seed(tmp_path):
    from lightning_app.experiments.tables import seeds_line

    text = TOY.replace("seeds: [0, 1]", "seeds: [0, 1, 2]").replace(
        "    rows: [attack, stage]\n", "    rows: [attack, seed, stage]\n    seeds: [2, 1]\n")
    experiment = toy(tmp_path, text)
    rows = [{"stage": stage, "attack": "badnet", "seed": seed, "ca_top1": 0.9, "asr": asr + seed / 10}
            for seed in (0, 1, 2) for stage, asr in (("abd", 0.5), ("cleanclip", 0.0))]
    lines = render_table(experiment, experiment.tables[0], rows).splitlines()
    assert lines[0].startswith("| attack | seed | stage | n |")
    # seed 0 left out, the others one row each, in seed order then stage order
    assert [line.split(" | ")[1:4] for line in lines[2:]] == [
        ["1", "cleanclip", "1"], ["1", "abd", "1"], ["2", "cleanclip", "1"], ["2", "abd", "1"]]
    assert "| 1 | abd | 1 | 0.900 | 0.600 |" in lines[3]
    assert seeds_line(experiment, experiment.tables[0], rows) == ""  # each row names its seed
    with pytest.raises(ValueError, match="seeds \\[3\\] must be some of the experiment's seeds"):
        toy(tmp_path, text.replace("seeds: [2, 1]", "seeds: [3]"))
    one = toy(tmp_path, text.replace("seeds: [2, 1]", "seeds: 2"))
    assert one.tables[0].seeds == [2] and len(render_table(one, one.tables[0], rows).splitlines()) == 4
    with pytest.raises(ValueError, match="row key 'run'"):
        toy(tmp_path, text.replace("rows: [attack, seed, stage]", "rows: [attack, run, stage]"))


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


def test_a_run_carries_the_retrieval_asr_of_the_model_it_was_given(tmp_path):
    """A text-side trigger's only ASR is a retrieval one: its re-activation row shows it before and after."""
    from lightning_app.experiments.archive import Summaries
    from lightning_app.experiments.labels import column_name
    from lightning_app.experiments.rows import result_row

    experiment = toy(tmp_path)
    runs = {run.id: run for run in expand(experiment)}
    attack, cleanclip = runs["attack[attack=badnet]@seed0"], runs["cleanclip[attack=badnet,lr=0.001]@seed0"]
    retrieval = {"kind": "retrieval", "asr_hit1": 0.1, "asr_hit5": 0.4, "i2t_r5": 0.9}
    _finish(attack, {"ca_top1": 0.9, "asr": None, "wall_time_s": 10.0, "eval": {"retrieval": retrieval}})
    _finish(cleanclip, {"ca_top1": 0.8, "asr": None, "wall_time_s": 10.0,
                        "eval": {"retrieval": {**retrieval, "asr_hit5": 0.05}}})
    row = result_row(experiment, cleanclip, Summaries(experiment))
    assert (row["input_retrieval/asr_hit5"], row["retrieval/asr_hit5"]) == (0.4, 0.05)
    assert row["input_retrieval/asr_hit1"] == 0.1 and "input_retrieval/i2t_r5" not in row
    assert column_name("input_retrieval/asr_hit5", experiment, experiment.tables[0]) == "input retrieval ASR Hit@5 (retrieval)"


def test_a_one_seed_table_reads_as_one_seed_and_names_an_archive_only_where_there_is_one(tmp_path):
    from lightning_app.experiments.plots import plot_title
    from lightning_app.experiments.tables import table_note

    experiment = toy(tmp_path)
    experiment.seeds = [0]
    note = table_note(experiment, experiment.tables[0])
    assert "one seed (0)" in note and "t-interval" not in note and "records in" not in note
    assert "one seed" in plot_title(experiment) and "interval" not in plot_title(experiment)
    experiment.seeds = [0, 1, 2]
    Path(experiment.archive).parent.mkdir(parents=True)
    Path(experiment.archive).write_text("")
    note = table_note(experiment, experiment.tables[0])
    assert "t-interval" in note and f"records in `{experiment.archive}`" in note
    assert "95% interval over seeds" in plot_title(experiment)
