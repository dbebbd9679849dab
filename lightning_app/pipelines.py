"""Chaining runs: each stage is one `main.py fit` in its own process and its own run directory.

A stage whose run directory already has `summary.json` is reused, one with a checkpoint but no
summary (interrupted) is resumed with `--ckpt_path last`, anything else starts fresh. The stage's
config values (its config files and overrides merged into dotted keys, `lightning_app/config_values.py`:
neither comments nor where a value is written count) are recorded in `RUN/stage.json`; a run directory
made by other values is never reused or resumed (the stage fails and names the keys that differ). So are the runs it read (`inputs`: the run directories of the stages it
depends on), by a hash of their summary.json and one of what it measured (the summary without its wall
time and throughput): a run made from an input that has since been made again with another result (e.g.
a finder rerun after a change of its code) is refused, not reused. An input made again with the same
result (a deterministic remake: every metric equal to the last digit, only the timing differs) is the
input the run was made from.
"""

from __future__ import annotations

import hashlib
import json
import logging
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from lightning_app.config_values import config_values
from lightning_app.report import load_summary

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Stage:
    label: str
    """Name of the stage in tables and plots."""
    config: str | list[str]
    """Config file, or files merged in order (a recipe and its fragments), relative to the repository root."""
    run_dir: str
    """Run directory of this stage."""
    overrides: list[str] = field(default_factory=list)
    """Extra command-line arguments for main.py fit."""
    inputs: list[str] = field(default_factory=list)
    """Run directories whose results this stage reads (finished before it starts)."""

    @property
    def summary_path(self) -> Path:
        return Path(self.run_dir) / "summary.json"

    def summary(self) -> dict:
        return load_summary(Path(self.run_dir))

    @property
    def configs(self) -> list[str]:
        """The `--config` files, in order (a stage's config may be one file or a list of fragments)."""
        return [self.config] if isinstance(self.config, str) else list(self.config)

    def fingerprint(self) -> dict:
        """What made the run: the merged values of its config files and overrides (`config_values`), with the
        files and overrides that wrote them for the reader. Only the values are compared: a config moved or
        split into fragments that resolve to the same values made the same run."""
        values = config_values(self.configs, self.overrides, REPO_ROOT)
        values.pop(RUN_DIR_KEY, None)  # the stage's own run directory replaces it
        return {"configs": self.configs, "overrides": list(self.overrides), "values": values}

    def inputs_sha256(self) -> dict[str, str]:
        """Each input's summary.json, hashed: what this run was made from."""
        digests = {run_dir: summary_sha256(run_dir) for run_dir in self.inputs}
        assert None not in digests.values(), f"an input of {self.run_dir} has not finished: {digests}"
        return digests

    def inputs_result_sha256(self) -> dict[str, str]:
        """Each input's measured values, hashed (`result_sha256`)."""
        return {run_dir: summary_result_sha256(run_dir) for run_dir in self.inputs}

    @staticmethod
    def remade_inputs(recorded: dict) -> list[str]:
        """The recorded inputs whose summary.json is no longer the one the run was made from, nor one with
        the same result (runs recorded before inputs were: none; before their results were: bytes only)."""
        results = recorded.get("inputs_result_sha256", {})
        return [run_dir for run_dir, digest in recorded.get("inputs_sha256", {}).items()
                if summary_sha256(run_dir) != digest and summary_result_sha256(run_dir) != results.get(run_dir, "")]

    def made_by(self, recorded: dict, except_keys: tuple[str, ...] = ()) -> bool:
        """Whether a run directory's recorded fingerprint (`stage.json`) is this stage's: the same config
        values, leaving out those at or under `except_keys`."""
        def kept(values: dict) -> dict:
            return {key: value for key, value in values.items()
                    if not any(key == k or key.startswith(k + ".") for k in except_keys)}
        return "values" in recorded and kept(recorded["values"]) == kept(self.fingerprint()["values"])

    def check_or_record_fingerprint(self) -> None:
        path = Path(self.run_dir) / "stage.json"
        current = self.fingerprint()
        if path.exists():
            recorded = json.loads(path.read_text())
            if "values" not in recorded:
                raise ValueError(f"{path} records its config by path (before fingerprints by value): run "
                                 f"`python -m lightning_app.migrate_records {self.run_dir}` once")
            if not self.made_by(recorded):
                differ = sorted(key for key in set(recorded["values"]) | set(current["values"])
                                if recorded["values"].get(key, "<unset>") != current["values"].get(key, "<unset>"))
                raise ValueError(
                    f"{self.run_dir} was made by {recorded.get('configs')} {recorded.get('overrides')}, whose "
                    f"values differ from this stage's {current['configs']} {current['overrides']} in "
                    f"{', '.join(differ[:6])}{' …' if len(differ) > 6 else ''}: remove the directory to rerun it")
            remade = self.remade_inputs(recorded)
            if remade:
                raise ValueError(f"{self.run_dir} was made from {', '.join(remade)} as it was before it was made "
                                 "again: remove the directory to rerun it")
            # a finished run keeps what it recorded (none, for runs from before inputs were recorded); a resumed
            # one records the inputs it goes on from
            if recorded.get("inputs_sha256") or self.summary_path.exists():
                inputs = {key: recorded[key] for key in INPUT_KEYS if recorded.get(key)}
            else:
                inputs = self.inputs_fingerprint()
        elif self.summary_path.exists() or (Path(self.run_dir) / "checkpoints").exists():
            raise ValueError(f"{self.run_dir} holds a run without stage.json; remove it or choose another --runs")
        else:
            inputs = self.inputs_fingerprint()
            path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({**current, **inputs}, indent=1))

    def inputs_fingerprint(self) -> dict[str, dict[str, str]]:
        """What stage.json records of the inputs: each one's summary.json and result, hashed ({} without inputs)."""
        if not self.inputs:
            return {}
        return {"inputs_sha256": self.inputs_sha256(), "inputs_result_sha256": self.inputs_result_sha256()}


RUN_DIR_KEY = "trainer.default_root_dir"
"""Set by the stage to its run directory, whatever a config says: not a value of what made the run."""

INPUT_KEYS = ("inputs_sha256", "inputs_result_sha256")
"""The keys of a stage's fingerprint that record what it was made from, not how."""

COST_KEYS = ("wall_time_s", "train_samples_per_s", "peak_gpu_memory_gb")
"""The keys of a summary that measure what a run cost, which differ between two makings of the same run."""


PROVENANCE_KEYS = ("code",)
"""The keys of a summary that say what made the run (the code's commit), not what it measured."""


def result_sha256(summary: dict) -> str:
    """The sha256 of what a run measured: its summary without the keys that measure its cost or record its
    provenance."""
    result = {key: value for key, value in summary.items() if key not in COST_KEYS + PROVENANCE_KEYS}
    return hashlib.sha256(json.dumps(result, sort_keys=True).encode()).hexdigest()


def summary_sha256(run_dir: str) -> str | None:
    """The sha256 of a run's summary.json (None before it has one)."""
    summary = Path(run_dir) / "summary.json"
    return hashlib.sha256(summary.read_bytes()).hexdigest() if summary.exists() else None


def summary_result_sha256(run_dir: str) -> str | None:
    """`result_sha256` of a run's summary (None before it has one)."""
    return result_sha256(load_summary(Path(run_dir))) if (Path(run_dir) / "summary.json").exists() else None


def run_stage(stage: Stage, log_dir: Path | None = None, env: dict | None = None,
              started: Callable[[subprocess.Popen], None] | None = None, rank: int = 0) -> dict:
    """Run (or reuse, or resume) one stage; returns its summary. `env`: the fit's environment (its devices).
    `started` is handed the fit's process (a launcher forwards preemption signals to it). `rank`: the task of a
    multi-task launch (SLURM starts one per device, each running this): only task 0 records the stage and
    logs to `fit.log`, the others to `fit.rank<N>.log`."""
    if rank == 0:
        stage.check_or_record_fingerprint()
    if stage.summary_path.exists():
        log.info("[%s] reusing %s", stage.label, stage.summary_path)
        return stage.summary()
    command = [sys.executable, str(REPO_ROOT / "main.py"), "fit", *(arg for c in stage.configs for arg in ("--config", c)),
               "--trainer.default_root_dir", stage.run_dir, "--trainer.enable_progress_bar", "false",
               *stage.overrides]
    if any((Path(stage.run_dir) / "checkpoints").glob("*.ckpt")):
        command += ["--ckpt_path", "last"]
    log_path = (log_dir or Path(stage.run_dir)) / ("fit.log" if rank == 0 else f"fit.rank{rank}.log")
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log.info("[%s] running: %s  (log: %s)", stage.label, " ".join(command), log_path)
    start = time.perf_counter()
    with open(log_path, "w") as out:
        process = subprocess.Popen(command, cwd=REPO_ROOT, stdout=out, stderr=subprocess.STDOUT, env=env)
        if started is not None:
            started(process)
        returncode = process.wait()
    if returncode != 0:
        raise RuntimeError(f"stage {stage.label!r} failed (exit {returncode}); see {log_path}")
    if not stage.summary_path.exists():  # Lightning ends a fit stopped by SIGTERM with exit status 0
        raise RuntimeError(f"stage {stage.label!r} ended without {stage.summary_path} (stopped before the end of "
                           f"its fit?); see {log_path}. Running it again resumes from its last checkpoint")
    log.info("[%s] done in %.0fs", stage.label, time.perf_counter() - start)
    return stage.summary()
