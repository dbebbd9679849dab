"""SafeCLIP (Yang et al., ICML 2024), a defense during pretraining: learn each modality on its own
first, then keep the CLIP loss for the pairs a mixture model calls safe, and only unimodal terms for
the risky ones, so that a poisoned pair's image and caption are never pulled together.

    python main.py fit --config configs/embedded/safeclip.yaml

The schedule, by epoch:
1. `warmup_epochs`: unimodal only (every pair is risky);
2. `cross_epochs`: the CLIP loss on every pair, at `cross_lr_scale` × the lr (SafeCLIP: 5e-6 against 5e-4);
3. then, at the start of each epoch, one pass scores every training pair by its image-caption cosine
   under the current model; a two-component mixture gives each pair's posterior of the upper (clean)
   component; the first split keeps the pairs above `initial_threshold` (SafeCLIP: 0.9), and each
   later epoch the top share by that posterior, growing by `ratio_step` (1%) to `ratio_cap` (85%).

Facts from its code are in shared/REFERENCE.md. Where we differ, and why: the unimodal terms are
CleanCLIP's (each image against its AutoAugment view, each caption against its EDA caption, within
the batch) rather than SafeCLIP's nearest-neighbour banks of 256; the safe pairs' CLIP loss is taken
within each rank's batch (the safe count differs between ranks, which open_clip's gather does not
allow); every rank scores every pair (the same model gives the same split, at world × the cost).
Each epoch's split is written to RUN/safeclip/epoch_NNN.json (safe keys, the ratio, the mixture's
separation, and, for evaluation only, how many poisoned pairs it let through), and a resumed run
reads it back rather than scoring again with weights from the middle of the epoch.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch
from lightning.pytorch.utilities import rank_zero_only

from modules.core.base import CLIPModule, OptimizerConfig
from modules.core.losses import safeclip_loss
from modules.core.model_loading import ModelConfig
from modules.core.summary_columns import SummaryColumns
from modules.detection.detectors import two_component_mixture
from modules.detection.pair_scoring import score_stream


class SafeCLIP(CLIPModule):
    """Pretraining with SafeCLIP's unimodal warm-up and safe/risky split; see the module docstring."""

    summary_columns = CLIPModule.summary_columns + (
        SummaryColumns("safeclip", "safeclip_", counts=frozenset({
            "safeclip_safe_pairs", "safeclip_poisoned_in_safe", "safeclip_first_safe_pairs",
            "safeclip_first_poisoned_in_safe"}), headings={
            "safeclip_safe_pairs": "pairs on the CLIP loss (last epoch)",
            "safeclip_poisoned_in_safe": "poisoned on the CLIP loss",
            "safeclip_first_safe_pairs": "pairs on the CLIP loss (first split)",
            "safeclip_first_poisoned_in_safe": "poisoned among them (first split)",
            "safeclip_scoring_s_total": "SafeCLIP's scoring passes (s)"}),
    )

    def __init__(self, model: ModelConfig = ModelConfig(), optimizer: OptimizerConfig = OptimizerConfig(),
                 warmup_epochs: int = 5, cross_epochs: int = 1, cross_lr_scale: float = 0.01,
                 initial_threshold: float = 0.9, ratio_step: float = 0.01, ratio_cap: float = 0.85,
                 unimodal_weight: float = 1.0):
        """
        Args:
            model: The open_clip model and its starting weights.
            optimizer: AdamW and the warm-up + cosine schedule.
            warmup_epochs: Epochs of unimodal training only (SafeCLIP: 5).
            cross_epochs: Then epochs of the CLIP loss on every pair at a small lr (SafeCLIP: 1).
            cross_lr_scale: That small lr, as a share of the schedule's (SafeCLIP: 5e-6 / 5e-4).
            initial_threshold: The first split keeps pairs whose clean posterior exceeds this (SafeCLIP: 0.9).
            ratio_step: Each later epoch the safe share grows by this (SafeCLIP: 0.01).
            ratio_cap: ... up to this share (SafeCLIP: 0.85).
            unimodal_weight: Weight of the unimodal terms on risky pairs.
        """
        super().__init__(model, optimizer)
        if warmup_epochs < 0 or cross_epochs < 0:
            raise ValueError("model.warmup_epochs and model.cross_epochs must be ≥ 0")
        if not 0.0 < cross_lr_scale <= 1.0:
            raise ValueError(f"model.cross_lr_scale must be in (0, 1], got {cross_lr_scale}")
        if not 0.0 < initial_threshold < 1.0 or not 0.0 < ratio_cap <= 1.0 or ratio_step < 0:
            raise ValueError("model.initial_threshold must be in (0, 1), model.ratio_cap in (0, 1], model.ratio_step ≥ 0")
        self.warmup_epochs = warmup_epochs
        self.cross_epochs = cross_epochs
        self.cross_lr_scale = cross_lr_scale
        self.initial_threshold = initial_threshold
        self.ratio_step = ratio_step
        self.ratio_cap = ratio_cap
        self.unimodal_weight = unimodal_weight
        self.needs_augmented_views = True
        self.safe_keys: frozenset[str] | None = None
        self.safe_ratio: float | None = None

    def phase(self, epoch: int) -> str:
        if epoch < self.warmup_epochs:
            return "unimodal"
        if epoch < self.warmup_epochs + self.cross_epochs:
            return "cross"
        return "split"

    def lr_scheduler_step(self, scheduler, metric) -> None:
        scheduler.step()
        if self.phase(self.current_epoch) == "cross":  # the schedule sets each step's lr anew: scale it after
            for group in self.trainer.optimizers[0].param_groups:
                group["lr"] *= self.cross_lr_scale

    def on_train_epoch_start(self) -> None:
        self.safe_keys = None
        if self.phase(self.current_epoch) != "split":
            return
        path = Path(self.trainer.default_root_dir) / "safeclip" / f"epoch_{self.current_epoch:03d}.json"
        if not path.exists():  # (a resumed epoch reads the split its first start made)
            self._write_split(path)
            self.trainer.strategy.barrier()
        split = json.loads(path.read_text())
        self.safe_keys, self.safe_ratio = frozenset(split["safe_keys"]), split["ratio"]
        self.log("safeclip/safe_ratio", float(split["ratio"]))

    def next_ratio(self, posterior: torch.Tensor) -> float:
        """The first split's share above `initial_threshold`, then the last share plus `ratio_step`, capped."""
        if self.safe_ratio is None:
            return min(self.ratio_cap, float((posterior > self.initial_threshold).float().mean()))
        return min(self.ratio_cap, self.safe_ratio + self.ratio_step)

    def _write_split(self, path: Path) -> None:
        start = time.perf_counter()
        similarity, _ = score_stream(self, self.trainer.datamodule.scoring_stream(), 0)
        keys = sorted(similarity)
        values = torch.tensor([similarity[k] for k in keys])
        mixture = two_component_mixture(values)
        posterior = mixture.posterior[:, int(mixture.mean.argmax())]
        ratio = self.next_ratio(posterior)
        order = posterior.argsort(descending=True, stable=True)
        safe = [keys[i] for i in order[:round(ratio * len(keys))].tolist()]
        manifest = Path(self.trainer.datamodule.manifest_path)
        poisoned = set(json.loads(manifest.read_text())["keys"]) if manifest.exists() else set()
        split = {"epoch": self.current_epoch, "ratio": ratio, "separation": round(mixture.separation(), 4),
                 "pairs": len(keys), "safe_pairs": len(safe), "poisoned_in_safe": len(poisoned & set(safe)),
                 "poisoned": len(poisoned), "scoring_s": round(time.perf_counter() - start, 2), "safe_keys": safe}
        self._save_split(path, split)

    @rank_zero_only
    def _save_split(self, path: Path, split: dict) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(split))

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["safeclip_ratio"] = self.safe_ratio

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.safe_ratio = checkpoint.get("safeclip_ratio")

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        scale = self.logit_scale()
        image, text = self.encode_image(batch["image"]), self.encode_text(batch["text"])
        phase = self.phase(self.current_epoch)
        if phase == "split":
            assert self.safe_keys is not None, "the split is made when the epoch starts"
            safe = torch.tensor([key in self.safe_keys for key in batch["key"]], device=image.device)
        else:
            safe = torch.full((len(image),), phase == "cross", device=image.device)
        if phase == "cross":  # no augmented views needed: every pair is safe
            image_aug, text_aug = image, text
        else:
            image_aug, text_aug = self.encode_image(batch["image_aug"]), self.encode_text(batch["text_aug"])
        terms = safeclip_loss(image, text, image_aug, text_aug, safe, scale, self.unimodal_weight)
        for name, value in terms.items():
            self.log(f"train/{name}", value, prog_bar=name == "loss")
        self.log("train/safe_share", safe.float().mean())
        self.log("train/logit_scale", scale)
        return terms["loss"]

    def summary_extras(self) -> dict:
        splits = [json.loads(path.read_text())
                  for path in sorted((Path(self.trainer.default_root_dir) / "safeclip").glob("epoch_*.json"))]
        if not splits:
            return {"safeclip": None}
        first, last = splits[0], splits[-1]
        return {"safeclip": {**{k: v for k, v in last.items() if k != "safe_keys"},
                             "first_safe_pairs": first["safe_pairs"], "first_poisoned_in_safe": first["poisoned_in_safe"],
                             "scoring_s_total": round(sum(split["scoring_s"] for split in splits), 2)}}
