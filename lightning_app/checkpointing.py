"""Checkpoints of runs that get killed (preemption, OOM killer).

- `AtomicCheckpointIO`: Lightning writes checkpoints in place, so a kill while saving leaves a
  truncated file. This writes a `.partial` file beside the target and renames it over the target,
  which POSIX makes atomic on one filesystem: every `.ckpt` is whole.
- `run_checkpoints`: one `last.ckpt` (refreshed at each epoch end, so it holds the final weights),
  and with step checkpoints the newest `keep` of them, pruned by step number across resumes too.
- `RunCheckpoint`: never writes weights holding NaN or inf (a diverged run stops instead).
- `newest_checkpoint`: what `--ckpt_path last` means here (DeepSpeed directories only once whole). Lightning's "last" looks only for
  `*last*.ckpt` and, finding none, silently trains from scratch; a kill between writing the step
  checkpoint and refreshing `last.ckpt` leaves exactly that. We take the newest whole checkpoint.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any, Optional

import torch
from lightning.fabric.plugins import TorchCheckpointIO
from lightning.pytorch.callbacks import ModelCheckpoint

from lightning_app.ranks import over_ranks


class AtomicCheckpointIO(TorchCheckpointIO):
    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Optional[Any] = None) -> None:
        if "://" in str(path):  # remote filesystems: fsspec's own semantics
            return super().save_checkpoint(checkpoint, path, storage_options)
        path = Path(path)
        partial = path.with_name(path.name + ".partial")
        partial.unlink(missing_ok=True)  # left by an earlier failed write (a full disk): it only takes space
        try:
            super().save_checkpoint(checkpoint, partial, storage_options)
        except BaseException:
            partial.unlink(missing_ok=True)
            raise
        os.replace(partial, path)


WHOLE = "whole"
"""Written into a DeepSpeed checkpoint directory once every rank's shards are in it."""


def is_whole(path: Path) -> bool:
    """A checkpoint file (written atomically), or a checkpoint directory marked whole."""
    return not path.is_dir() or (path / WHOLE).exists()


def newest_checkpoint(directory: Path) -> Path:
    """The most recently written whole `.ckpt` in `directory`: a file (they appear whole, so newest = latest
    state), or a DeepSpeed directory marked whole after its save. DeepSpeed itself writes its `latest` tag
    on rank 0 before the other ranks' shards are known to be written, so a kill while saving can leave a
    directory that looks finished and is not."""
    candidates = sorted((path for path in Path(directory).glob("*.ckpt") if is_whole(path)),
                        key=lambda path: path.stat().st_mtime_ns)
    if not candidates:
        raise ValueError(f"--ckpt_path last: no checkpoint in {directory} to resume from")
    return candidates[-1]


class DivergedError(RuntimeError):
    """The run diverged (a NaN or inf in its loss or weights): it stops, and no result of it is written."""


class NonFiniteWeightsError(DivergedError):
    """The model's weights hold NaN or inf: no checkpoint or summary of them is written."""


def owned_values(parameter) -> torch.Tensor:
    """The values of `parameter` this rank holds. Under ZeRO-3 that is its partition (`ds_tensor`) without
    the padding: DeepSpeed allocates partitions with `torch.empty` and copies only the parameter's own
    elements in, so the tail of the last partitions (or a whole partition past the end) is uninitialized
    memory that may read as NaN and means nothing."""
    partition = getattr(parameter, "ds_tensor", None)
    if partition is None:
        return parameter.detach()
    start = parameter.ds_zero_partition_rank * partition.ds_numel
    owned = max(0, min(parameter.ds_numel - start, partition.ds_numel))
    return partition.detach().view(-1).narrow(0, 0, owned)


def nonfinite_parameters(module) -> list[str]:
    """Names of this rank's parameters holding a NaN or inf (under ZeRO-3, in this rank's partition)."""
    return [name for name, parameter in module.named_parameters()
            if not torch.isfinite(owned_values(parameter)).all()]


def refuse_nonfinite_weights(trainer, module, what: str) -> None:
    """Raise on every rank when any rank's weights are not finite (collective: every rank calls it)."""
    bad = nonfinite_parameters(module)
    if over_ranks(trainer, [len(bad)], "sum")[0] > 0:
        named = f": {', '.join(bad[:5])}{' …' if len(bad) > 5 else ''}" if bad else " on another rank"
        raise NonFiniteWeightsError(f"the weights are not finite at step {trainer.global_step}{named}; the run "
                                    f"diverged and {what} is not written")


def save_marked(trainer, filepath: str, save) -> None:
    """`save()` a checkpoint at `filepath`, refusing non-finite weights, and mark a DeepSpeed checkpoint
    directory whole once its save returned on every rank (DeepSpeed's save ends in a barrier), so that
    `newest_checkpoint` never resumes from a cut one. Every rank calls it."""
    refuse_nonfinite_weights(trainer, trainer.lightning_module, f"checkpoint {filepath}")
    marker = Path(filepath) / WHOLE
    if trainer.is_global_zero and marker.parent.is_dir():  # last.ckpt is saved over in place: unmarked
        marker.unlink(missing_ok=True)  # until the new save is whole (DeepSpeed's save starts with a barrier)
    save()
    if trainer.is_global_zero and Path(filepath).is_dir():
        marker.touch()


def save_step_checkpoint(trainer) -> Optional[Path]:
    """A step checkpoint now (`stepNNNNNNN.ckpt` beside the run's others), as `StepCheckpoint` writes at a
    batch end; None when the run writes no checkpoints."""
    run = next((c for c in trainer.checkpoint_callbacks if isinstance(c, RunCheckpoint)), None)
    if run is None or run.dirpath is None:
        return None
    path = Path(run.dirpath) / f"step{trainer.global_step:07d}.ckpt"
    save_marked(trainer, str(path), lambda: trainer.save_checkpoint(path))
    return path


class RunCheckpoint(ModelCheckpoint):
    """ModelCheckpoint that never writes non-finite weights, and marks a DeepSpeed checkpoint directory
    whole once written (`save_marked`)."""

    def _save_checkpoint(self, trainer, filepath: str) -> None:
        save_marked(trainer, filepath, lambda: super(RunCheckpoint, self)._save_checkpoint(trainer, filepath))


class StepCheckpoint(RunCheckpoint):
    """Every N optimizer steps, `stepNNNNNNN.ckpt`; keeps the newest `keep` of the directory's step
    checkpoints by step number, those written before a resume included (ModelCheckpoint's own top-k
    only knows the files it wrote in this process)."""

    def __init__(self, dirpath: Path, every_n_steps: int, keep: int):
        super().__init__(dirpath=str(dirpath), every_n_train_steps=every_n_steps, filename="step{step:07d}",
                         auto_insert_metric_name=False, save_top_k=-1, save_last=False)
        self.keep = keep

    def _save_checkpoint(self, trainer, filepath: str) -> None:
        super()._save_checkpoint(trainer, filepath)
        if trainer.is_global_zero:
            prune_step_checkpoints(Path(self.dirpath), self.keep)


def prune_step_checkpoints(directory: Path, keep: int) -> None:
    """Remove all but the `keep` step checkpoints (`stepNNNNNNN.ckpt`) of the highest step numbers: files, or
    the directories DeepSpeed writes (one shard per rank inside)."""
    steps = sorted(directory.glob("step*.ckpt"), key=lambda p: int(p.stem.removeprefix("step")))
    for stale in steps[:-keep]:
        if stale.is_dir():
            shutil.rmtree(stale, ignore_errors=True)
        else:
            stale.unlink(missing_ok=True)


def run_checkpoints(checkpoint_dir: Path, every_n_steps: Optional[int], keep: int) -> list[ModelCheckpoint]:
    """An end-of-epoch checkpoint and `last.ckpt`; with `every_n_steps`, also a step checkpoint (the
    newest `keep` kept), so that `--ckpt_path last` (the newest whole checkpoint) resumes mid-epoch."""
    callbacks = [RunCheckpoint(dirpath=str(checkpoint_dir), save_last=True, filename="epoch{epoch:03d}-step{step:07d}",
                                 auto_insert_metric_name=False)]
    if every_n_steps is not None:
        if every_n_steps < 1:
            raise ValueError(f"checkpoint_every_n_steps must be ≥ 1, got {every_n_steps}")
        if keep < 1:
            raise ValueError(f"keep_step_checkpoints must be ≥ 1, got {keep}")
        callbacks.append(StepCheckpoint(checkpoint_dir, every_n_steps, keep))
    return callbacks
