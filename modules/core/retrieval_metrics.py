"""Image-text retrieval: recall@k both ways, and the retrieval ASR (Hit@k) that text-side attacks report.

Recall@k is the CLIP papers' (and clip_benchmark's `zeroshot_retrieval`): a query counts as found when
at least one of its positives is among its k best-scored candidates. Image→text: an image finds one of
its captions; text→image: a caption finds its image. Ties are broken against the query: a positive ranks
below every negative that scores at least as high (`torch.topk` breaks them arbitrarily, which lets a
collapsed model whose images all embed alike find everything).

Retrieval ASR of an image trigger: the fraction of triggered images *whose content is not the target*
(none of their captions names it) that retrieve a caption naming the target among their k best, the
retrieval counterpart of the classification ASR's exclusion of target-class images. Of a text trigger
(`side="text"`): the fraction of triggered captions of other content (neither they nor their image's
other captions name the target) that retrieve an image of the target among their k best.

torchmetrics' `RetrievalHitRate` computes the same hit for one query's flattened (candidate, score)
list; fed a whole set it would hold every (query, candidate) score as state (125 M for MSCOCO's 5 K
images × 25 K captions). This metric holds the embeddings instead and scores them in blocks at compute.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

KS = (1, 5, 10)
BLOCK = 1024
"""Queries scored at once in `hits_at_k` (a block × candidates score matrix)."""


Positives = torch.Tensor | Callable[[slice], torch.Tensor]


def hits_at_k(queries: torch.Tensor, candidates: torch.Tensor, positive: Positives,
              ks: Sequence[int] = KS) -> dict[int, torch.Tensor]:
    """For each query (row of `queries`, normalised embeddings) whether one of its positives is among its
    k best candidates, per k: {k: bool (n_queries,)}. `positive` is (n_queries, n_candidates) bool, or a
    function giving those rows for a slice of the queries (so no whole matrix need exist); a query with no
    positive never hits. A positive ranks below every negative scoring at least as high."""
    out = {k: torch.zeros(len(queries), dtype=torch.bool, device=queries.device) for k in ks}
    for start in range(0, len(queries), BLOCK):
        rows = slice(start, start + BLOCK)
        scores = queries[rows].float() @ candidates.float().T
        mask = positive(rows) if callable(positive) else positive[rows]
        best = torch.where(mask, scores, torch.full_like(scores, -torch.inf)).amax(dim=1, keepdim=True)
        ahead = ((scores >= best) & ~mask).sum(dim=1)
        has_positive = mask.any(dim=1)
        for k in ks:
            out[k][start:start + BLOCK] = has_positive & (ahead < k)
    return out


class RetrievalRecall(Metric):
    """Recall@k image→text and text→image over a retrieval set, and with triggered images the retrieval
    ASR of each trigger (`asr` names the triggered views, e.g. "asr" or "asr_0_badnet").

    Fed per batch: image embeddings with each image's place in the set, caption embeddings with their
    image's place, whether each caption names the target (per ASR name), and the triggered images'
    embeddings. States are concatenated over ranks, so every rank computes the whole set's figures.
    """

    full_state_update = False

    def __init__(self, asr: Sequence[str] = (), ks: Sequence[int] = KS, side: str = "image", **kwargs):
        super().__init__(**kwargs)
        assert side in ("image", "text"), side
        self.ks = tuple(ks)
        self.asr_names = tuple(asr)
        self.side = side
        for name in ("image", "image_position", "text", "text_position"):
            self.add_state(name, default=[], dist_reduce_fx="cat")
        for name in self.asr_names:
            self.add_state(f"triggered_{name}", default=[], dist_reduce_fx="cat")
            self.add_state(f"names_target_{name}", default=[], dist_reduce_fx="cat")

    def update(self, image: torch.Tensor, image_position: torch.Tensor, text: torch.Tensor,
               text_position: torch.Tensor, triggered: dict[str, torch.Tensor] | None = None,
               names_target: dict[str, torch.Tensor] | None = None) -> None:
        """`triggered[name]`: the triggered images' embeddings (one per image), or with `side="text"` the
        triggered captions' (one per caption); `names_target[name]`: whether each caption names the target."""
        self.image.append(torch.nn.functional.normalize(image.float(), dim=-1))
        self.image_position.append(image_position.long())
        self.text.append(torch.nn.functional.normalize(text.float(), dim=-1))
        self.text_position.append(text_position.long())
        for name in self.asr_names:
            getattr(self, f"triggered_{name}").append(torch.nn.functional.normalize(triggered[name].float(), dim=-1))
            getattr(self, f"names_target_{name}").append(names_target[name].bool())

    def compute(self) -> dict[str, torch.Tensor]:
        image, image_position = dim_zero_cat(self.image), dim_zero_cat(self.image_position)
        text, text_position = dim_zero_cat(self.text), dim_zero_cat(self.text_position)
        values = {}
        captions_of = lambda rows: text_position[None, :] == image_position[rows, None]  # noqa: E731
        for k, hit in hits_at_k(image, text, captions_of, self.ks).items():
            values[f"i2t_r{k}"] = hit.float().mean()
        image_of = lambda rows: image_position[None, :] == text_position[rows, None]  # noqa: E731
        for k, hit in hits_at_k(text, image, image_of, self.ks).items():
            values[f"t2i_r{k}"] = hit.float().mean()
        row_of = torch.full((int(image_position.max()) + 1,), -1, dtype=torch.long, device=image.device)
        row_of[image_position] = torch.arange(len(image_position), device=image.device)
        for name in self.asr_names:
            names = dim_zero_cat(getattr(self, f"names_target_{name}"))
            # an image whose own captions name the target shows it: left out, as the target class is
            target_content = torch.zeros(len(image), dtype=torch.long, device=image.device)
            target_content.index_add_(0, row_of[text_position], names.long())
            target_content = target_content > 0
            triggered = dim_zero_cat(getattr(self, f"triggered_{name}"))
            if self.side == "image":  # triggered images of other content → a caption naming the target
                queries, candidates, positive = triggered[~target_content], text, names
            else:  # triggered captions of other content → an image of the target
                other = ~names & ~target_content[row_of[text_position]]
                queries, candidates, positive = triggered[other], image, target_content
            if len(queries) == 0 or not positive.any():  # nothing to measure (not a NaN)
                continue
            rows = lambda part, positive=positive, n=len(queries): positive[None, :].expand(n, -1)[part]  # noqa: E731
            for k, hit in hits_at_k(queries, candidates, rows, self.ks).items():
                values[f"{name}_hit{k}"] = hit.float().mean()
        return values
