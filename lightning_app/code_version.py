"""The version of the code that made a run, for its summary.json: the git commit of the checkout and whether
tracked files other than the results a study writes back (its archive under results/, the tables in docs/
and README.md) differed from it. A run's fingerprint is its config (lightning_app.pipelines), so two makings
of one config on different code are the same run to the runner; this records which code each was, so that
a result that changed with the code can be traced to the commit that changed it.

    python -c "from lightning_app.code_version import code_version; print(code_version())"
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from lightning_app.config_values import REPO_ROOT

# What `python -m lightning_app.experiments run --archive --update-docs` rewrites while a study runs: a run
# started after the first archived one would otherwise say its code was modified when only results were
RESULTS = (":(exclude)results", ":(exclude)docs", ":(exclude)README.md")


def _git(root: Path, *args: str) -> str | None:
    try:
        result = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return result.stdout.strip() if result.returncode == 0 else None


def code_version(root: Path = REPO_ROOT) -> dict | None:
    """`{"commit": <sha>, "dirty": <tracked files modified, results aside>}` of the checkout at `root`, or None
    when it is not a git checkout (an installed copy) or git is not there."""
    commit = _git(root, "rev-parse", "HEAD")
    if not commit:
        return None
    status = _git(root, "status", "--porcelain", "--untracked-files=no", "--", ".", *RESULTS)
    return {"commit": commit, "dirty": bool(status) if status is not None else None}
