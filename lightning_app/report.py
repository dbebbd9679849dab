"""Tables from run summaries, and writing them into README.md or docs/ between markers.

A block in a markdown file looks like:
    <!-- results:NAME -->
    ...generated table...
    <!-- /results:NAME -->
`write_block(path, NAME, text)` replaces what is between the markers; nothing is typed by hand.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

from datamodules.run_dir import RunDir


def fmt(value, digits: int = 3) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def attack_name(summary: dict) -> str:
    attack = summary.get("attack")
    if not attack:
        return "none"
    if attack["name"] == "multi":
        parts = ", ".join(part["name"] for part in attack["triggers"])
        targets = ", ".join(attack["targets"]) if attack.get("targets") else summary.get("target", "")
        return f"multi ({parts}) → {targets}"
    params = ", ".join(f"{k}={v}" for k, v in sorted(attack.items())
                       if k not in ("name", "seed") and v is not None and not (k == "cell" and v == 1))
    target = f" → {summary['target']}" if summary.get("target") else ""
    captions = f", {summary['poisoned_captions']} captions" if summary.get("poisoned_captions") else ""
    return f"{attack['name']} ({params}){target}{captions}"


def results_table(rows: Sequence[tuple[str, dict]]) -> str:
    """Markdown table: one row per (label, summary)."""
    lines = [
        "| run | attack | poisoned pairs | CA top-1 | CA top-5 | ASR | steps | wall time (s) |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for label, s in rows:
        lines.append(
            f"| {label} | {attack_name(s)} | {fmt(s.get('poison_count'))} | {fmt(s.get('ca_top1'))} | "
            f"{fmt(s.get('ca_top5'))} | {fmt(s.get('asr'))} | {fmt(s.get('steps'))} | {fmt(s.get('wall_time_s'), 0)} |"
        )
    return "\n".join(lines)


def _block_pattern(name: str) -> re.Pattern:
    return re.compile(re.escape(f"<!-- results:{name} -->") + r"(.*?)" + re.escape(f"<!-- /results:{name} -->"), re.S)


def read_block(path: str | Path, name: str) -> str | None:
    """What the block NAME of a file holds now (None when the file or the block is not there)."""
    path = Path(path)
    found = _block_pattern(name).search(path.read_text()) if path.exists() else None
    return found.group(1).strip() if found else None


def write_block(path: str | Path, name: str, text: str) -> None:
    path = Path(path)
    begin, end = f"<!-- results:{name} -->", f"<!-- /results:{name} -->"
    content = path.read_text() if path.exists() else ""
    block = f"{begin}\n{text.strip()}\n{end}"
    pattern = _block_pattern(name)
    if pattern.search(content):
        content = pattern.sub(lambda _: block, content)
    else:
        content = content.rstrip() + "\n\n" + block + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(content)


def load_summary(run_dir: Path) -> dict:
    return RunDir(run_dir).summary()


def main(argv: list[str] | None = None) -> None:
    """`python -m lightning_app.report RUN_DIR... --file docs/results/NAME.md --block NAME [--note TEXT]`"""
    import argparse

    parser = argparse.ArgumentParser(description="Write a results table of run directories into a markdown file.")
    parser.add_argument("run_dirs", nargs="+")
    parser.add_argument("--file", required=True)
    parser.add_argument("--block", required=True)
    parser.add_argument("--note", default="")
    args = parser.parse_args(argv)
    rows = [(f"`{d}`", load_summary(Path(d))) for d in args.run_dirs]
    command = "python -m lightning_app.report " + " ".join(args.run_dirs) + f" --file {args.file} --block {args.block}"
    write_block(args.file, args.block, f"{args.note}\n\nTable written by `{command}`.\n\n{results_table(rows)}")


if __name__ == "__main__":
    main()
