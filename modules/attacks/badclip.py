"""BadCLIP's trigger (Liang et al., CVPR 2024): a patch optimised against a frozen surrogate CLIP so that
patched images already sit near the target's text and image embeddings.

    python main.py fit --config configs/embedded/badclip_patch.yaml     # writes RUN/badclip/patch.png

The attacker does not have the victim: the surrogate is a clean model (`model.pretrained`), frozen.
The patch δ (`patch_size` pixels, pasted at the centre as BadCLIP does, or at a random place) is
optimised with Adam on the clean training pairs streamed by the data module, by

- text-embedding consistency: InfoNCE between v(x ⊕ δ) and natural target captions (training
  captions that name the target; each patched image is paired with one, so every caption of the
  batch is a target caption), weight `weights.text`;
- visual-embedding resistance: with anchor v(x ⊕ δ), positive the embedding of a natural
  target-class image (images whose caption names the target) and negative v(x), the same image
  without the patch, a triplet loss (or `mse` / `cosine` toward the positive), weight `weights.image`.

Images whose caption names the target are not patched (they are the positives). The terms and their
weights are config keys (the public code switches them on by substrings of the run name), the
negative is the clean image's own embedding (the public code pastes in place, so its negative equals
its anchor), and the patch is written as a lossless RGB PNG and read back by `datamodules.OptimizedPatch`
bit for bit (the public code writes a BGR JPEG). On the embedded benchmark a caption that names the
target always describes a target image, so "natural target captions of non-target images" (BadCLIP's
CC3M selection) cannot be drawn there: the pool is every caption that names the target.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F

from datamodules.eval_config import EvalSetConfig
from datamodules.poison.selection import names_target, poison_score
from datamodules.poison.trigger_base import save_png
from datamodules.transforms import apply_trigger
from datamodules.zeroshot import ZeroShotSet
from modules.core.adversarial import PatchOptimisation, paste_patch, random_positions
from modules.core.base import CLIPModule, OptimizerConfig, eval_mode
from modules.core.losses import info_nce
from modules.core.model_loading import ModelConfig

PATCH_PNG = "patch.png"


@dataclass
class BadCLIPWeights:
    """The terms of BadCLIP's patch objective and their weights."""

    text: float = 1.0
    """Text-embedding consistency: InfoNCE of patched images against natural target captions."""
    image: float = 1.0
    """Visual-embedding resistance toward natural target images."""
    image_loss: Literal["triplet", "mse", "cosine"] = "triplet"
    """triplet (anchor patched, positive target image, negative the clean image), mse ×1000 or cosine ×10
    toward the positive (BadCLIP's variants)."""
    margin: float = 1.0
    """Triplet margin (torch's TripletMarginLoss default, as BadCLIP uses it)."""
    text_negatives: Literal["targets", "batch"] = "targets"
    """The text term's negatives: "targets" (BadCLIP: every caption of the batch is a target caption,
    symmetric InfoNCE) or "batch" (each patched image's positive is a target caption, its negatives the
    other target captions and the batch's own clean captions)."""


def badclip_terms(patched: torch.Tensor, clean: torch.Tensor, positives: torch.Tensor, captions: torch.Tensor,
                  scale: torch.Tensor | float, weights: BadCLIPWeights,
                  own_captions: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """The loss to minimise and its terms, over normalised embeddings (N, D): the patched images, the
    same images clean, one natural target image each, one natural target caption each and (for
    `text_negatives: batch`) the images' own captions."""
    if weights.text_negatives == "batch":
        assert own_captions is not None, "text_negatives 'batch' needs the batch's own captions"
        logits = scale * patched @ torch.cat([captions, own_captions]).t()
        text = F.cross_entropy(logits, torch.arange(len(patched), device=patched.device))
    else:
        text = info_nce(patched, captions, scale)
    if weights.image_loss == "triplet":
        image = F.triplet_margin_loss(patched, positives, clean, margin=weights.margin)
    elif weights.image_loss == "mse":
        image = 1000.0 * F.mse_loss(patched, positives)
    else:
        image = 10.0 * (1.0 - (patched * positives).sum(-1)).mean()
    return {"loss": weights.text * text + weights.image * image, "text": text, "image": image}


class OptimizeBadCLIPPatch(PatchOptimisation, CLIPModule):
    """Optimises BadCLIP's patch against a frozen surrogate; writes RUN/badclip/patch.png."""

    def __init__(self, model: ModelConfig = ModelConfig(), optimizer: OptimizerConfig = OptimizerConfig(lr=1e-3, warmup_steps=1),
                 target: str = "banana", patch_size: int = 16, location: Literal["center", "random"] = "center",
                 weights: BadCLIPWeights = BadCLIPWeights(), caption_pool: int = 128, positive_pool: int = 64,
                 seed: int = 0):
        """
        Args:
            model: The clean surrogate model (frozen; the attacker does not have the victim).
            optimizer: `lr` is Adam's step size on the patch pixels in [0, 1] (BadCLIP: 1e-3).
            target: The target class; its name picks the natural target captions and images.
            patch_size: Side of the patch in pixels at the model's input (BadCLIP: 16 at 224).
            location: "center" (BadCLIP) or "random" paste positions while optimising.
            weights: The objective's terms and weights.
            caption_pool: At most this many natural target captions (BadCLIP draws from 128 for poisoning).
            positive_pool: Natural target images whose embeddings are the positives (BadCLIP: 64).
            seed: Seed of the initial patch and of the draws of captions, positives and positions.
        """
        super().__init__(model, optimizer)
        if patch_size < 1 or patch_size > self.input_spec().image_size:
            raise ValueError(f"model.patch_size must be in [1, {self.input_spec().image_size}], got {patch_size}")
        self.model.requires_grad_(False)
        self.target = target
        self.location = location
        self.weights = weights
        self.caption_pool = caption_pool
        self.positive_pool = positive_pool
        self.seed = seed
        self.patch = torch.nn.Parameter(torch.rand(3, patch_size, patch_size, generator=torch.Generator().manual_seed(seed)))
        self.target_captions = torch.zeros(0, dtype=torch.long)
        """Tokenised natural target captions (collected when the fit starts; not checkpointed, a resume collects them again)."""
        self.target_images = torch.zeros(0)
        """The surrogate's embeddings of natural target images."""

    def on_fit_start(self) -> None:
        with eval_mode(self.model), self.gathered_weights():
            self._collect_targets()

    @torch.no_grad()
    def _collect_targets(self) -> None:
        """One pass over the training pairs (stopping once both pools are full): natural target captions
        (tokenised) and the surrogate's embeddings of natural target images."""
        captions: dict[str, None] = {}
        images: list[torch.Tensor] = []
        for batch in self.trainer.datamodule.scoring_stream().every_pair_once():
            named = [i for i, caption in enumerate(batch["caption"]) if names_target(caption, self.target)]
            for i in named:
                captions.setdefault(batch["caption"][i])
            if named and len(images) < self.positive_pool:
                images.append(self.encode_image(batch["image"][named].to(self.device)))
            if len(captions) >= 4 * self.caption_pool and sum(len(x) for x in images) >= self.positive_pool:
                break
        if not captions:
            raise ValueError(f"model.target {self.target!r}: no training caption names it, so BadCLIP has no "
                             "natural target captions or images to optimise toward")
        pool = sorted(captions, key=lambda c: (poison_score(c, self.seed), c))[: self.caption_pool]
        self.target_captions = self.input_spec().tokenizer(pool).to(self.device)
        self.target_images = torch.cat(images)[: self.positive_pool]

    def _draw(self, count: int, size: int, salt: int) -> torch.Tensor:
        generator = torch.Generator().manual_seed(hash((self.seed, self.global_step, salt)) & 0x7FFF_FFFF)
        return torch.randint(0, size, (count,), generator=generator)

    def patch_images(self, images: torch.Tensor) -> torch.Tensor:
        spec = self.input_spec()
        size = self.patch.shape[-1]
        if self.location == "center":
            corner = (spec.image_size - size) // 2
            positions = torch.full((len(images), 2), corner)
        else:
            generator = torch.Generator().manual_seed(hash((self.seed, self.global_step, 2)) & 0x7FFF_FFFF)
            positions = random_positions(len(images), spec.image_size, size, generator)
        return paste_patch(images, self.patch, positions, spec.mean, spec.std)

    def non_target(self, batch: dict) -> list[int]:
        """The batch's rows whose caption does not name the target (the images BadCLIP patches)."""
        return [i for i, caption in enumerate(batch["caption"]) if not names_target(caption, self.target)]

    def embeddings(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """(patched, clean) embeddings of the batch's non-target images: the anchor and the triplet's negative."""
        images = batch["image"][self.non_target(batch)]
        with torch.no_grad():
            clean = self.encode_image(images)
        return self.encode_image(self.patch_images(images)), clean

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        patched, clean = self.embeddings(batch)
        n = len(patched)
        with torch.no_grad():
            captions = self.encode_text(self.target_captions[self._draw(n, len(self.target_captions), 0)])
            own = None
            if self.weights.text_negatives == "batch":
                own = self.encode_text(batch["text"][self.non_target(batch)])
        positives = self.target_images[self._draw(n, len(self.target_images), 1)]
        terms = badclip_terms(patched, clean, positives, captions, self.logit_scale().detach(), self.weights, own)
        for name, value in terms.items():
            self.log(f"badclip/{name}", value, prog_bar=name == "loss")
        return terms["loss"]

    def on_fit_end(self) -> None:
        with self.gathered_weights():  # every rank: under ZeRO-3 the patch is a partition outside a step
            patch = self.patch.detach().cpu().clone()
        if self.global_rank == 0:
            self._write(patch)

    def _write(self, patch: torch.Tensor) -> None:
        out = Path(self.trainer.default_root_dir) / "badclip"
        out.mkdir(parents=True, exist_ok=True)
        save_png(patch, out / PATCH_PNG)
        (out / "patch.json").write_text(json.dumps(
            {"target": self.target, "size": self.patch.shape[-1], "location": self.location,
             "weights": asdict(self.weights), "steps": self.trainer.global_step, "seed": self.seed,
             "target_captions": len(self.target_captions), "target_images": len(self.target_images)}, indent=1))

    def summary_extras(self) -> dict:
        return {"badclip_patch": str(Path(self.trainer.default_root_dir) / "badclip" / PATCH_PNG)}


@torch.no_grad()
def target_closeness(model: torch.nn.Module, spec, eval_dir: str, target: str, trigger) -> tuple[float, float]:
    """How close `trigger` brings a model's embeddings of the eval set's non-target images to the target:
    mean cosine similarity to the text "a photo of a {target}." and to the mean target-image embedding."""

    data = ZeroShotSet(EvalSetConfig(directory=eval_dir), spec, None)
    index = data.classnames.index(target)
    items = [data[i] for i in range(len(data))]
    images = torch.stack([it["image"] for it in items if it["label"] != index])
    targets = torch.stack([it["image"] for it in items if it["label"] == index])
    text = F.normalize(model.encode_text(spec.tokenizer([f"a photo of a {target}."])), dim=-1)[0]
    target_images = F.normalize(model.encode_image(targets), dim=-1).mean(0)
    patched = apply_trigger(trigger, images, [str(i) for i in range(len(images))], spec.mean, spec.std)
    feats = F.normalize(model.encode_image(patched), dim=-1)
    return (feats @ text).mean().item(), (feats @ target_images).mean().item()
