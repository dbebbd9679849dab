"""The runner: one chain at a time, finished runs reused, interrupted ones resumed, another config's
refused; each run archived as it finishes; the plan's states and time estimate."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
from helpers.experiments import _finish, toy

from lightning_app.experiments import planning as planner
from lightning_app.experiments import runner
from lightning_app.experiments.expansion import expand, pipeline_stage
from lightning_app.experiments.loading import load_experiment
from lightning_app.pipelines import run_stage


def _fake_finished(run, fingerprint: dict | None, summary: dict | None = None) -> None:
    run.run_dir.path.mkdir(parents=True, exist_ok=True)
    (run.run_dir.path / "stage.json").write_text(json.dumps(fingerprint))
    (run.run_dir.path / "summary.json").write_text(json.dumps(summary or {"asr": 0.5, "wall_time_s": 1.0}))
    run.run_dir.config_path.write_text("model: {init_args: {model: {name: tiny}}}\n")


def test_runs_go_one_chain_at_a_time_each_after_what_it_needs(tmp_path):
    ids = [run.id for run in runner.by_chain(expand(toy(tmp_path)))]
    per_attack = ["attack[attack={a}]", "cleanclip[attack={a},lr=0.001]", "cleanclip[attack={a},lr=0.002]",
                  "craft[attack={a}]", "abd[attack={a}]"]
    assert ids == [f"{i.format(a=a)}@seed{s}" for s in (0, 1) for a in ("badnet", "blended") for i in per_attack]
    for path in sorted(Path("experiments").glob("*.yaml")):
        ordered = runner.by_chain(expand(load_experiment(path)))
        position = {run.id: i for i, run in enumerate(ordered)}
        assert all(position[dep.id] < position[run.id] for run in ordered for dep in run.deps.values()), path


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


def test_each_run_is_archived_as_it_finishes_not_when_the_invocation_ends(tmp_path, monkeypatch):
    from lightning_app.experiments.archive import load_archive

    experiment = toy(tmp_path)
    experiment.seeds = [0]
    runs = {str(run.run_dir): run for run in expand(experiment)}
    finished = []

    def fake_run_stage(stage, env=None):
        if len(finished) == 2:
            raise KeyboardInterrupt  # the machine goes away during the third run
        _finish(runs[stage.run_dir], {"ca_top1": 0.9, "asr": 0.5, "wall_time_s": 1.0})
        finished.append(stage.run_dir)

    monkeypatch.setattr(runner, "SLOTS", tmp_path / "slots")
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
