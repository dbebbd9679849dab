"""Zero-shot metrics: the classifier from classnames × templates, clean accuracy, and attack success rate."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torchmetrics import Metric


@torch.no_grad()
def zeroshot_classifier(
    encode_text: Callable[[torch.Tensor], torch.Tensor],
    tokenizer: Callable[[list[str]], torch.Tensor],
    classnames: Sequence[str],
    templates: Sequence[str],
    device: torch.device,
) -> torch.Tensor:
    """(embed_dim, num_classes): each class is the normalised mean of its normalised template embeddings."""
    columns = []
    for name in classnames:
        tokens = tokenizer([t.format(name) for t in templates]).to(device)
        emb = torch.nn.functional.normalize(encode_text(tokens).float(), dim=-1).mean(dim=0)
        columns.append(torch.nn.functional.normalize(emb, dim=0))
    return torch.stack(columns, dim=1)


class AttackSuccessRate(Metric):
    """Among samples whose true class is not the target, the fraction predicted as the target.

    Fed the logits of *triggered* images. Target-class images are excluded: counting them (as some
    published scripts do) inflates ASR by the clean accuracy on that class.
    """

    full_state_update = False
    higher_is_better = True

    def __init__(self, target_index: int, **kwargs):
        super().__init__(**kwargs)
        self.target_index = target_index
        self.add_state("hits", default=torch.tensor(0), dist_reduce_fx="sum")
        self.add_state("total", default=torch.tensor(0), dist_reduce_fx="sum")

    def update(self, logits: torch.Tensor, labels: torch.Tensor) -> None:
        keep = labels != self.target_index
        predicted = logits[keep].argmax(dim=-1)
        self.hits += (predicted == self.target_index).sum()
        self.total += keep.sum()

    def compute(self) -> torch.Tensor:
        return self.hits.float() / self.total.clamp(min=1)
