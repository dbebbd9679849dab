"""The base LightningModule every training and defense module shares: model loading, optimizer,
schedule and the zero-shot CA/ASR evaluation. Subclasses differ only in `training_step` (their loss)
and in what data they ask for (`needs_augmented_views`)."""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import ClassVar

import torch
from lightning.pytorch import LightningModule
from lightning.pytorch.strategies import DeepSpeedStrategy
from torch.optim.lr_scheduler import LambdaLR

from datamodules.transforms import ModelNeeds
from modules.core.evaluation import Evaluation, zeroshot_classifier
from modules.core.losses import clamped_logit_scale, make_clip_loss
from modules.core.model_loading import ModelConfig, build_model
from modules.core.scalar_parameters import store_scalars_as_vectors
from modules.core.summary_columns import SummaryColumns


@dataclass
class OptimizerConfig:
    """AdamW with linear warm-up and cosine decay; no weight decay on biases, norms and logit_scale."""

    lr: float = 5e-4
    """Peak learning rate."""
    weight_decay: float = 0.1
    """Decoupled weight decay on weight matrices and convolution kernels."""
    betas: tuple[float, float] = (0.9, 0.999)
    """AdamW betas."""
    eps: float = 1e-8
    """AdamW epsilon."""
    warmup_steps: int = 10_000
    """Steps of linear warm-up from 0 to `lr`."""
    min_lr_ratio: float = 0.0
    """Floor of the cosine decay, as a fraction of `lr`."""
    fused: bool = True
    """Use torch's fused AdamW kernel (CPU and CUDA; measured 1.5x faster steps on the tiny CPU model)."""

    def __post_init__(self) -> None:
        problems = [f"{name} {value!r}" for name, value, ok in (
            ("lr", self.lr, self.lr > 0), ("weight_decay", self.weight_decay, self.weight_decay >= 0),
            ("betas", self.betas, all(0 <= b < 1 for b in self.betas)), ("eps", self.eps, self.eps > 0),
            ("warmup_steps", self.warmup_steps, self.warmup_steps >= 0),
            ("min_lr_ratio", self.min_lr_ratio, 0 <= self.min_lr_ratio <= 1)) if not ok]
        if problems:
            raise ValueError("model.optimizer: out of range: " + ", ".join(problems) +
                             " (lr > 0, weight_decay ≥ 0, 0 ≤ betas < 1, eps > 0, warmup_steps ≥ 0, 0 ≤ min_lr_ratio ≤ 1)")


@contextlib.contextmanager
def eval_mode(module: torch.nn.Module):
    """Eval mode for a block of code: BatchNorm does not learn running statistics from these passes."""
    was_training = module.training
    module.eval()
    try:
        yield
    finally:
        module.train(was_training)


def no_weight_decay(name: str, param: torch.nn.Parameter) -> bool:
    return param.ndim < 2 or "bn" in name or "ln" in name or "bias" in name or "logit_scale" in name


def warmup_cosine(step: int, warmup: int, total: int, floor: float) -> float:
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))


class WarmupCosine:
    """`warmup_cosine` as LambdaLR's factor, with the total step count set at `on_train_start`.

    Asking `trainer.estimated_stepping_batches` in `configure_optimizers` makes Lightning create the
    training iterator before it restores a checkpoint, so a resumable loader never gets its state
    back and a mid-epoch resume replays the wrong batches. At `on_train_start` the loader exists.
    Its attributes are plain numbers, so LambdaLR's state_dict stays loadable with weights_only.
    """

    def __init__(self, warmup: int, floor: float):
        self.warmup = max(1, warmup)
        self.floor = floor
        self.total: int | None = None
        self.cycle: int | None = None
        """Restart the warm-up and decay every `cycle` steps (UBT's adaptive rounds); None: one schedule."""

    def __call__(self, step: int) -> float:
        if self.cycle is not None:
            return warmup_cosine(step % self.cycle, self.warmup, self.cycle, self.floor)
        if step < self.warmup:
            return (step + 1) / self.warmup
        assert self.total is not None, "the total step count is set at on_train_start"
        return warmup_cosine(step, self.warmup, self.total, self.floor)


def _offloads_optimizer(strategy) -> bool:
    return isinstance(strategy, DeepSpeedStrategy) and bool(strategy.config.get("zero_optimization", {}).get("offload_optimizer"))


EVAL_HEADINGS = {
    "ca_top1": "CA top-1", "ca_top5": "CA top-5", "asr": "ASR", "eval_seconds": "eval (s)",
    **{f"i2t_r{k}": f"image→text R@{k}" for k in (1, 5, 10)}, **{f"t2i_r{k}": f"text→image R@{k}" for k in (1, 5, 10)},
    **{f"asr_hit{k}": f"retrieval ASR Hit@{k}" for k in (1, 5, 10)},
}
"""Headings of the per-set columns of a study (`<set>/<metric>`, from summary.json's `eval` block)."""


class CLIPModule(LightningModule):
    needs_augmented_views = False
    changes_weights: ClassVar[bool] = True
    """Whether the model this module hands on differs from the one it was given (a detector's does not, so a
    study does not plot its CA/ASR as a defense's)."""
    summary_columns: ClassVar[tuple[SummaryColumns, ...]] = (
        SummaryColumns("metrics", "asr_", only=("val/asr_",), strip="val/asr_", heading="ASR {key}"),
        SummaryColumns("metrics", "cohesion_", only=("val/cohesion_",), strip="val/cohesion_",
                       headings={"cohesion_triggered": "triggered images' mean cosine",
                                 "cohesion_clean": "clean images' mean cosine"}),
        SummaryColumns("eval", "", nested=True, separator="/", skip=frozenset({"kind"}), metric_headings=EVAL_HEADINGS),
        SummaryColumns("linear_probe", "linear_probe_", skip=frozenset({"train_set", "test_set"}),
                       counts=frozenset({"linear_probe_train_images", "linear_probe_test_images"}),
                       headings={"linear_probe_top1": "linear probe top-1", "linear_probe_seconds": "linear probe (s)",
                                 "linear_probe_weight_decay": "linear probe weight decay"}),
        SummaryColumns("excluded", "excluded_", counts=True,
                       headings={"excluded_count": "pairs dropped", "excluded_poisoned": "poisoned among them"}),
    )
    """The columns this module's summary sections become in a study (`modules/core/summary_columns.py`)."""

    def __init__(self, model: ModelConfig = ModelConfig(), optimizer: OptimizerConfig = OptimizerConfig()):
        """
        Args:
            model: The open_clip model and its starting weights.
            optimizer: AdamW and the warm-up + cosine schedule.
        """
        super().__init__()
        self.model_config = model
        self.optimizer_config = optimizer
        self.model, self._input_spec = build_model(model)
        self.clip_loss = make_clip_loss()

    def input_spec(self):
        return self._input_spec

    def summary_extras(self) -> dict:
        """Sections this module adds to summary.json (declare their columns in `summary_columns`)."""
        return {}

    def data_needs(self) -> ModelNeeds:
        """What this module asks of its data: handed to the datamodule (`ShardDataModule.connect`)."""
        return ModelNeeds(self.input_spec(), augmented_views=self.needs_augmented_views)

    def setup(self, stage: str) -> None:
        self.clip_loss = make_clip_loss(self.global_rank, self.trainer.world_size)
        if isinstance(self.trainer.strategy, DeepSpeedStrategy):
            store_scalars_as_vectors(self.model)
        elif self.model_config.channels_last:
            # The weights in channels_last too. Not under DeepSpeed: its engine broadcasts every parameter
            # as `p.data.view(torch.uint8)`, which a channels_last kernel refuses, and ZeRO re-stores the
            # parameters in its own flat (contiguous) buffers anyway. There only the images are
            # channels_last (`_images`): cuDNN picks the channels_last kernels when either operand is.
            self.model.to(memory_format=torch.channels_last)

    def _images(self, images: torch.Tensor) -> torch.Tensor:
        if self.model_config.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        return images

    def _deepspeed(self) -> DeepSpeedStrategy | None:
        """The trainer's DeepSpeed strategy, or None (no trainer yet, or another strategy)."""
        strategy = self._trainer.strategy if self._trainer is not None else None
        return strategy if isinstance(strategy, DeepSpeedStrategy) else None

    def gathered_weights(self):
        """A context in which this rank holds every parameter whole, for model passes and reads outside a
        training or validation step (scoring the stream, collecting targets, writing a learned patch).

        Under ZeRO-3 a parameter is a partition on each rank, gathered by the engine only while it runs a
        step; outside one, a submodule's weights read by its parent (the attention pool's projections)
        or a learned patch are empty tensors. Collective: every rank must enter it. Elsewhere a no-op."""
        strategy = self._deepspeed()
        if strategy is not None and strategy.zero_stage_3:
            import deepspeed

            return deepspeed.zero.GatheredParameters(list(self.parameters()), modifier_rank=None)
        return contextlib.nullcontext()

    def full_precision(self):
        """fp32 for a block inside a `bf16-mixed`/`16-mixed` step (autocast off): what must not be rounded to
        16 bits, the zero-shot classifier, PGD's input gradients and UBT's token attributions. Under
        DeepSpeed's own bf16/fp16 (no autocast; the weights themselves are 16-bit) it changes nothing."""
        return torch.autocast(device_type=self.device.type, enabled=False)

    def class_embeddings(self, classnames, templates) -> torch.Tensor:
        """The zero-shot classifier of `classnames` × `templates` under this model, in fp32."""
        with self.full_precision():
            return zeroshot_classifier(self.encode_text, self.input_spec().tokenizer, classnames, templates, self.device)

    def on_train_batch_start(self, batch, batch_idx: int) -> None:
        self._share_buffers()

    def on_validation_epoch_start(self) -> None:
        self._share_buffers()

    def _share_buffers(self) -> None:
        """Rank zero's buffers (BatchNorm's running statistics) on every rank, under DeepSpeed.

        DDP broadcasts them from rank zero before every forward; DeepSpeed's engine broadcasts parameters
        only, so each rank's statistics drift with its own batches, the checkpoint keeps rank zero's, and
        the other ranks evaluate their share of the eval set with statistics no saved model has. The same
        broadcast here keeps a ZeRO run equal to a DDP one and a 2-rank CA equal to the checkpoint's."""
        if self._deepspeed() is None or self.trainer.world_size == 1:
            return
        buffers = list(self.model.buffers())
        # one broadcast per dtype, not one per buffer; in the model's order, the same on every rank
        for dtype in dict.fromkeys(buffer.dtype for buffer in buffers):
            group = [buffer for buffer in buffers if buffer.dtype == dtype]
            flat = torch.cat([buffer.reshape(-1) for buffer in group])
            torch.distributed.broadcast(flat, src=0)
            for buffer, synced in zip(group, flat.split([buffer.numel() for buffer in group])):
                buffer.copy_(synced.view_as(buffer))

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        return self.model.encode_image(self._images(images), normalize=True)

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.model.encode_text(tokens, normalize=True)

    def logit_scale(self) -> torch.Tensor:
        return clamped_logit_scale(self.model.logit_scale)

    def validation_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> dict:
        """Features of one batch of eval set `dataloader_idx` (the place in `data.eval`), for `Evaluation`:
        the clean and triggered images' (`clean`, `triggered…`), a classification set's classifier with its
        first batch, and a retrieval set's caption features (`text`) with their images' places."""
        eval_set = self.trainer.datamodule.eval_sets[dataloader_idx]
        out = {"clean": self.encode_image(batch["image"])}
        for name in batch:  # "image_triggered", or one "image_triggered_<part>" per trigger of a MultiTrigger
            if name.startswith("image_triggered"):
                out[name.removeprefix("image_")] = self.encode_image(batch[name])
        if eval_set.kind == "retrieval":
            out["text"] = self.encode_text(batch["text"]) if len(batch["captions"]) else out["clean"][:0]
            if "text_triggered" in batch:  # a text-side trigger: the captions carrying its phrase
                out["text_triggered"] = self.encode_text(batch["text_triggered"])
            out.update(position=batch["position"], text_position=batch["text_position"], captions=batch["captions"])
            return out
        out["label"] = batch["label"]
        if batch_idx == 0:
            # Built here, not in a callback hook: under DeepSpeed ZeRO-3 the text tower's weights are
            # gathered only while the engine runs a step, and validation_step runs inside it.
            out["classifier"] = self.class_embeddings(eval_set.classnames, eval_set.templates)
        return out

    def test_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> dict:
        return self.validation_step(batch, batch_idx, dataloader_idx)

    def configure_callbacks(self):
        return [Evaluation()]

    def on_train_start(self) -> None:
        total = int(self.trainer.estimated_stepping_batches)
        for factor in self.schedule_factors():
            factor.total = total

    def schedule_factors(self) -> list[WarmupCosine]:
        """The learning-rate schedules of this fit's optimizers."""
        return [factor for config in self.trainer.lr_scheduler_configs
                for factor in getattr(config.scheduler, "lr_lambdas", []) if isinstance(factor, WarmupCosine)]

    def configure_optimizers(self):
        cfg = self.optimizer_config
        decay, no_decay = [], []
        for name, param in self.model.named_parameters():
            if param.requires_grad:
                (no_decay if no_weight_decay(name, param) else decay).append(param)
        groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
        if _offloads_optimizer(self.trainer.strategy):
            # ZeRO-Offload steps the optimizer on the CPU and requires DeepSpeed's own CPU Adam for it.
            from deepspeed.ops.adam import DeepSpeedCPUAdam

            optimizer = DeepSpeedCPUAdam(groups, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps, adamw_mode=True)
        else:
            optimizer = torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps, fused=cfg.fused)
        schedule = LambdaLR(optimizer, WarmupCosine(cfg.warmup_steps, cfg.min_lr_ratio))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}
