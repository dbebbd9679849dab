"""The results archive: a record is reported while it still describes the run asked for, inputs made again
with the same result keep what was made from them, and a damaged archive names its file and line."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
from helpers.experiments import TOY, _finish, toy

from lightning_app.experiments import planning as planner
from lightning_app.experiments.expansion import expand

UBT_STAGE = TOY.replace("    cost_includes: [craft]", textwrap.indent(textwrap.dedent("""\
    cost_includes: [craft]
  ubt:
    config: configs/embedded/ubt_one_fit.yaml
    from: attack
    set: {{model.init_args.discover.poison: "{{attack.config:data.init_args.poison}}"}}"""), "  "))


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
