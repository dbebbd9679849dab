"""The run's `summary.json` at the end of fit (zero-shot CA/ASR are reported by modules.core.evaluation)."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import Callback

from datamodules.pretrain import ShardDataModule
from datamodules.run_dir import DataRecord
from datamodules.stream_health import skipped_samples
from lightning_app.checkpointing import DivergedError, refuse_nonfinite_weights
from lightning_app.code_version import code_version
from lightning_app.linear_probe import LinearProbe
from lightning_app.ranks import over_ranks
from modules.core.base import CLIPModule
from modules.core.evaluation import Evaluation


def _scalar(value: Any) -> Any:
    return value.item() if isinstance(value, torch.Tensor) else value


def data_record(trainer) -> DataRecord:
    """The run's record of its data (an empty one for a datamodule that is not the toolkit's)."""
    data = trainer.datamodule
    return data.record() if isinstance(data, ShardDataModule) else DataRecord()


def _health_over_ranks(trainer) -> dict[str, int]:
    """The data health counts of the whole run: each rank counts what its own stream read (collective)."""
    health = data_record(trainer).data_health
    if not health:
        return health
    names = sorted(health)
    return dict(zip(names, over_ranks(trainer, [health[name] for name in names], "sum", torch.int64)))


THROUGHPUT_WARMUP_BATCHES = 5


class RunSummary(Callback):
    """Writes `RUN/summary.json`: final CA/ASR, attack, poison count, steps, wall time, data health (summed
    over ranks), training throughput of this process's fit (`train_samples_per_s`, all ranks, after the
    first few batches) and, on CUDA, the peak GPU memory of rank zero. A model that is not finite gets none.

    The wall time is that of the whole run: a resumed run adds the time spent before its checkpoint.
    """

    def __init__(self) -> None:
        self._fit_start = time.perf_counter()
        self._earlier_wall_time = 0.0
        self._batches = 0
        self._samples = 0
        self._train_seconds = 0.0
        self._previous: float | None = None

    def wall_time(self) -> float:
        return self._earlier_wall_time + time.perf_counter() - self._fit_start

    def state_dict(self) -> dict:
        return {"wall_time_s": self.wall_time()}

    def load_state_dict(self, state_dict: dict) -> None:
        self._earlier_wall_time = state_dict.get("wall_time_s", 0.0)

    def on_fit_start(self, trainer, pl_module):
        self._fit_start = time.perf_counter()

    def on_train_epoch_start(self, trainer, pl_module):
        self._previous = None  # the time between epochs (validation, checkpoints) is not training

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        now = time.perf_counter()
        self._batches += 1
        if self._batches > THROUGHPUT_WARMUP_BATCHES and self._previous is not None:
            self._train_seconds += now - self._previous
            self._samples += len(batch["image"]) * trainer.world_size
        self._previous = now

    def throughput(self) -> float | None:
        """Training samples per second over every rank, batch end to batch end after the warm-up batches,
        epochs' boundaries excluded (None: too few batches)."""
        return self._samples / self._train_seconds if self._samples and self._train_seconds > 0 else None

    def on_train_epoch_end(self, trainer, pl_module):
        health = data_record(trainer).data_health
        if health:
            # each rank counts what its own stream read: the run's figure is the sum over ranks
            pl_module.log("data/skipped_samples", float(skipped_samples(health)), reduce_fx="sum", sync_dist=True)
            pl_module.log("data/lost_shards", float(health.get("lost_shards", 0)), reduce_fx="sum", sync_dist=True)

    def on_fit_end(self, trainer, pl_module):
        # every rank checks its weights (its partition under ZeRO-3); a diverged model gets no summary
        refuse_nonfinite_weights(trainer, pl_module, "summary.json")
        metrics = {k: _scalar(v) for k, v in trainer.callback_metrics.items()}
        nonfinite = sorted(k for k, v in metrics.items() if isinstance(v, float) and not math.isfinite(v))
        if any(k.startswith("val/") for k in nonfinite):
            raise DivergedError(f"the final evaluation is not finite ({', '.join(nonfinite)}): the run "
                                "diverged and summary.json is not written")
        health = _health_over_ranks(trainer)
        if trainer.is_global_zero:
            self._write(trainer, pl_module, metrics, health)

    def _write(self, trainer, pl_module, metrics: dict, health: dict) -> None:
        data = data_record(trainer)
        evaluation = next((c for c in trainer.callbacks if isinstance(c, Evaluation)), None)
        summary = {
            "before": evaluation.initial if evaluation is not None else None,
            "ca_top1": metrics.get("val/ca_top1"),
            "ca_top5": metrics.get("val/ca_top5"),
            "asr": metrics.get("val/asr"),
            "attack": data.attack,
            "target": data.target,
            "poison_count": data.poison_count,
            "excluded": data.excluded,
            "poisoned_captions": data.poisoned_captions,
            "module": type(pl_module).__name__,
            "steps": trainer.global_step,
            "epochs": trainer.current_epoch,
            "wall_time_s": round(self.wall_time(), 2),
            "train_samples_per_s": self.throughput(),
            "peak_gpu_memory_gb": torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None,
            "data_health": health,
            "eval_skipped_images": metrics.get("val/skipped_images"),
            "eval": evaluation.last if evaluation is not None else None,
            "linear_probe": next((c.result for c in trainer.callbacks if isinstance(c, LinearProbe)), None),
            "metrics": metrics,
            "code": code_version(),
            **(pl_module.summary_extras() if isinstance(pl_module, CLIPModule) else {}),
        }
        path = Path(trainer.default_root_dir) / "summary.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(summary, indent=1, sort_keys=True))
