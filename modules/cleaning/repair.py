"""Targeted repair with a recovered trigger: fine-tune on clean pairs of which a share of the images carry
the trigger a finder recovered (DECREE's inversion, `modules.InvertTrigger`), each kept with its own true
caption, so the shortcut from the trigger to the target is what the loss unlearns.

    python main.py fit --config configs/embedded/repair.yaml

Loss: λ_clip·L_CLIP(stamped batch, true captions) + λ_consistency·mean(1 − cos(f(x ⊕ t), sg[f(x)])) over
the stamped rows, the second term pulling a stamped image's embedding back to its clean one's (stop
gradient on the clean side). Which rows are stamped is a function of (seed, key), like poisoning. The
ASR reported is the attack's (`data.trigger_dir`), not the recovered trigger's: the repair is judged by
the trigger the attacker used, which it never sees.
"""

from __future__ import annotations

from typing import Literal

import torch

from datamodules.poison import MaskedPattern, Trigger, load_trigger
from datamodules.poison.selection import poison_score
from datamodules.transforms import apply_trigger
from modules.core.base import CLIPModule, OptimizerConfig
from modules.core.model_loading import ModelConfig


def stamp_rows(keys: list[str], fraction: float, seed: int) -> list[int]:
    """The rows of a batch whose key is stamped: those whose (seed, key) score is below `fraction`."""
    return [i for i, key in enumerate(keys) if poison_score(f"repair/{key}", seed) < fraction]


def stamping_trigger(directory: str, location: str, seed: int) -> Trigger:
    """The recovered trigger in `directory` as the repair stamps it: as found, or its mask moved per key."""
    trigger = load_trigger(directory)
    if location == "as_found":
        return trigger
    if not isinstance(trigger, MaskedPattern):
        raise ValueError(f"model.trigger_location random moves a recovered mask; {directory} holds a "
                         f"{trigger.name!r} trigger")
    return trigger.moved(seed)


class TriggerRepair(CLIPModule):
    """Fine-tunes a poisoned model on clean pairs, a share of them stamped with a recovered trigger."""

    def __init__(self, model: ModelConfig = ModelConfig(), optimizer: OptimizerConfig = OptimizerConfig(),
                 recovered_trigger: str = "", stamp_fraction: float = 0.5, lambda_clip: float = 1.0,
                 lambda_consistency: float = 1.0, trigger_location: Literal["as_found", "random"] = "as_found",
                 seed: int = 0):
        """
        Args:
            model: The poisoned model to repair.
            optimizer: AdamW and the warm-up + cosine schedule.
            recovered_trigger: A `trigger/` directory of a finder (e.g. `RUN/inversion/trigger` of an
                InvertTrigger run).
            stamp_fraction: Share of the clean pairs whose image carries the recovered trigger.
            lambda_clip: Weight of the CLIP loss on the stamped batch with its true captions.
            lambda_consistency: Weight of pulling stamped embeddings to their clean images' embeddings.
            trigger_location: "as_found" stamps a recovered mask where the finder found it; "random" moves
                its bounding box to a place drawn from (seed, key) per image, so the repair meets the trigger
                wherever an attack may put it (a finder sees one place of a trigger BadNet puts anywhere).
            seed: Seed of which keys are stamped (and of their places, with `trigger_location: random`).
        """
        super().__init__(model, optimizer)
        if not recovered_trigger:
            raise ValueError("model.recovered_trigger: name the trigger/ directory a finder wrote "
                             "(e.g. RUN/inversion/trigger of configs/embedded/decree.yaml)")
        if not 0.0 < stamp_fraction <= 1.0:
            raise ValueError(f"model.stamp_fraction must be in (0, 1], got {stamp_fraction}")
        self.trigger: Trigger | None = None
        """Loaded at setup (before training), so that a config naming a finder's run still to come builds."""
        self.recovered_trigger = recovered_trigger
        self.stamp_fraction = stamp_fraction
        self.lambda_clip = lambda_clip
        self.lambda_consistency = lambda_consistency
        if trigger_location not in ("as_found", "random"):
            raise ValueError(f"model.trigger_location must be as_found or random, got {trigger_location!r}")
        self.trigger_location = trigger_location
        self.seed = seed

    def setup(self, stage: str) -> None:
        super().setup(stage)
        self.trigger = stamping_trigger(self.recovered_trigger, self.trigger_location, self.seed)
        self.trigger.check_fits(self.input_spec().image_size)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        assert self.trigger is not None, "setup() loads the recovered trigger"
        spec = self.input_spec()
        rows = stamp_rows(batch["key"], self.stamp_fraction, self.seed)
        images = batch["image"]
        if rows:
            images = images.clone()
            images[rows] = apply_trigger(self.trigger, batch["image"][rows], [batch["key"][i] for i in rows],
                                         spec.mean, spec.std).to(images.dtype)
        scale = self.logit_scale()
        features = self.encode_image(images)
        clip = self.clip_loss(features, self.encode_text(batch["text"]), scale)
        consistency = features.new_zeros(())
        if rows and self.lambda_consistency > 0:
            with torch.no_grad():
                clean = self.encode_image(batch["image"][rows])
            consistency = (1 - (features[rows] * clean).sum(-1)).mean()
        loss = self.lambda_clip * clip + self.lambda_consistency * consistency
        self.log("train/loss", loss, prog_bar=True)
        self.log("train/loss_clip", clip)
        self.log("train/loss_consistency", consistency)
        self.log("train/stamped", float(len(rows)))
        return loss

    def summary_extras(self) -> dict:
        return {"repair": {"recovered_trigger": self.recovered_trigger, "stamp_fraction": self.stamp_fraction,
                           "trigger_location": self.trigger_location}}
