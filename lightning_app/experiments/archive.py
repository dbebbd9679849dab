"""The results archive: what each finished run of an experiment recorded (its summary.json and the
fingerprint of the config that made it), kept in the repository as `results/NAME.jsonl`, one line a run.

Run directories hold checkpoints and stay on the machine that made them; an archived run is a few
kilobytes and travels with the code, so the tables README.md and docs/ quote can be made again on any
checkout (`python -m lightning_app.experiments report experiments/NAME.yaml`), and every quoted number
stays traceable to the run that measured it. `--archive` (and `--update-docs`, which implies it) records
each run as it finishes here (and, at the end, every finished run it reports).

A report takes a run's summary from its own directory when the run finished there, and from its
archived record otherwise, but only while the record still describes the run the experiment asks for:
the same config values, fragments and overrides (else it measured another recipe), and inputs whose
summaries are the ones it was made from, or measure the same to the last digit (else an upstream run was
made again since, with another result). A deterministic remake of an upstream run (same metrics, another
wall time) so keeps what was made from it, here and in the archive. Records from before inputs' results
were recorded get them filled in from the archived inputs whose bytes they name, when the archive is
read (and so kept the next time it is written, before any of those inputs' records is replaced).
"""

from __future__ import annotations

import dataclasses
import fcntl
import json
from pathlib import Path
from typing import Any

from lightning_app.experiments.expansion import pipeline_stage
from lightning_app.experiments.schema import CONFIG_REFERENCE, Experiment, StageRun
from lightning_app.pipelines import Stage, result_sha256, summary_result_sha256, summary_sha256


def made_here_by_this_config(run: StageRun) -> bool:
    """Whether the run directory's record (`stage.json`) says this run made it: the experiment's config,
    fragments and overrides for it, from inputs not made again since. A directory made by another config
    is neither reused, nor reported, nor archived as this run's. While an input is unfinished the record
    cannot be compared (its references resolve through the inputs' configs) and is taken as it is."""
    recorded = run.run_dir.path / "stage.json"
    if not recorded.exists():
        return False
    if not all(dep.run_dir.is_finished() for dep in run.deps.values()):
        return True
    fingerprint = json.loads(recorded.read_text())
    return pipeline_stage(run).made_by(fingerprint) and not Stage.remade_inputs(fingerprint)


def load_archive(path: str | Path) -> dict[str, dict[str, Any]]:
    """Archived records by run directory ({} when there is no archive yet)."""
    path = Path(path)
    if not path.exists():
        return {}
    records = {}
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            records[record["run_dir"]] = record
        except (json.JSONDecodeError, KeyError, TypeError) as exn:
            raise ValueError(f"{path}:{number}: not an archived run ({exn})") from exn
    return records


def archive_runs(experiment: Experiment, runs: list[StageRun]) -> Path:
    """Add (or replace) the record of every run that finished here; the records of other runs stay."""
    path = Path(experiment.archive)
    path.parent.mkdir(parents=True, exist_ok=True)
    # two invocations (a queue's runs, a report) may archive at once; each reads and rewrites the whole file
    with open(path.with_name(path.name + ".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        records = load_archive(path)
        _fill_inputs_results(records)  # while the inputs' records are still the ones whose bytes they name
        for run in runs:
            fingerprint = run.run_dir.path / "stage.json"
            if run.run_dir.is_finished() and made_here_by_this_config(run):
                records[str(run.run_dir)] = {"run_dir": str(run.run_dir), "id": run.id,
                                             "stage": json.loads(fingerprint.read_text()),
                                             "summary": run.run_dir.summary(),
                                             "summary_sha256": summary_sha256(str(run.run_dir))}
        _fill_inputs_results(records)  # runs made before stage.json recorded their inputs' results
        text = "".join(json.dumps(records[key], sort_keys=True) + "\n" for key in sorted(records))
        temporary = path.with_name(path.name + ".tmp")
        temporary.write_text(text)
        temporary.replace(path)  # a reader never sees half a file
    return path


class Summaries:
    """Each run's summary and where it came from: its run directory, else a matching archived record."""

    def __init__(self, experiment: Experiment):
        self.records = load_archive(experiment.archive)
        _fill_inputs_results(self.records)
        self._known: dict[str, tuple[dict, str] | None] = {}

    def get(self, run: StageRun) -> dict | None:
        found = self._find(run)
        return found[0] if found else None

    def source(self, run: StageRun) -> str | None:
        """"run_dir", "archive", or None when the run has no summary anywhere."""
        found = self._find(run)
        return found[1] if found else None

    def _find(self, run: StageRun) -> tuple[dict, str] | None:
        key = str(run.run_dir)
        if key not in self._known:
            if run.run_dir.is_finished() and made_here_by_this_config(run):
                self._known[key] = (run.run_dir.summary(), "run_dir")
            else:
                record = self.records.get(key)
                self._known[key] = (record["summary"], "archive") if record and self._matches(run, record) else None
        return self._known[key]

    def _digest(self, run: StageRun) -> str | None:
        """The sha256 of the run's summary.json, wherever it is."""
        if self._find(run) is None:
            return None
        if self.source(run) == "run_dir":
            return summary_sha256(str(run.run_dir))
        return self.records[str(run.run_dir)]["summary_sha256"]

    def _result(self, run: StageRun) -> str | None:
        found = self._find(run)
        return result_sha256(found[0]) if found else None

    def _matches(self, run: StageRun, record: dict) -> bool:
        recorded = record["stage"]
        deps = {str(dep.run_dir): dep for dep in run.deps.values()}
        inputs, results = recorded.get("inputs_sha256", {}), recorded.get("inputs_result_sha256", {})
        if set(inputs) != set(deps):
            return False
        for run_dir, digest in inputs.items():
            if self._digest(deps[run_dir]) != digest and (
                    results.get(run_dir) is None or self._result(deps[run_dir]) != results[run_dir]):
                return False
        stage = pipeline_stage(run) if all(dep.run_dir.config_path.exists() for dep in run.deps.values()) else None
        if stage is not None:
            return stage.made_by(recorded)
        # An input's directory is gone, so the values its config lends this run cannot be read; they are
        # pinned anyway, by the input's own record matching (checked above through its summary's digest).
        return _made_by_except_config_references(run, recorded)


def _fill_inputs_results(records: dict[str, dict]) -> None:
    """Record each input's result in the records that name only its bytes, where those bytes are still
    found: its archived record, or its run directory here."""
    for record in records.values():
        stage = record["stage"]
        results = stage.get("inputs_result_sha256", {})
        for run_dir, digest in stage.get("inputs_sha256", {}).items():
            if run_dir in results:
                continue
            archived = records.get(run_dir)
            if archived is not None and archived["summary_sha256"] == digest:
                results[run_dir] = result_sha256(archived["summary"])
            elif summary_sha256(run_dir) == digest:
                results[run_dir] = summary_result_sha256(run_dir)
        if results:
            stage["inputs_result_sha256"] = results


def _made_by_except_config_references(run: StageRun, recorded: dict) -> bool:
    """`made_by`, leaving out the values this run takes from its inputs' configs (`{S.config:key}`): their
    directories are gone, so those values cannot be read again, and they are pinned by the inputs' records."""
    references = tuple(key for key, value in run.settings.items()
                       if isinstance(value, str) and CONFIG_REFERENCE.match(value))
    expected = pipeline_stage(dataclasses.replace(
        run, settings={key: value for key, value in run.settings.items() if key not in references}))
    return expected.made_by(recorded, except_keys=references)
