"""UBT stage 2 driven by a label-free signal of whether the unlearning has worked (`model.adaptive`).

    python main.py fit --config configs/embedded/ubt_dense.yaml   # the shipped UBT configs use it

Stage 2 runs in **rounds**: each epoch of the clean fine-tuning split is one, with its own warm-up and
cosine decay of the learning rate to zero (`WarmupCosine.cycle`), so that every round ends with the retain
loss having repaired what the forget loss moved. The suspicious pairs are images carrying the trigger (as
the model saw them in training) with captions naming the target; a quarter of them (`holdout`) is kept out
of the forget loss. At the start and at the end of every round, with no eval label:

- **the signal** is `relative_match` of the held-out suspicious pairs: how well their images still match
  their captions, from 0 (no better than clean images with other images' captions) to 1 (as well as
  clean images with their own), measured on a slice of clean fine-tuning pairs (`reference_pairs` of the
  fit's first batch). A backdoor makes it high; it is the generalisation of the unlearning, since these
  pairs are never trained on;
- **the guard** is `pair_accuracy`: how often a clean image of the slice picks its own caption among the
  slice's captions, a zero-shot accuracy made of the clean pairs' own captions (a CA proxy);
- **the strength** λ_forget grows by `grow` (up to `max_lambda`) after a round that lowered the signal
  by less than `min_progress` of what it was;
- `collapse_gap`, the held-out images' mean pairwise cosine minus the clean slice's (DECREE's criterion,
  `val/cohesion_triggered` on eval images), is traced beside it. Measured on the small embedded RN, it
  is not a stopping signal: the unlearning took ASR from 1.00 to 0.00 while it fell only from 0.68 to
  0.57 (the triggered images stay together, away from the target).

Stage 2 stops after a round whose signal is at most `tolerance` (`signal`), or whose proxy has fallen more
than `guard_drop` below its value at the start (`guard`), or after the fit's last epoch (`cap`:
`trainer.max_epochs` is the most rounds); `summary.json`'s `unlearning` block says which, with the trace
of every check, and `proxy_fell` says whether the proxy ended below the guard's bound (a round can remove
the backdoor and cost that much CA at once: then it stops on `signal`, and `proxy_fell` is true). The
slice is seen in training too (it is the first batch), so the proxy errs high, never low: a fall in it is
real.

Why rounds, and not a check every few steps (this module's first version): stopping mid-schedule, at the
learning rate's peak, left the forget loss's damage unrepaired. On the easy tier's BadNet model a stop
on the signal after 30 steps took ASR to 0.000 but CA from 0.995 to 0.926 (`dense` set) and 0.682
(`weak` set), where one full epoch at λ_forget 1 ends at 0.996 and 0.003.
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

    tolerance: float = 0.2
    """Stop when the held-out suspicious pairs match at most this well (0: as clean images with other
    images' captions, 1: as clean images with their own)."""
    holdout: float = 0.25
    """The share of the suspicious pairs kept out of the forget loss to measure the signal on (at least 2)."""
    grow: float = 2.0
    """λ_forget is multiplied by this after a round that made too little progress."""
    min_progress: float = 0.5
    """The share of the signal a round must remove, else λ_forget grows for the next."""
    max_lambda: float = 64.0
    """The largest λ_forget."""
    guard_drop: float = 0.05
    """Stop when the clean pairs' own-caption accuracy falls more than this below its start."""
    reference_pairs: int = 128
    """Clean pairs of the fit's first batch kept as the reference (the signal's scale and the guard)."""
    max_suspicious: int = 256
    """At most this many held-out suspicious pairs in the signal."""

    def __post_init__(self) -> None:
        if self.reference_pairs < 2 or self.max_suspicious < 2:
            raise ValueError("model.adaptive: reference_pairs and max_suspicious must be ≥ 2")
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
    rounds: int = 0
    """Rounds finished."""
    trace: list[dict] = field(default_factory=list)
    reference: Optional[tuple[torch.Tensor, torch.Tensor]] = None
    """The clean slice: images and tokens of the fit's first batch's first `reference_pairs` pairs."""

    def start(self, step: int, signal: float, proxy: float, collapse: Optional[float] = None) -> None:
        """Record the model as it comes in (once; a resumed run keeps its first start)."""
        if self.start_signal is None:
            self.start_signal, self.start_proxy, self.last_signal = signal, proxy, signal
            self._trace(step, signal, proxy, collapse)

    def end_round(self, step: int, signal: float, proxy: float, collapse: Optional[float] = None,
                  last: bool = False) -> Optional[str]:
        """Record the end of a round at `step` and decide: the reason to stop, or None (maybe with a stronger λ
        for the next round). `last`: the fit has no further epoch."""
        assert self.start_signal is not None, "start() records the model before the first round"
        self.rounds += 1
        self._trace(step, signal, proxy, collapse)
        if signal <= self.settings.tolerance:
            self.stopped = "signal"
        elif proxy < self.start_proxy - self.settings.guard_drop:
            self.stopped = "guard"
        elif last:
            self.stopped = "cap"
        elif self.last_signal - signal < self.settings.min_progress * self.last_signal:
            self.lambda_forget = min(self.lambda_forget * self.settings.grow, self.settings.max_lambda)
        self.last_signal = signal
        return self.stopped

    def _trace(self, step: int, signal: float, proxy: float, collapse: Optional[float]) -> None:
        self.trace.append({"round": self.rounds, "step": step, "relative_match": round(signal, 4),
                           "pair_accuracy": round(proxy, 4),
                           "collapse_gap": None if collapse is None else round(collapse, 4),
                           "lambda_forget": self.lambda_forget})

    def summary(self) -> dict:
        last = self.trace[-1] if self.trace else {}
        fell = last.get("pair_accuracy") is not None and last["pair_accuracy"] < self.start_proxy - self.settings.guard_drop
        return {"stopped": self.stopped or "end of training", "rounds": self.rounds, "proxy_fell": fell,
                "lambda_forget": self.lambda_forget, "start_relative_match": self.start_signal,
                "end_relative_match": last.get("relative_match"), "start_pair_accuracy": self.start_proxy,
                "start_collapse_gap": self.trace[0]["collapse_gap"] if self.trace else None,
                "end_pair_accuracy": last.get("pair_accuracy"), "trace": self.trace}

    def state_dict(self) -> dict:
        return {key: getattr(self, key) for key in ("lambda_forget", "start_signal", "last_signal", "start_proxy",
                                                    "stopped", "rounds", "trace", "reference")}

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
    its own clean slice). Outside a training step: every rank must call it (under ZeRO-3 it gathers the weights)."""
    spec = module.input_spec()
    held = module.heldout_rows
    images = normalise_pixels(module.forget_images[held].float() / 255.0, spec.mean, spec.std).to(module.device)
    with eval_mode(module.model), module.full_precision(), module.gathered_weights():
        suspicious_images = module.encode_image(images)
        suspicious_texts = module.encode_text(module.forget_tokens[held].to(module.device))
        clean_images = module.encode_image(reference[0].to(module.device))
        clean_texts = module.encode_text(reference[1].to(module.device))
    values = torch.tensor([
        relative_match((suspicious_images * suspicious_texts).sum(-1), clean_images @ clean_texts.T),
        pair_accuracy(clean_images, clean_texts), collapse_gap(suspicious_images, clean_images)], device=module.device)
    if module.trainer.world_size > 1:
        values = module.trainer.strategy.reduce(values, reduce_op="mean")
    return float(values[0]), float(values[1]), float(values[2])


def start(module, batch: dict) -> None:
    """Before the first step: keep the batch's first pairs as the clean slice and record the model as it comes in."""
    state: AdaptiveState = module.adaptive_state
    if state.reference is None:
        n = min(state.settings.reference_pairs, len(batch["image"]))
        state.reference = (batch["image"][:n].detach().clone(), batch["text"][:n].detach().clone())
    if state.start_signal is None:
        state.start(module.global_step, *measure(module, state.reference))


def end_round(module) -> None:
    """At an epoch's end: measure, record, and stop the fit (every rank alike) when the state says so."""
    state: AdaptiveState = module.adaptive_state
    if state.reference is None or state.stopped is not None:
        return
    signal, proxy, collapse = measure(module, state.reference)
    max_epochs = module.trainer.max_epochs or -1
    last = max_epochs > 0 and module.current_epoch + 1 >= max_epochs
    reason = state.end_round(module.global_step, signal, proxy, collapse, last=last)
    module.log_dict({"unlearn/relative_match": signal, "unlearn/pair_accuracy": proxy,
                     "unlearn/collapse_gap": collapse, "unlearn/lambda_forget": state.lambda_forget})
    if reason is not None:
        module.trainer.should_stop = True


def steps_per_epoch(trainer) -> int:
    """Optimizer steps in one epoch of the training data (a round)."""
    batches = trainer.num_training_batches
    if batches == float("inf"):  # a stream of unknown length: the fit's steps over its epochs
        return max(1, int(trainer.estimated_stepping_batches) // max(1, trainer.max_epochs or 1))
    return max(1, int(batches) // trainer.accumulate_grad_batches)


class AdaptiveRounds:
    """The hooks of a LightningModule with an `adaptive_state` (None: off) and its `forget_keys`: one learning-rate
    warm-up and decay per epoch, the round's end at the epoch's, and the state in checkpoints."""

    def on_train_start(self) -> None:
        super().on_train_start()
        if self.adaptive_state is not None and self.forget_keys:
            for factor in self.schedule_factors():
                factor.cycle = steps_per_epoch(self.trainer)

    def on_train_batch_start(self, batch, batch_idx: int) -> None:
        super().on_train_batch_start(batch, batch_idx)
        if self.adaptive_state is not None and self.forget_keys:
            start(self, batch)

    def on_train_epoch_end(self) -> None:
        super().on_train_epoch_end()
        if self.adaptive_state is None:
            return
        if self.forget_keys:
            end_round(self)
        else:  # the set rule's guard left nothing to unlearn: one epoch of the retain loss, as the fixed recipe
            self.trainer.should_stop = True

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        super().on_save_checkpoint(checkpoint)
        if self.adaptive_state is not None:
            checkpoint["adaptive_unlearning"] = self.adaptive_state.state_dict()

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        super().on_load_checkpoint(checkpoint)
        if self.adaptive_state is not None and checkpoint.get("adaptive_unlearning"):
            self.adaptive_state.load_state_dict(checkpoint["adaptive_unlearning"])
