"""The DataModule's loaders: the training loader that hands the stream its epoch and resumes exactly, and
the eval sampler over a set already split by rank."""

from __future__ import annotations

import multiprocessing
from typing import Optional

from torch.utils.data import DataLoader, DistributedSampler

from datamodules.stream import PairStream


class EpochSyncedLoader(DataLoader):
    """The training loader. Hands the epoch to the stream before each pass (Lightning only does so for
    samplers), and resumes exactly from any checkpoint: `resume_from` is the position a checkpoint
    recorded (`ShardDataModule.load_state_dict`), consumed by the first pass after it.

    The position goes through the DataModule's state, which Lightning restores from every checkpoint,
    and not only through the loader's own `state_dict`, which it restores only from a mid-epoch one:
    from an epoch-end checkpoint the loader's first pass is created before Lightning advances its epoch
    counter (`FitLoop.setup_data`), so the trainer's epoch alone would replay the finished epoch.
    """

    def __init__(self, dataset: PairStream, position_source, consumed: dict[str, int], resume_from, **kwargs):
        super().__init__(dataset, **kwargs)
        self._position_source = position_source
        self._resume_from = resume_from
        self.consumed = consumed
        """Health counts of the batches training has taken from this loader (all epochs, over resumes)."""

    def _start(self) -> tuple[int, int]:
        """(epoch, batches of it already trained on) where this pass starts; a finished epoch is the
        start of the next one."""
        resume = self._resume_from()
        epoch, batches = (resume["epoch"], resume["batches"]) if resume is not None else self._position_source()
        return (epoch + 1, 0) if batches >= len(self) else (epoch, batches)

    def __iter__(self):
        epoch, skip = self._start()
        self.dataset.set_epoch(epoch)
        self.dataset.skip_batches = skip
        try:
            batches = super().__iter__()  # workers copy the dataset (and skip_batches) as they start
        finally:
            self.dataset.skip_batches = 0
        return self._counted(batches)

    def _counted(self, batches):
        for batch in batches:
            for name, count in batch.pop("health", {}).items():
                self.consumed[name] = self.consumed.get(name, 0) + int(count)
            yield batch

    def state_dict(self) -> dict:
        """What makes the loader resumable to Lightning (no "not resumable" warning on a mid-epoch resume);
        the position itself is restored through the DataModule's state."""
        epoch, batches = self._position_source()
        return {"epoch": epoch, "batches": batches}

    def load_state_dict(self, state: dict) -> None:
        pass


class RankLocalSampler(DistributedSampler):
    """Sequential order over a dataset already split by rank. Being a DistributedSampler, Lightning
    does not wrap it in its own, which would pad the split with duplicates and skew CA/ASR."""

    def __init__(self, length: int):  # noqa: D107 - deliberately does not call DistributedSampler.__init__
        self.length = length

    def __iter__(self):
        return iter(range(self.length))

    def __len__(self) -> int:
        return self.length

    def set_epoch(self, epoch: int) -> None:
        pass


class TrainingPosition:
    """The training stream's position (epoch, batches of it this rank trained on) and the health counts of
    what training consumed. Saved in every checkpoint through the DataModule's state, so a resume from
    any of them, mid-epoch or at an epoch's end, continues with the batches and counts of an
    uninterrupted run."""

    def __init__(self) -> None:
        self.consumed: dict[str, int] = {}
        """Health counts of the batches training has consumed (all epochs, over resumes)."""
        self._resume: Optional[dict] = None
        """The position a checkpoint recorded, until the first training pass after it starts."""

    def state(self, epoch: int, batches: int) -> dict:
        return {"train_position": {"epoch": epoch, "batches": batches, "health": dict(self.consumed)}}

    def restore(self, state: dict) -> None:
        position = state.get("train_position")
        if position is None:
            return
        self._resume = position
        self.consumed.clear()
        self.consumed.update(position["health"])

    def take_resume(self, stream: PairStream) -> Optional[dict]:
        """The restored position, once (None without one), checked against `stream`'s epoch length."""
        position, self._resume = self._resume, None
        if position is None:
            return None
        batches_per_epoch = len(stream)
        if not 0 <= position["batches"] <= batches_per_epoch:
            raise ValueError(f"the checkpoint's data position {position} does not fit this run's "
                             f"{batches_per_epoch} batches per epoch: resume with the same data, batch size, "
                             "devices and workers")
        stream.health.restore(position["health"])
        return position


def worker_context(method: str, workers: int, preload: list[str]) -> Optional[str]:
    """The multiprocessing start method of a loader's workers (None: no workers)."""
    if workers == 0:
        return None
    if method == "forkserver":
        # The server (one per training process) imports what a worker needs once, so that each worker,
        # started every epoch and every validation, forks from it ready instead of importing torch again.
        # Measured here (tiny model, 2 workers): the server's start ~4.5 s once per process; a loader's
        # first batch 0.5 s against fork's 0.2 s; without the preload, 2 epochs took 24 s against 4.4 s.
        multiprocessing.set_forkserver_preload(preload)
    return method
