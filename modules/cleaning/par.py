"""PAR, Perturb and Recover (Singh et al., arXiv 2412.00727): clean fine-tuning that pushes the embeddings
away from the poisoned model's while the CLIP loss recovers the clean task.

    python main.py fit --config configs/embedded/par.yaml

L = L_CLIP − ½·[1{d_I ≤ τ}·d_I + 1{d_T ≤ τ}·d_T], where d_I (d_T) is the batch mean of ‖f(x) − f₀(x)‖², the
squared distance between this model's normalised image (text) embedding and the incoming poisoned
model's (f₀, frozen), on the same augmented input. Below τ the term rewards moving away from the poisoned
embeddings; past τ it switches off, so the distance stays bounded. The images are perturbed as in the
authors' code (read at nmndeep/PerturbAndRecover, `losses.py` and `utils.py`): Gaussian pixel noise of
σ 0.2 with probability ½ and a small random erasing with probability ½. Two deliberate differences,
stated here:

- the noise is zero-mean, clamped to [0, 1] after it is added; the authors' code clamps the noise itself
  to [0, 1] before adding it, so it only ever brightens;
- d is the mean over this rank's batch (the authors gather every rank's embeddings first), and the CLIP
  loss keeps its learnable temperature (theirs is read as a constant).

The perturbations are drawn from a generator seeded by (seed, step), so a resumed fit draws what an
uninterrupted one would.
"""

from __future__ import annotations

import copy

import torch
from torchvision.transforms import RandomErasing

from modules.core.base import CLIPModule, OptimizerConfig
from modules.core.model_loading import ModelConfig


def thresholded_distance(features: torch.Tensor, incoming: torch.Tensor, tau: float) -> torch.Tensor:
    """1{d ≤ τ}·d with d = mean over rows of ‖features − incoming‖² (normalised embeddings)."""
    distance = (features.float() - incoming.float()).pow(2).sum(dim=-1).mean()
    return torch.where(distance > tau, torch.zeros_like(distance), distance)


def par_loss(clip_loss: torch.Tensor, image: torch.Tensor, text: torch.Tensor, image0: torch.Tensor,
             text0: torch.Tensor, tau: float) -> dict[str, torch.Tensor]:
    """PAR's loss and its terms from the CLIP loss and the two models' normalised embeddings."""
    image_term = thresholded_distance(image, image0, tau)
    text_term = thresholded_distance(text, text0, tau)
    return {"loss": clip_loss - 0.5 * (image_term + text_term), "loss_clip": clip_loss,
            "distance_image": image_term, "distance_text": text_term}


class PerturbAndRecover(CLIPModule):
    """PAR defense; see the module docstring."""

    def __init__(self, model: ModelConfig = ModelConfig(), optimizer: OptimizerConfig = OptimizerConfig(),
                 tau: float = 2.15, noise_std: float = 0.2, noise_p: float = 0.5, erase_p: float = 0.5,
                 erase_scale: tuple[float, float] = (0.005, 0.01), seed: int = 0):
        """
        Args:
            model: The poisoned model to clean (`pretrained`); a frozen copy of it is f₀.
            optimizer: AdamW and the warm-up + cosine schedule.
            tau: τ, the squared distance beyond which a term stops pushing (the authors' 2.15).
            noise_std: σ of the Gaussian pixel noise.
            noise_p: Probability of the noise, per image.
            erase_p: Probability of a random erasing, per image.
            erase_scale: The erased area's share of the image, (min, max).
            seed: Seed of the perturbations (with the step).
        """
        if tau <= 0 or noise_std < 0 or not 0 <= noise_p <= 1 or not 0 <= erase_p <= 1:
            raise ValueError(f"model: PAR needs tau > 0, noise_std ≥ 0 and probabilities in [0, 1], got tau {tau}, "
                             f"noise_std {noise_std}, noise_p {noise_p}, erase_p {erase_p}")
        super().__init__(model, optimizer)
        self.tau, self.noise_std, self.noise_p, self.seed = tau, noise_std, noise_p, seed
        self.erase = RandomErasing(p=erase_p, scale=tuple(erase_scale), ratio=(1.0, 1.0), value=0)
        # Kept out of the module tree, so neither checkpointed nor optimised: a resumed run rebuilds it from
        # model.pretrained, the incoming weights.
        self.__dict__["incoming"] = copy.deepcopy(self.model).requires_grad_(False).eval()

    def on_fit_start(self) -> None:
        self.incoming.to(device=self.device, dtype=next(self.model.parameters()).dtype)

    def perturb(self, images: torch.Tensor) -> torch.Tensor:
        """Normalised images with noise (in pixel space, clamped) and erasing, drawn by (seed, step)."""
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.global_step)
        spec = self.input_spec()
        mean = torch.tensor(spec.mean, device=images.device).view(1, 3, 1, 1)
        std = torch.tensor(spec.std, device=images.device).view(1, 3, 1, 1)
        pixels = images * std + mean
        noisy = torch.rand(len(images), generator=generator) < self.noise_p
        noise = torch.randn(pixels.shape, generator=generator).to(images.device) * self.noise_std
        pixels = torch.where(noisy.to(images.device).view(-1, 1, 1, 1), (pixels + noise).clamp(0, 1), pixels)
        perturbed = (pixels - mean) / std
        state = torch.random.get_rng_state()  # RandomErasing draws from torch's global generator
        torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=generator)))
        try:
            return torch.stack([self.erase(image) for image in perturbed])
        finally:
            torch.random.set_rng_state(state)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        images = self.perturb(batch["image"])
        image, text = self.encode_image(images), self.encode_text(batch["text"])
        with torch.no_grad():
            image0 = self.incoming.encode_image(self._images(images), normalize=True)
            text0 = self.incoming.encode_text(batch["text"], normalize=True)
        terms = par_loss(self.clip_loss(image, text, self.logit_scale()), image, text, image0, text0, self.tau)
        self.log_dict({f"train/{name}": value for name, value in terms.items()}, prog_bar=True)
        return terms["loss"]
