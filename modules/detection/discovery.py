"""UBT, stage 1 (Liang et al., arXiv 2403.16257 / 2409.19526): find suspicious pairs by overfitting.

    python main.py fit --config configs/embedded/ubt_detect.yaml

Run on the (possibly poisoned) training data as the model saw it, from the model to clean:
1. score every pair by the cosine similarity of its image and caption;
2. overfit the model on the same data, each pair's contrastive loss weighted toward weak-similarity
   pairs (`softmax(-s/τ)` within the batch, mean 1): the clean pairs that the model fits worst get the
   push, and the backdoor shortcut, which fits its pairs easily, is strengthened rather than diluted;
3. score again and rank the pairs, by the similarity after overfitting (`score: after`), by its rise
   (`score: rise`), or by the weakness of the similarity before (`score: weak`); every ranking is
   evaluated.
Writes RUN/ubt/ranking.json (every key with its scores, ranked) and RUN/ubt/suspicious.json (top m).
Detection quality against the run's poison manifest (which no decision reads) goes to
RUN/ubt/detection.json and summary.json: AUROC, precision and recall at k, as torchmetrics.
Choice made here (the papers leave it open): loss weighting within the batch rather than weighted
sampling, because the shards stream and cannot be sampled by weight.

`score: cluster` (our addition, not UBT's; see `cluster_scores`, needs `overfit: false`): each image's
similarity to the centroid of the images of the `cluster_seed` weakest pairs; the suspicious set is
the top m of those weakest pairs by it, so one pass keeps every candidate's pixels.

`overfit: false` skips steps 2 and 3: one scoring pass ranks by `weak`, the only score that does not
need the overfitted model, at a third of the cost. The embedded configs use it, because `weak` is the
ranking that finds the poisoned pairs there; `overfit: true` measures every ranking.

Measured detection quality of each score: docs/results/ubt.md and, one seed each, docs/archive/one-seed.md (blocks `ubt-*`). Where poisoned captions
describe another picture than the triggered image (the caption-set attack), the poisoned pairs are
the weakest-matched ones under the poisoned model, so `weak` finds them and `after` ranks them last.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Literal, Optional

import torch

from datamodules.poison import PoisonConfig
from modules.core.base import CLIPModule, OptimizerConfig
from modules.core.model_loading import ModelConfig
from modules.core.summary_columns import SummaryColumns
from modules.detection.pair_scoring import (
    DETECTION_COLUMNS,
    cluster_scores,
    one_pass_rankings,
    part_names_of,
    per_pair_clip_loss,
    score_stream,
    weak_pair_weights,
    write_discovery,
)
from modules.detection.suspicious_set import SetRule


class SuspiciousPairDiscovery(CLIPModule):
    """UBT stage 1: overfit toward weak-similarity pairs, then rank the pairs; see the module docstring."""

    changes_weights = False
    summary_columns = CLIPModule.summary_columns + (
        DETECTION_COLUMNS,
        SummaryColumns("detection_cost", "cost_", headings={
            "cost_scoring_pass_s": "scoring pass (s)", "cost_kdist_slof_dao_dense_s": "kdist, SLOF, DAO, dense (s)",
            "cost_gmm_s": "GMM (s)", "cost_cluster_s": "cluster (s)"}),
    )

    def __init__(self, model: ModelConfig = ModelConfig(), optimizer: OptimizerConfig = OptimizerConfig(),
                 temperature: float = 0.05, score: Literal["after", "rise", "weak", "cluster"] = "after", top_m: int = 200,
                 report_k: list[int] = [100, 200, 1000], overfit: bool = True, cluster_seed: int = 1000):
        """
        Args:
            model: The (possibly poisoned) model; a copy of it is overfitted, the original is untouched.
            optimizer: AdamW and the schedule of the overfitting.
            temperature: τ of the weak-pair weights softmax(-similarity/τ).
            score: Which score ranks the pairs in suspicious.json: similarity after overfitting (UBT), its
                rise, `weak`: the lowest similarity under the incoming model (SafeCLIP's signal), or `cluster`
                (see the module docstring; needs overfit false).
            top_m: How many of the top-ranked keys make up the suspicious set (UBT's unlearning set).
            report_k: The k of precision@k and recall@k.
            overfit: Overfit and score again (UBT). False: one scoring pass and no training, which only
                the `weak` and `cluster` rankings allow.
            cluster_seed: The `cluster` score's seed: each image's similarity, under the incoming model, to
                the centroid of the images of this many weakest pairs; with `score: cluster` the suspicious
                set is taken from them (so ≥ top_m).
        """
        if temperature <= 0 or top_m < 1 or cluster_seed < 1:
            raise ValueError("model.temperature must be > 0, model.top_m and model.cluster_seed ≥ 1")
        if not overfit and score not in ("weak", "cluster"):
            raise ValueError(f"model.score {score!r} ranks by the overfitted model: it needs model.overfit true "
                             "(without overfitting model.score is 'weak' or 'cluster')")
        if overfit and score == "cluster":
            raise ValueError("model.score 'cluster' ranks by the incoming model in one pass: set model.overfit false")
        if score == "cluster" and cluster_seed < top_m:
            raise ValueError(f"model.cluster_seed ({cluster_seed}) must be ≥ model.top_m ({top_m}): "
                             "the suspicious set is taken from the seed")
        super().__init__(model, optimizer)
        self.overfit = overfit
        self.temperature = temperature
        self.score = score
        self.top_m = top_m
        self.report_k = list(report_k)
        self.cluster_seed = cluster_seed
        self.similarity_before: dict[str, float] = {}
        self.cluster_before: dict[str, float] = {}
        self.detection: dict[str, dict[str, float]] = {}
        self.detection_cost: dict[str, float] = {}

    def score_pairs(self, keep: Optional[Callable[[str, float], float]] = None, embeddings: Optional[list] = None
                    ) -> tuple[dict[str, float], dict]:
        if self.trainer.world_size != 1:
            raise ValueError(f"suspicious-pair discovery runs on one device (it scores the whole stream), but "
                             f"trainer.devices × num_nodes gives {self.trainer.world_size} ranks under "
                             f"{type(self.trainer.strategy).__name__}: set trainer.devices 1 and trainer.num_nodes 1 "
                             "(any strategy, ZeRO included); its unlearning stage then runs on every device")
        kept = self.cluster_seed if self.score == "cluster" else self.top_m
        return score_stream(self, self.trainer.datamodule.train_stream, kept, keep, embeddings)

    def on_train_start(self) -> None:
        super().on_train_start()
        embeddings: list = []
        if not self.overfit:
            start = time.perf_counter()
            before, kept = self.score_pairs(keep=lambda key, s: -s, embeddings=embeddings)
            self.detection_cost = {"scoring_pass_s": round(time.perf_counter() - start, 3)}
            self._finish(*one_pass_rankings(before, embeddings, self.score, self.cluster_seed, self.detection_cost), kept)
            self.trainer.should_stop = True  # the fit loop ends before its first batch
            return
        if not self.similarity_before:  # (restored from the checkpoint on resume)
            self.similarity_before, _ = self.score_pairs(embeddings=embeddings)
            self.cluster_before = cluster_scores(self.similarity_before, embeddings, self.cluster_seed)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        image, text = self.encode_image(batch["image"]), self.encode_text(batch["text"])
        weights = weak_pair_weights((image * text).sum(-1), self.temperature)
        loss = (weights * per_pair_clip_loss(image, text, self.logit_scale())).mean()
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["ubt_similarity_before"] = self.similarity_before
        checkpoint["ubt_cluster_before"] = self.cluster_before

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.similarity_before = checkpoint.get("ubt_similarity_before", {})
        self.cluster_before = checkpoint.get("ubt_cluster_before", {})

    def on_train_end(self) -> None:
        if not self.overfit:
            return
        before = self.similarity_before
        priority = {"after": lambda key, s: s, "rise": lambda key, s: s - before[key], "weak": lambda key, s: -before[key]}
        after, kept = self.score_pairs(keep=priority[self.score])
        scores = {"before": before, "after": after, "rise": {k: after[k] - before[k] for k in after if k in before},
                  "weak": {k: -v for k, v in before.items()}}
        if self.cluster_before:  # (absent from a checkpoint written before it existed)
            scores["cluster"] = self.cluster_before
        self._finish(scores, None, kept)

    def _finish(self, scores: dict[str, dict[str, float]], candidates: Optional[list[str]], kept: dict) -> None:
        """Write the rankings and detection quality, and the top-m pairs for stage 2."""
        _, self.detection, _ = write_discovery(Path(self.trainer.default_root_dir) / "ubt", scores, kept, self.score,
                                               self.top_m, self.report_k, Path(self.trainer.datamodule.manifest_path),
                                               candidates, part_names=part_names_of(self.trainer.datamodule.trigger))

    def summary_extras(self) -> dict:
        return {"detection": self.detection, "suspicious_m": self.top_m, "ranking_score": self.score, "overfit": self.overfit,
                "cluster_seed": self.cluster_seed, "detection_cost": self.detection_cost}


@dataclass
class DiscoveryData:
    """UBT's stage 1 inside the unlearning fit (`TokenUnlearning.discover`)."""

    train_shards: str
    """The training shards of the model to clean (as for data.train_shards)."""
    poison: PoisonConfig = field(default_factory=PoisonConfig)
    """The poisoning its training applied, replayed (the embedded benchmark poisons on the fly; rate 0
    for data that is poisoned on disk). Its manifest only measures detection quality."""
    num_samples: Optional[int] = None
    """Pairs in the shards; None reads img2dataset's `*_stats.json` files."""
    report_k: list[int] = field(default_factory=lambda: [100, 200, 1000])
    """The k of the detection precision@k and recall@k."""
    score: Literal["weak", "cluster", "dense"] = "weak"
    """Which ranking picks the pairs: `weak`, `cluster` or `dense` (see modules/detection/discovery.py and
    modules/detection/suspicious_set.py; `dense` reads the chosen pairs in a second pass over the shards)."""
    set_rule: SetRule = field(default_factory=SetRule)
    """How many of the ranking's top pairs to unlearn: a fixed m, or the mixture rule with its guard."""
    cluster_seed: int = 1000
    """The `cluster` score's seed: the images of this many weakest pairs make its centroid (≥ m)."""
