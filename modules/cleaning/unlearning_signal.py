"""UBT stage 2 driven by a label-free signal of whether the unlearning has worked (opt-in: `model.adaptive`).

The suspicious pairs are images carrying the trigger (as the model saw them in training) with captions
naming the target. A quarter of them (`holdout`) is kept out of the forget loss. Every `check_every`
steps, with no eval label:

- **the signal** is `relative_match` of the held-out suspicious pairs: how well their images still match
  their captions, from 0 (no better than clean images with other images' captions) to 1 (as well as
  clean images with their own), measured on a slice of clean fine-tuning pairs (`reference_pairs` of the
  fit's first batch). A backdoor makes it high; it is the generalisation of the unlearning, since these
  pairs are never trained on;
- **the guard** is `pair_accuracy`: how often a clean image of the slice picks its own caption among the
  slice's captions, a zero-shot accuracy made of the clean pairs' own captions (a CA proxy);
- **the strength** λ_forget grows by `grow` (up to `max_lambda`) at a check that finds the signal lowered
  by less than `min_progress` of what it was;
- `collapse_gap`, the held-out images' mean pairwise cosine minus the clean slice's (DECREE's criterion,
  `val/cohesion_triggered` on eval images), is traced beside it. Measured on the small embedded RN, it
  is not a stopping signal: the unlearning took ASR from 1.00 to 0.00 while it fell only from 0.68 to
  0.57 (the triggered images stay together, away from the target).

Stage 2 stops when the signal is at most `tolerance` (`signal`), when the proxy has fallen more than
`guard_drop` below its value at the start (`guard`), or at `max_steps` (`cap`); `summary.json`'s
`unlearning` block says which, with the trace of every check. The slice is seen in training too (it is
the first batch), so the proxy errs high, never low: a fall in it is real.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import torch

from datamodules.transforms import normalise_pixels
from modules.core.base import eval_mode


@dataclass
class AdaptiveUnlearning:
    """Stage 2's stopping and strength from a label-free signal (see modules/cleaning/unlearning_signal.py)."""

    check_every: int = 10
    """Steps between checks of the signal."""
    tolerance: float = 0.2
    """Stop when the held-out suspicious pairs match at most this well (0: as clean images with other
    images' captions, 1: as clean images with their own)."""
    holdout: float = 0.25
    """The share of the suspicious pairs kept out of the forget loss to measure the signal on (at least 2)."""
    max_steps: int = 1000
    """Stop here whatever the signal says (the cap)."""
    grow: float = 2.0
    """λ_forget is multiplied by this at a check that finds too little progress."""
    min_progress: float = 0.1
    """The share of the signal a check must find gone since the previous one, else λ_forget grows."""
    max_lambda: float = 64.0
    """The largest λ_forget."""
    guard_drop: float = 0.05
    """Stop when the clean pairs' own-caption accuracy falls more than this below its start."""
    reference_pairs: int = 64
    """Clean pairs of the fit's first batch kept as the reference (cohesion and the guard)."""
    max_suspicious: int = 256
    """At most this many held-out suspicious pairs in the signal."""

    def __post_init__(self) -> None:
        if self.check_every < 1 or self.max_steps < 1 or self.reference_pairs < 2 or self.max_suspicious < 2:
            raise ValueError("model.adaptive: check_every, max_steps ≥ 1 and reference_pairs, max_suspicious ≥ 2")
        if self.grow < 1 or not 0 <= self.min_progress < 1 or self.tolerance < 0 or self.guard_drop <= 0 \
                or not 0 < self.holdout < 1:
            raise ValueError("model.adaptive: grow ≥ 1, 0 ≤ min_progress < 1, tolerance ≥ 0, guard_drop > 0, "
                             "0 < holdout < 1")


def mean_pairwise_cosine(features: torch.Tensor) -> float:
    """Mean cosine over distinct pairs of rows: near 0 for spread features, 1 for collapsed ones."""
    features = torch.nn.functional.normalize(features.float(), dim=-1)
    n = len(features)
    total = features.sum(0)
    return ((total @ total - n) / (n * (n - 1))).item()


def collapse_gap(suspicious: torch.Tensor, clean: torch.Tensor) -> float:
    """How much more the suspicious images' features collapse than clean images' (0: alike)."""
    return mean_pairwise_cosine(suspicious) - mean_pairwise_cosine(clean)


def relative_match(pair_similarity: torch.Tensor, clean_similarity: torch.Tensor) -> float:
    """How well pairs match, on the scale of a clean slice: (mean pair similarity − the slice's mean
    mismatched similarity) / (its mean matched − its mean mismatched). `clean_similarity` is the slice's
    image × caption similarity matrix, its diagonal the matched pairs."""
    n = len(clean_similarity)
    matched = clean_similarity.diagonal().mean()
    mismatched = (clean_similarity.sum() - clean_similarity.diagonal().sum()) / (n * (n - 1))
    return ((pair_similarity.float().mean() - mismatched) / (matched - mismatched).clamp(min=1e-6)).item()


def pair_accuracy(image_features: torch.Tensor, text_features: torch.Tensor) -> float:
    """The share of images whose own caption (same row) is their best-scored caption among all rows'."""
    scores = image_features.float() @ text_features.float().T
    return (scores.argmax(dim=1) == torch.arange(len(scores), device=scores.device)).float().mean().item()


@dataclass
class AdaptiveState:
    """Where the adaptive stage 2 stands: kept in checkpoints, so a resumed run goes on with it."""

    settings: AdaptiveUnlearning
    lambda_forget: float
    start_signal: Optional[float] = None
    last_signal: Optional[float] = None
    start_proxy: Optional[float] = None
    stopped: Optional[str] = None
    """Why stage 2 stopped: `signal`, `guard` or `cap` (None while it runs)."""
    trace: list[dict] = field(default_factory=list)
    reference: Optional[tuple[torch.Tensor, torch.Tensor]] = None
    """The clean slice: images and tokens of the fit's first batch's first `reference_pairs` pairs."""

    def check(self, step: int, signal: float, proxy: float, collapse: Optional[float] = None) -> Optional[str]:
        """Record a check at `step` and decide: the reason to stop, or None (maybe with a stronger λ)."""
        if self.start_signal is None:
            self.start_signal, self.start_proxy = signal, proxy
        self.trace.append({"step": step, "relative_match": round(signal, 4), "pair_accuracy": round(proxy, 4),
                           "collapse_gap": None if collapse is None else round(collapse, 4),
                           "lambda_forget": self.lambda_forget})
        if signal <= self.settings.tolerance:
            self.stopped = "signal"
        elif proxy < self.start_proxy - self.settings.guard_drop:
            self.stopped = "guard"
        elif step >= self.settings.max_steps:
            self.stopped = "cap"
        elif self.last_signal is not None and self.last_signal - signal < self.settings.min_progress * self.last_signal:
            self.lambda_forget = min(self.lambda_forget * self.settings.grow, self.settings.max_lambda)
        self.last_signal = signal
        return self.stopped

    def summary(self) -> dict:
        last = self.trace[-1] if self.trace else {}
        return {"stopped": self.stopped or "end of training", "checks": len(self.trace),
                "lambda_forget": self.lambda_forget, "start_relative_match": self.start_signal,
                "end_relative_match": last.get("relative_match"), "start_pair_accuracy": self.start_proxy,
                "end_pair_accuracy": last.get("pair_accuracy"), "trace": self.trace}

    def state_dict(self) -> dict:
        return {key: getattr(self, key) for key in ("lambda_forget", "start_signal", "last_signal", "start_proxy",
                                                    "stopped", "trace", "reference")}

    def load_state_dict(self, state: dict) -> None:
        for key, value in state.items():
            setattr(self, key, value)


def holdout_rows(count: int, settings: AdaptiveUnlearning, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(rows the forget loss trains on, rows held out for the signal) of a suspicious set of `count` pairs."""
    order = torch.randperm(count, generator=torch.Generator().manual_seed(seed))
    held = min(max(2, round(settings.holdout * count)), count - 1, settings.max_suspicious)
    return order[held:], order[:held]


@torch.no_grad()
def measure(module, reference: tuple[torch.Tensor, torch.Tensor]) -> tuple[float, float, float]:
    """(relative match, pair accuracy, collapse gap) of `module`'s model now, averaged over ranks (each holds
    its own clean slice)."""
    spec = module.input_spec()
    held = module.heldout_rows
    images = normalise_pixels(module.forget_images[held].float() / 255.0, spec.mean, spec.std).to(module.device)
    with eval_mode(module.model), module.full_precision():
        suspicious_images = module.encode_image(images)
        suspicious_texts = module.encode_text(module.forget_tokens[held].to(module.device))
        clean_images = module.encode_image(reference[0])
        clean_texts = module.encode_text(reference[1])
    values = torch.tensor([
        relative_match((suspicious_images * suspicious_texts).sum(-1), clean_images @ clean_texts.T),
        pair_accuracy(clean_images, clean_texts), collapse_gap(suspicious_images, clean_images)], device=module.device)
    if module.trainer.world_size > 1:
        values = module.trainer.strategy.reduce(values, reduce_op="mean")
    return float(values[0]), float(values[1]), float(values[2])


def adapt(module, batch: dict) -> float:
    """The λ_forget of this step: at every `check_every`-th step, measure, record, and stop the fit (every rank
    alike) when the state says so. The first call keeps the batch's first pairs as the clean slice."""
    state: AdaptiveState = module.adaptive_state
    settings = state.settings
    if state.reference is None:
        n = min(settings.reference_pairs, len(batch["image"]))
        state.reference = (batch["image"][:n].detach().clone(), batch["text"][:n].detach().clone())
    step = module.global_step
    if state.stopped is None and step % settings.check_every == 0:
        signal, proxy, collapse = measure(module, state.reference)
        reason = state.check(step, signal, proxy, collapse)
        module.log_dict({"unlearn/relative_match": signal, "unlearn/pair_accuracy": proxy,
                         "unlearn/collapse_gap": collapse, "unlearn/lambda_forget": state.lambda_forget})
        if reason is not None:
            module.trainer.should_stop = True
    return state.lambda_forget
