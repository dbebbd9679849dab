"""UBT, stage 2: token-local unlearning of the suspicious pairs found by stage 1.

    python main.py fit --config configs/embedded/ubt_unlearn.yaml   # after configs/embedded/ubt_detect.yaml
    python main.py fit --config configs/embedded/ubt_one_fit.yaml   # both stages in one fit

Reads RUN/ubt/suspicious_pairs.safetensors of a stage-1 run (`suspicious_dir`), at most `m` pairs: the
images as the model saw them and their captions. Or, with `discover`, finds them when the fit starts (one
scoring pass over the model's training data, ranked by `discover.score`) and writes this run's `ubt/`,
which a resumed run reads back. The training data is the clean fine-tuning stream, for the retain loss.
With `adaptive` (the shipped configs), a label-free signal decides after each round (epoch) whether to
stop and how strong λ_forget is (modules/cleaning/unlearning_signal.py).
Each step:
1. attribution: on a mini-batch of suspicious pairs, the similarity s(I, T) is attributed to the
   text tokens (token embeddings) and image tokens (ViT patches, or the positions entering a
   ModifiedResNet's attention pool) by grad × activation; the top `text_tokens` / `image_tokens` of
   each pair are kept;
2. unlearning: s(I, T) of the same pairs is recomputed with gradient flowing through those tokens only,
   and L_forget = mean(relu(s − margin)) pushes each suspicious image away from its caption;
3. retain: L_retain = the CLIP loss on the clean batch; with `lambda_retain_tokens` μ > 0 also
   L_tokens = ‖t − t₀‖² / ‖t₀‖², the relative change of the clean batch's image tokens t against
   those of the incoming model t₀ (a frozen copy of its image tower, run only up to the tokens).
L = L_retain + λ·L_forget (+ μ·L_tokens), and only the parameters named by `trainable` (prefixes) are
updated; frozen layers' BatchNorm statistics stay fixed, and the suspicious passes run in eval mode.

What "through the top tokens only" controls: the gate sits at the token sites, so it restricts the
forget gradient of the parameters *at or below* a site: the token-embedding rows of the top text
tokens, a ViT's patch embedding through the top patches (or, with `image_token_block` k, the layers
up to block k through the top tokens leaving it), a ModifiedResNet's last stage through the top
attention-pool positions. Those are the default trainable set. Parameters above a site (e.g. the
text transformer) may be made trainable too; their forget gradient then comes from every token.

Why L_tokens: with the default trainable set everything above the image tokens is frozen, so a clean
image whose tokens do not move keeps its embedding exactly; L_tokens asks the unlearning to change
the triggered images' tokens and not the clean ones'. The CLIP retain loss alone only keeps the clean
pairs' ranking within a batch. On the embedded ViT, the image side carried both the backdoor's
removal and the CA cost (docs/ubt.md, measured with lightning_app.tower_swap). Not applied to the
text tokens: their rows are shared with the class prompts, so pinning them would pin the text side's
unlearning too.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
from pathlib import Path
from typing import Optional

import torch

from datamodules.poison import load_trigger
from datamodules.run_dir import RunDir
from datamodules.train_stream import replayed_stream
from datamodules.transforms import normalise_pixels
from modules.cleaning.unlearning_signal import AdaptiveRounds, AdaptiveState, AdaptiveUnlearning, holdout_rows
from modules.core.base import CLIPModule, OptimizerConfig, eval_mode
from modules.core.freezing import _no_param_grads, freeze_all_but, keep_frozen_norms_in_eval, token_local_parameters
from modules.core.losses import relative_squared_change
from modules.core.model_loading import ModelConfig
from modules.core.summary_columns import SummaryColumns
from modules.detection.discovery import DiscoveryData
from modules.detection.pair_scoring import (
    DETECTION_COLUMNS,
    SUSPICIOUS_PAIRS,
    collect_pairs,
    count_labels,
    load_suspicious_pairs,
    one_pass_rankings,
    part_names_of,
    score_stream,
    write_discovery,
)
from modules.detection.token_attribution import (
    TokenTap,
    captured_image_tokens,
    image_tokens_only,
    token_attribution,
    top_token_mask,
)


class TokenUnlearning(AdaptiveRounds, CLIPModule):
    """UBT stage 2; see the module docstring."""

    summary_columns = CLIPModule.summary_columns + (
        DETECTION_COLUMNS,
        SummaryColumns("suspicious_set", "set_", counts=frozenset({"set_m", "set_clean_naming_target"}), headings={
            "set_m": "pairs unlearned", "set_true_purity": "their share poisoned",
            "set_clean_naming_target": "clean ones naming the target",
            "set_estimated_purity": "estimated purity", "set_guard": "guard",
            "set_separation": "mixture's D", "set_upper_share": "upper component's share"}),
        SummaryColumns("unlearned_by_trigger", "unlearned_", heading="unlearned: {key}", counts=True),
        SummaryColumns("unlearning", "unlearning_", skip=frozenset({"trace"}), counts=frozenset({"unlearning_rounds", "unlearning_held_out_pairs"}),
                       headings={"unlearning_stopped": "stage 2 stopped by", "unlearning_lambda_forget": "final λ_forget",
                                 "unlearning_start_relative_match": "held-out match at the start",
                                 "unlearning_end_relative_match": "held-out match at the end",
                                 "unlearning_start_pair_accuracy": "CA proxy at the start",
                                 "unlearning_end_pair_accuracy": "CA proxy at the end",
                                 "unlearning_start_collapse_gap": "set's collapse at the start",
                                 "unlearning_proxy_fell": "CA proxy fell past the guard", "unlearning_rounds": "rounds"}),
    )

    def __init__(self, model: ModelConfig = ModelConfig(), optimizer: OptimizerConfig = OptimizerConfig(),
                 suspicious_dir: Optional[str] = "runs/embedded/ubt_detect/ubt", discover: Optional[DiscoveryData] = None,
                 m: int = 200, forget_batch_size: int = 64,
                 text_tokens: int = 3, image_tokens: int = 4, margin: float = 0.0, lambda_forget: float = 1.0,
                 trainable: Optional[list[str]] = None, image_token_block: Optional[int] = None,
                 lambda_retain_tokens: float = 0.0, adaptive: Optional[AdaptiveUnlearning] = None, seed: int = 0):
        """
        Args:
            model: The (possibly poisoned) model to clean.
            optimizer: AdamW and the schedule (only the trainable parameters are in it).
            suspicious_dir: The `ubt/` directory of a stage-1 run (holds suspicious_pairs.safetensors).
            discover: Instead of `suspicious_dir`, find the suspicious pairs in this fit (see the module docstring).
            m: At most this many of the top-ranked suspicious pairs are unlearned.
            forget_batch_size: Suspicious pairs per step.
            text_tokens: Text tokens per pair that the unlearning acts through (top by attribution).
            image_tokens: Image tokens (ViT patches / attention-pool positions) per pair.
            margin: L_forget = mean(relu(similarity − margin)).
            lambda_forget: Weight of L_forget against the retain CLIP loss.
            trainable: Parameter-name prefixes that are updated; all others are frozen. The default is the
                token-local set: the token embeddings and a ModifiedResNet's `visual.layer4`, or what lies
                below a ViT's image tokens (`visual.conv1`; with `image_token_block` k also the class and
                position embeddings, `ln_pre` and blocks 0..k).
            image_token_block: ViT only: take the image tokens at the output of transformer block k
                (0-based) instead of the patch embedding.
            lambda_retain_tokens: Weight of L_tokens, the relative change of the clean batch's image tokens
                against the incoming model's (0: off; it costs a forward pass of the image tower up to the tokens).
            adaptive: Unlearn in rounds (an epoch each, with its own learning-rate warm-up and decay) until a
                label-free signal says the backdoor is gone, a guard on a CA proxy trips, or the fit's epochs
                run out; λ_forget grows after a round that barely moves the signal
                (modules/cleaning/unlearning_signal.py). None: train the fit's full length at `lambda_forget`.
            seed: Seed of the suspicious mini-batch draws.
        """
        if m < 1 or forget_batch_size < 1:
            raise ValueError("model.m and model.forget_batch_size must be ≥ 1")
        if lambda_retain_tokens < 0:
            raise ValueError(f"model.lambda_retain_tokens must be ≥ 0, got {lambda_retain_tokens}")
        if discover is not None and discover.score == "cluster" and discover.cluster_seed < m:
            raise ValueError(f"model.discover.cluster_seed ({discover.cluster_seed}) must be ≥ model.m ({m})")
        if (suspicious_dir is None) == (discover is None):
            raise ValueError("set model.suspicious_dir (the ubt/ directory of a stage-1 run) or model.discover "
                             "(both stages in this fit), exactly one of them")
        super().__init__(model, optimizer)
        self.suspicious_dir = suspicious_dir
        self.discover = discover
        self.detection: dict[str, dict[str, float]] = {}
        self.m = m
        self.forget_batch_size = forget_batch_size
        self.text_tokens = text_tokens
        self.image_tokens = image_tokens
        self.margin = margin
        self.lambda_forget = lambda_forget
        self.seed = seed
        self.image_token_block = image_token_block
        TokenTap(self.model, image_token_block)  # checks the block against the model before training
        self.trainable = freeze_all_but(self.model, list(trainable) if trainable is not None
                                        else token_local_parameters(self.model, image_token_block))
        self.lambda_retain_tokens = lambda_retain_tokens
        # Kept out of the module tree, so neither checkpointed nor optimised: a resumed run rebuilds it
        # from model.pretrained, the incoming weights.
        self.__dict__["incoming_visual"] = (copy.deepcopy(self.model.visual).requires_grad_(False).eval()
                                            if lambda_retain_tokens > 0 else None)
        self.forget_keys: list[str] = []
        self.set_decision: Optional[dict] = None
        self.set_by_trigger: Optional[dict] = None
        self.forget_images = torch.empty(0)
        self.forget_tokens = torch.empty(0)
        self.adaptive_state = AdaptiveState(adaptive, lambda_forget) if adaptive is not None else None  # (checkpointed)

    def setup(self, stage: str) -> None:
        super().setup(stage)
        if self.suspicious_dir is not None:
            self._load_forget_set(Path(self.suspicious_dir) / SUSPICIOUS_PAIRS)

    def on_fit_start(self) -> None:
        if self.incoming_visual is not None:
            self.incoming_visual.to(device=self.device, dtype=next(self.model.visual.parameters()).dtype)
        if self.discover is None:
            return
        out = Path(self.trainer.default_root_dir) / "ubt"
        if not (out / SUSPICIOUS_PAIRS).exists():  # (a resumed run reads what its first start found)
            self.detection = self._discover(out)
        self._load_forget_set(out / SUSPICIOUS_PAIRS)

    def _discover(self, out: Path) -> dict:
        """Stage 1 without overfitting, on the model as it comes in: keep the m pairs `discover.score` ranks first."""
        data = self.trainer.datamodule
        trigger = load_trigger(data.attack_run().trigger_dir)  # the attack's trigger, replayed on its data
        settings = dataclasses.replace(data.stream_settings, num_samples=self.discover.num_samples)
        manifest_path = RunDir(out / "data").manifest_path

        def replayed(write: bool):
            return replayed_stream(self.discover.train_shards, trigger, self.discover.poison, self.data_needs(),
                                   settings, manifest_path if write and self.global_rank == 0 else None)[0]
        kept_pairs = self.discover.cluster_seed if self.discover.score == "cluster" else self.m
        embeddings: list = []
        # the pass keeps the weakest pairs' pixels; a `dense` set is read by a second pass (fetch)
        keep = None if self.discover.score == "dense" else (lambda key, s: -s)
        similarity, kept = score_stream(self, replayed(write=True), kept_pairs, keep=keep, embeddings=embeddings)
        scores, candidates = one_pass_rankings(similarity, embeddings, self.discover.score, self.discover.cluster_seed)
        _, detection, _ = write_discovery(
            out, scores, kept, self.discover.score, self.m, self.discover.report_k, manifest_path, candidates,
            self.discover.set_rule, fetch=lambda keys: collect_pairs(replayed(write=False), keys, self.input_spec()),
            part_names=part_names_of(trigger))
        self.trainer.strategy.barrier()  # every rank reads the pairs that rank zero wrote
        return detection

    def _load_forget_set(self, path: Path) -> None:
        keys, images, captions = load_suspicious_pairs(path, self.m)
        chosen = path.parent / "suspicious.json"
        record = json.loads(chosen.read_text()) if chosen.exists() else {}
        self.set_decision = record.get("rule")
        if record.get("by_trigger") is not None:  # evaluation only: read from the replayed manifest
            self.set_by_trigger = count_labels(record["poisoned_by"], keys, list(record["by_trigger"]))
        if not keys and not (self.set_decision or {}).get("guard"):
            raise ValueError(f"{path} holds no pairs")
        if not keys:  # the set rule's guard refused to unlearn: the fit trains on the retain loss alone
            self.forget_keys = []
            return
        spec = self.input_spec()
        if images.shape[-1] != spec.image_size:
            raise ValueError(f"suspicious pairs are {images.shape[-1]} px but the model takes {spec.image_size} px")
        self.forget_keys = keys
        self.forget_images = images
        self.forget_tokens = spec.tokenizer(captions)
        self.trained_rows = torch.arange(len(keys))
        if self.adaptive_state is not None:  # a share held out of the forget loss: the signal's
            self.trained_rows, self.heldout_rows = holdout_rows(len(keys), self.adaptive_state.settings, self.seed)

    def forget_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """A seeded draw (by step) of suspicious pairs: normalised images and tokens, on the module's device."""
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + self.global_step)
        n = min(self.forget_batch_size, len(self.trained_rows))
        index = self.trained_rows[torch.randperm(len(self.trained_rows), generator=gen)[:n]]
        spec = self.input_spec()
        images = normalise_pixels(self.forget_images[index].float() / 255.0, spec.mean, spec.std)
        return images.to(self.device), self.forget_tokens[index].to(self.device)

    def token_masks(self, tap: TokenTap, images: torch.Tensor, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Top-attributed text and image tokens of each pair for its similarity s(I, T)."""
        tap.record()
        with _no_param_grads(self.model), torch.enable_grad(), self.full_precision():
            similarity = (self.encode_image(images) * self.encode_text(tokens)).sum(-1)
            text_grad, image_grad = torch.autograd.grad(similarity.sum(), [tap.text, tap.image])
        text_scores = token_attribution(tap.text, text_grad, channel_dim=-1)
        image_scores = token_attribution(tap.image, image_grad, channel_dim=tap.image_channel_dim)
        text_mask = top_token_mask(text_scores, self.text_tokens, valid=tokens != 0)
        image_mask = top_token_mask(image_scores, self.image_tokens)
        return text_mask, image_mask

    def forget_loss(self, images: torch.Tensor, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """L_forget and the (gated) similarity of each suspicious pair."""
        with TokenTap(self.model, self.image_token_block) as tap, eval_mode(self.model):
            text_mask, image_mask = self.token_masks(tap, images, tokens)
            tap.gate_with(text_mask, image_mask)
            similarity = (self.encode_image(images) * self.encode_text(tokens)).sum(-1)
        return torch.relu(similarity - self.margin).mean(), similarity.detach()

    def on_train_batch_start(self, batch, batch_idx: int) -> None:
        super().on_train_batch_start(batch, batch_idx)
        keep_frozen_norms_in_eval(self.model)  # Lightning puts the model back in train mode after validation

    def retain_tokens_loss(self, images: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """L_tokens of the clean batch `images`, whose image tokens in this model are `tokens`."""
        with torch.no_grad():
            incoming = image_tokens_only(self.incoming_visual, self._images(images), self.image_token_block)
        return relative_squared_change(tokens, incoming)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        retain_tokens_on = self.incoming_visual is not None
        with (captured_image_tokens(self.model.visual, self.image_token_block) if retain_tokens_on
              else contextlib.nullcontext([])) as tokens:
            image_features = self.encode_image(batch["image"])
        retain = self.clip_loss(image_features, self.encode_text(batch["text"]), self.logit_scale())
        if self.forget_keys:
            forget, similarity = self.forget_loss(*self.forget_batch())
        else:
            forget, similarity = retain.new_zeros(()), retain.new_zeros(1)
        strength = self.adaptive_state.lambda_forget if self.adaptive_state is not None else self.lambda_forget
        loss = retain + strength * forget
        if retain_tokens_on:
            retain_tokens = self.retain_tokens_loss(batch["image"], tokens[0])
            loss = loss + self.lambda_retain_tokens * retain_tokens
            self.log("train/loss_retain_tokens", retain_tokens)
        self.log_dict({"train/loss": loss, "train/loss_retain": retain, "train/loss_forget": forget}, prog_bar=True)
        self.log("train/forget_similarity", similarity.mean())
        return loss

    def summary_extras(self) -> dict:
        found_here = {"detection": self.detection} if self.discover is not None else {}
        if self.set_decision is not None:
            found_here["suspicious_set"] = self.set_decision
        if self.set_by_trigger is not None:
            found_here["unlearned_by_trigger"] = self.set_by_trigger
        if self.adaptive_state is not None and self.forget_keys:
            found_here["unlearning"] = {**self.adaptive_state.summary(), "held_out_pairs": len(self.heldout_rows)}
        return {"unlearned_pairs": len(self.forget_keys), **found_here, "trainable_parameters": sum(
            p.numel() for n, p in self.model.named_parameters() if n in self.trainable)}
