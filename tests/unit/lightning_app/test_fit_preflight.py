"""A short CPU run through the CLI: trains, evaluates, writes the run directory, resumes.

The fits of these tests: tests/integration/test_end_to_end.py."""

from pathlib import Path

import pytest
from helpers.end_to_end import _args

from lightning_app.cli import BackdoorCLI


def test_missing_shards_fail_before_training_and_name_the_option(small_benchmark, tmp_path):
    args = _args(small_benchmark, tmp_path / "run", extra=("--data.init_args.train_shards",
                                                             str(Path(small_benchmark.root) / "nope/{00000..00003}.tar")))
    with pytest.raises(ValueError, match="data.train_shards"):
        BackdoorCLI(args=args)
    assert not (tmp_path / "run" / "checkpoints").exists()
