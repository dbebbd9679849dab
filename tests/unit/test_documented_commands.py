"""Every command README.md and docs/ show names a module or script that exists and answers `--help`, and
every repository file it names exists; every `main.py fit` composition in them parses.

docs/archive/ is left out: it is the record of tables made by entry points that no longer exist, and
says so at its top.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest
from helpers.repo import REPO

from lightning_app.cli import BackdoorCLI

PAGES = [REPO / "README.md", *sorted(p for p in (REPO / "docs").rglob("*.md") if "archive" not in p.parts)]
COMMAND = re.compile(r"(?:^|[`\s])(python3? (?:-m [\w.]+|[\w/.-]+\.py)[^`\n]*)", re.M)
PLACEHOLDER = re.compile(r"\b(RUN|PATH|OUT|NAME|STAGE|AXIS|VALUE|SEEDS?|BLOCK)\b|/path/to/")
"""A word the reader replaces (`experiments/NAME.yaml`, `RUN/checkpoints/last.ckpt`)."""
REPO_PATH = re.compile(r"^(configs|experiments|benchmarks|tests|lightning_app|modules|datamodules)/[\w/.{}-]*[\w}]$")


def documented_commands() -> list[tuple[str, list[str]]]:
    """(page, argv) of every `python -m X ...` / `python path.py ...` in the pages, continued lines joined."""
    found = []
    for page in PAGES:
        text = re.sub(r"\\\n\s*", " ", page.read_text())
        for match in COMMAND.finditer(text):
            line = match.group(1).split("#")[0].split("&&")[0].strip()
            try:
                argv = shlex.split(line)
            except ValueError:
                argv = line.split()
            found.append((str(page.relative_to(REPO)), argv[1:]))
    return found


def _target(argv: list[str]) -> tuple[str, ...]:
    return tuple(argv[:2]) if argv[0] == "-m" else (argv[0],)


def test_the_pages_show_commands():
    targets = {_target(argv) for _, argv in documented_commands()}
    assert ("-m", "lightning_app.experiments") in targets and ("main.py",) in targets


def test_every_documented_module_and_script_answers_help():
    targets = sorted({_target(argv) for _, argv in documented_commands()} - {("main.py",)})

    def help_of(target: tuple[str, ...]) -> tuple[tuple[str, ...], subprocess.CompletedProcess]:
        return target, subprocess.run([sys.executable, *target, "--help"], cwd=REPO, capture_output=True, text=True,
                                      timeout=300)

    with ThreadPoolExecutor(max_workers=4) as pool:
        failed = [f"python {' '.join(t)} --help: exit {r.returncode}: {r.stderr.strip()[-300:]}"
                  for t, r in pool.map(help_of, targets) if r.returncode != 0 or not r.stdout.strip()]
    assert not failed, "\n".join(failed)


def test_every_repository_file_a_command_names_exists():
    missing = [f"{page}: {token}" for page, argv in documented_commands() for token in argv
               if REPO_PATH.match(token) and "{" not in token and not PLACEHOLDER.search(token)
               and not (REPO / token).exists()]
    assert not missing, "\n".join(missing)


class _ParseOnly(BackdoorCLI):
    def instantiate_classes(self) -> None:
        pass




@pytest.mark.parametrize("page", [str(p.relative_to(REPO)) for p in PAGES])
def test_every_fit_composition_in_the_pages_parses(page):
    for shown, argv in documented_commands():
        if shown != page or argv[0] != "main.py" or argv[1:2] != ["fit"]:
            continue
        arguments = argv[2:]
        if any(PLACEHOLDER.search(a) for a in arguments) or "--print_config" in arguments:
            continue  # a template for the reader's own paths
        _ParseOnly(args=arguments, run=False)
