"""RoCLIP (Yang et al., NeurIPS 2023), a defense during pretraining: on every `break_epoch`-th epoch
each image is matched, in the contrastive loss, with its nearest caption embedding from a FIFO memory
bank of earlier batches' caption embeddings instead of its own caption, which breaks the link a
poisoned pair would teach; other epochs use the plain loss.

    python main.py fit --config configs/embedded/roclip.yaml

Facts from its code (BigML-CS-UCLA/RoCLIP): the swap happens on epochs where epoch % break_epoch == 0
(default 2), with epochs counted from 1 (its loop is CleanCLIP's `range(start_epoch + 1, epochs + 1)`), so
the first epoch is plain and the swap starts from a model that already pairs images with captions; the
bank (default 21,845 entries) is updated with the batch's caption embeddings after it is queried, so an
image never meets its own caption through the bank; bank entries carry no gradient. With `cross_aug`
every epoch (swap or plain) trains on an augmented view of each pair instead of the pair itself: an
augmented image and an EDA caption, so the bank holds augmented captions too. Two differences from
its code, both the house's augmented views (`datamodules.transforms.TrainSample`, shared with CleanCLIP
and SafeCLIP): the image augmentation is AutoAugment, not its SimCLR-style crop, flip, colour jitter,
grayscale and blur; the EDA caption is drawn anew each epoch from (seed, key, epoch), where its code
draws one per caption when the data is loaded. Either way the poisoning comes first and the view is
taken of the poisoned pair. The bank is per rank and not checkpointed: a resumed run refills it (until
it holds something, a swap epoch uses the plain loss).
"""

from __future__ import annotations

import torch

from modules.core.base import CLIPModule, OptimizerConfig
from modules.core.model_loading import ModelConfig
from modules.core.summary_columns import SummaryColumns


class TextMemoryBank:
    """A FIFO bank of caption embeddings (no gradient): `nearest` before `add`."""

    def __init__(self, size: int):
        if size < 1:
            raise ValueError(f"model.bank_size must be ≥ 1, got {size}")
        self.size = size
        self.embeddings: torch.Tensor | None = None
        self.flags: torch.Tensor | None = None  # per entry: was its pair poisoned (evaluation only)

    def __len__(self) -> int:
        return 0 if self.embeddings is None else len(self.embeddings)

    def nearest_index(self, images: torch.Tensor) -> torch.Tensor:
        """For each (normalised) image embedding, the index of the bank's most similar caption embedding."""
        assert self.embeddings is not None and len(self.embeddings), "query a bank that holds something"
        bank = self.embeddings.to(images.device, images.dtype)
        return (images.detach() @ bank.t()).argmax(dim=1)

    def nearest(self, images: torch.Tensor) -> torch.Tensor:
        """For each (normalised) image embedding, the bank's most similar caption embedding."""
        return self.embeddings.to(images.device, images.dtype)[self.nearest_index(images)]

    def add(self, texts: torch.Tensor, flags: torch.Tensor | None = None) -> None:
        new = texts.detach()
        merged = new if self.embeddings is None else torch.cat([self.embeddings.to(new.device), new])
        self.embeddings = merged[-self.size:]
        new_flags = torch.zeros(len(new), dtype=torch.bool) if flags is None else flags.detach().cpu().bool()
        merged_flags = new_flags if self.flags is None else torch.cat([self.flags, new_flags])
        self.flags = merged_flags[-self.size:]


class RoCLIP(CLIPModule):
    """Pretraining with RoCLIP's nearest-caption swap on every `break_epoch`-th epoch."""

    summary_columns = CLIPModule.summary_columns + (
        SummaryColumns("roclip", "roclip_", headings={
            "roclip_poisoned_swapped_to_poisoned": "poisoned images swapped to a poisoned caption"}),)

    def __init__(self, model: ModelConfig = ModelConfig(), optimizer: OptimizerConfig = OptimizerConfig(),
                 break_epoch: int = 2, bank_size: int = 21845, cross_aug: bool = False):
        """
        Args:
            model: The open_clip model and its starting weights.
            optimizer: AdamW and the warm-up + cosine schedule.
            break_epoch: Swap captions for their nearest bank neighbour on epochs divisible by this, counted from 1
                (RoCLIP: 2, so epochs 2, 4, ...; the first epoch is always plain).
            bank_size: Caption embeddings the FIFO bank holds (RoCLIP: 21,845).
            cross_aug: Train on an augmented image and an EDA caption of each pair instead of the pair
                (RoCLIP's `--cross_aug`).
        """
        super().__init__(model, optimizer)
        if break_epoch < 1:
            raise ValueError(f"model.break_epoch must be ≥ 1, got {break_epoch}")
        self.break_epoch = break_epoch
        self.bank = TextMemoryBank(bank_size)
        self.cross_aug = cross_aug
        self.needs_augmented_views = cross_aug
        self.swap_counts: dict[str, list[int]] = {}  # per swap epoch: [poisoned images, ... swapped to a poisoned caption]

    def swaps_this_epoch(self) -> bool:
        # Lightning counts epochs from 0, RoCLIP from 1: swapping on epoch 0 would match a random model's
        # images with random captions (embedded BadNet: CA 0.13 after 10 epochs, the loss of plain epochs at chance)
        return (self.current_epoch + 1) % self.break_epoch == 0

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        scale = self.logit_scale()
        image_key, text_key = ("image_aug", "text_aug") if self.cross_aug else ("image", "text")
        image = self.encode_image(batch[image_key])
        text = self.encode_text(batch[text_key])
        swapped = self.swaps_this_epoch() and len(self.bank) > 0
        if swapped:
            index = self.bank.nearest_index(image)
            loss = self.clip_loss(image, self.bank.embeddings.to(image.device, image.dtype)[index], scale)
            self._log_swap_sources(self.bank.flags[index.cpu()], batch.get("poisoned"))
        else:
            loss = self.clip_loss(image, text, scale)
        self.bank.add(text, batch.get("poisoned"))  # after the query: an image never meets its own caption through the bank
        self.log("train/loss", loss, prog_bar=True)
        self.log("train/swapped", float(swapped))
        self.log("train/logit_scale", scale)
        return loss

    def _log_swap_sources(self, swapped_from_poisoned: torch.Tensor, poisoned) -> None:
        """Evaluation only (no step reads it): how often a poisoned image's nearest caption is itself a
        poisoned pair's (then the swap keeps the trigger-target link it was meant to break), against clean images."""
        if poisoned is None:
            return
        poisoned = torch.as_tensor(poisoned).cpu().bool()
        counts = self.swap_counts.setdefault(str(self.current_epoch), [0, 0])
        counts[0] += int(poisoned.sum())
        counts[1] += int(swapped_from_poisoned[poisoned].sum())
        if poisoned.any():
            self.log("train/poisoned_swapped_to_poisoned", swapped_from_poisoned[poisoned].float().mean())
        if (~poisoned).any():
            self.log("train/clean_swapped_to_poisoned", swapped_from_poisoned[~poisoned].float().mean())

    def summary_extras(self) -> dict:
        """The last swap epoch's share of poisoned images whose nearest caption was a poisoned pair's (this
        process's batches; evaluation only)."""
        if not self.swap_counts:
            return {}
        total, kept = self.swap_counts[max(self.swap_counts, key=int)]
        return {"roclip": {"poisoned_swapped_to_poisoned": kept / total if total else None}}
