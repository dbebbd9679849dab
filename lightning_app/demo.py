"""The embedded demo, end to end on a CPU: `python -m lightning_app.demo` (from the repository root).

Builds the embedded benchmark, pretrains a tiny CLIP with a BadNet backdoor and a clean control with
the same recipe, and writes a results table to `runs/demo/results.md`. Stages that already finished
are reused; an interrupted one resumes from its last checkpoint.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from lightning_app.pipelines import Stage, run_stage
from lightning_app.report import results_table


def demo_stages(root: Path) -> list[Stage]:
    return [
        Stage("poisoned (BadNet)", "configs/embedded/badnet.yaml", str(root / "badnet")),
        Stage("clean control", "configs/embedded/clean.yaml", str(root / "clean")),
    ]


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", default="runs/demo", help="directory holding the demo's run directories")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    root = Path(args.runs)
    rows = [(stage.label, run_stage(stage)) for stage in demo_stages(root)]
    table = results_table(rows)
    (root / "results.md").write_text(table + "\n")
    print(f"\n{table}\n\nwritten to {root / 'results.md'}")
    return table


if __name__ == "__main__":
    main()
