"""What a user sees when a command fails on their input: one line that names the file, key or option,
not the 60–100 lines of jsonargparse and Lightning traceback around it. `CLIP_BACKDOOR_DEBUG=1` shows
the traceback too.

Also reads the `--config` files once before jsonargparse does, so that a YAML syntax error, NUL bytes or
a binary file are reported with the file's name (jsonargparse says `in "<unicode string>"`, or raises a
bare `UnicodeDecodeError`).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

import yaml

from datamodules.stream_health import CorruptDataError
from lightning_app.checkpointing import DivergedError

DEBUG_ENV = "CLIP_BACKDOOR_DEBUG"
USER_ERRORS = (ValueError, DivergedError, CorruptDataError)
"""User errors are ValueErrors (the house rule); a diverged run and corrupt data end a run with a message too."""
_UNION_ERROR = "Does not validate against any of the Union subtypes"

T = TypeVar("T")


def config_files(argv: Sequence[str]) -> list[Path]:
    """The paths given to `--config`/`-c` (also as `--config=PATH`)."""
    paths = []
    for index, arg in enumerate(argv):
        if arg in ("--config", "-c") and index + 1 < len(argv):
            paths.append(Path(argv[index + 1]))
        elif arg.startswith("--config="):
            paths.append(Path(arg.removeprefix("--config=")))
    return paths


def check_config_file(path: Path) -> None:
    """A config must be UTF-8 YAML text without NUL bytes; an error names the file (and the line)."""
    if not path.is_file():
        return  # jsonargparse names a missing file itself
    data = path.read_bytes()
    nul = data.find(b"\0")
    if nul >= 0:
        raise ValueError(f"config {path}: holds NUL bytes (at byte {nul}): not a YAML text file")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exn:
        raise ValueError(f"config {path}: not UTF-8 text (byte {exn.start}): not a YAML file") from None
    try:
        yaml.safe_load(text)
    except yaml.YAMLError as exn:
        mark = getattr(exn, "problem_mark", None)
        where = f", line {mark.line + 1} column {mark.column + 1}" if mark is not None else ""
        raise ValueError(f"config {path}{where}: not valid YAML: {getattr(exn, 'problem', None) or exn}") from None


def one_line(exn: BaseException) -> str:
    """The user's part of an error: for jsonargparse's "does not validate against any Union subtype", the
    subtypes' own errors (our ValueError among them) without the namespace dump."""
    text = str(exn)
    if text.startswith(_UNION_ERROR):
        reasons = [line.strip()[2:] for line in text.splitlines()
                   if line.strip().startswith("- ") and "Expected a <class 'NoneType'>" not in line]
        if reasons:
            return "; ".join(reasons)
    return text.strip().splitlines()[0] if text.strip() else type(exn).__name__


def report_user_errors(command: Callable[[], T], argv: Sequence[str] | None = None) -> T:
    """Run `command`; a user error is printed as one line on stderr and exits 1."""
    try:
        for path in config_files(sys.argv[1:] if argv is None else argv):
            check_config_file(path)
        return command()
    except USER_ERRORS as exn:
        if os.environ.get(DEBUG_ENV):
            raise
        print(f"error: {one_line(exn)}\n(the traceback: {DEBUG_ENV}=1)", file=sys.stderr)
        raise SystemExit(1) from None
