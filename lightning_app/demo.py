"""The embedded demo, end to end on a CPU: `python -m lightning_app.demo` (from the repository root).

Builds the embedded benchmark, pretrains a tiny CLIP with a BadNet backdoor, cleans it with FT and
with CleanCLIP (same clean data, steps and lr), exports the poisoned and the cleaned model as open_clip
`local-dir` folders, and writes a results table (`results.md`) and a CA-vs-ASR plot (`ca_vs_asr.png`)
under `runs/demo/`. Stages that already finished are reused; an interrupted one resumes.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from lightning_app.export import export_run
from lightning_app.pipelines import Stage, run_stage
from lightning_app.plots import ca_vs_asr_plot
from lightning_app.report import results_table


def demo_stages(root: Path) -> list[Stage]:
    poisoned = root / "badnet"
    starts_from_poisoned = [
        "--model.init_args.model.pretrained", str(poisoned / "checkpoints" / "last.ckpt"),
        "--data.init_args.trigger_dir", str(poisoned / "trigger"),
    ]
    return [
        Stage("poisoned (BadNet)", "configs/embedded/badnet.yaml", str(poisoned)),
        Stage("FT", "configs/embedded/ft.yaml", str(root / "ft"), starts_from_poisoned),
        Stage("CleanCLIP", "configs/embedded/cleanclip.yaml", str(root / "cleanclip"), starts_from_poisoned),
    ]


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", default="runs/demo", help="directory holding the demo's run directories")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    root = Path(args.runs)
    stages = demo_stages(root)
    rows = [(stage.label, run_stage(stage)) for stage in stages]
    for stage in (stages[0], stages[-1]):
        export_run(stage.run_dir, root / "exports" / Path(stage.run_dir).name)
    table = results_table(rows)
    (root / "results.md").write_text(table + "\n")
    plot = ca_vs_asr_plot(rows, root / "ca_vs_asr.png")
    print(f"\n{table}\n\ntable: {root / 'results.md'}\nplot: {plot}\n"
          f"open_clip exports: {root / 'exports'} (open_clip.create_model_and_transforms('local-dir:PATH'))")
    return table


if __name__ == "__main__":
    main()
