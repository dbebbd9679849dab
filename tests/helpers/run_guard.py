"""Helpers shared by the unit and integration tests of run_guard."""

from __future__ import annotations

from pathlib import Path


def _args(bench, run_dir, *extra: str) -> list[str]:
    return ["fit", "--config", "configs/embedded/badnet.yaml", "--trainer.default_root_dir", str(run_dir),
            "--trainer.max_epochs", "1", "--trainer.enable_progress_bar", "false", "--data.init_args.embedded", "null",
            "--data.init_args.train_shards", bench.pretrain_urls, "--data.init_args.eval.directory", bench.eval_dir,
            "--data.init_args.batch_size", "32", "--data.init_args.poison.rate", "0.1",
            "--model.init_args.optimizer.warmup_steps", "5", *extra]


def _corrupt_one_eval_image(eval_dir: Path, tmp_path: Path) -> tuple[Path, str]:
    """A copy of an eval set whose first image member's bytes are garbage (same size, so offsets hold)."""
    import shutil
    import tarfile

    copy = tmp_path / "eval"
    shutil.copytree(eval_dir, copy)
    shard = copy / "test" / "0.tar"
    with tarfile.open(shard) as tar:
        member = next(m for m in tar.getmembers() if not m.name.endswith(".cls"))
    data = bytearray(shard.read_bytes())
    data[member.offset_data: member.offset_data + member.size] = b"\0" * member.size
    shard.write_bytes(bytes(data))
    return copy, member.name.split(".")[0]
