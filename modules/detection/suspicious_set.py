"""Choosing UBT's unlearning set without eval labels, where the weakest-matched pairs are mostly clean.

On data with noisy captions the weakest pairs are mostly clean pairs whose captions fit badly (the
UBT-transfer issue measured 29% poisoned among the 1,000 weakest on held-out real images; on the hard
embedded tier none of the 200 weakest is poisoned), so `weak` and `cluster`, which is seeded by them,
pick clean pairs. What did find them on both embedded tiers is how tightly the poisoned images sit
together: the trigger collapses their embeddings, so each one's distance to its k-th nearest
neighbour (`kdist`, modules.detection.detectors) is the smallest of all (`dense` = −log kdist in
modules.detection.pair_scoring: a k-NN log-density up to its dimension and a constant).

`choose_suspicious` turns a ranking into a set without a fixed m: a two-component mixture over the
scores, m = the pairs whose posterior of the upper component is above one half (at most `m_max`),
and a guard that refuses to unlearn when there is no such component (Ashman's D below
`min_separation`), when the component is too large to be a trigger's (more than `max_share` of the
pairs: the mixture split a skewed bulk), when it holds fewer than `min_pairs`, or when the chosen set's
estimated purity (its mean posterior) is below `min_purity` (0.8: more than a fifth clean by the
mixture's own count). What the caller does instead is its business (TokenUnlearning: retain-only
training, recorded in its summary).

Why the mixture is fitted to the log-density and not to −kdist: k-distances are right-skewed, and a
component of 1% of the pairs sits in the bulk's tail on that scale. On the threats study's BadCLIP model
(seed 0, 188 poisoned pairs of 20K, `dense` AUROC 0.98, precision@100 1.0) the −kdist mixture's upper
component absorbed the tail (D 0.92) and the guard unlearned nothing; on the log scale D is 2.52. This
was changed after that run was seen; the 5%-rate models of every archived study choose the same 200
pairs on both scales (D 4.4–6.3 on the log scale), the clean controls stay below the bound (D 1.67 and
1.72, upper components of a fifth of the pairs), and BadCLIP's other seeds are the fair test.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from modules.detection.detectors import two_component_mixture


@dataclass
class SetRule:
    """How UBT's discovery turns its ranking into the unlearning set."""

    rule: Literal["top_m", "mixture"] = "top_m"
    """`top_m`: the m best-ranked pairs. `mixture`: `choose_suspicious` (m ≤ model.m, possibly none)."""
    min_pairs: int = 20
    """The guard: fewer pairs in the suspicious component than this, and nothing is unlearned."""
    min_separation: float = 2.0
    """The guard: the mixture's components closer than this (Ashman's D), and nothing is unlearned."""
    max_share: float = 0.15
    """The guard: an upper component holding more than this share of the pairs is a split of the clean bulk
    (on the clean controls, a fifth of it), not a trigger's cluster, and nothing is unlearned. 0.15 is three
    times the highest poisoning rate this toolkit studies (5%); raise it for heavier poisoning."""
    min_purity: float = 0.8
    """The guard: the chosen set's estimated purity (mean posterior) below this, and nothing is unlearned.
    (Every kept pair has a posterior above ½, so a bound of ½ could never fire.)"""


def choose_suspicious(scores: torch.Tensor, m_max: int, min_pairs: int = 20, min_separation: float = 2.0,
                      min_purity: float = 0.8, max_share: float = 0.15) -> tuple[torch.Tensor, dict]:
    """The indices of the pairs to unlearn (best first; empty when the guard fires) and the decision:
    the mixture's separation, the upper component's size, the chosen m and its estimated purity, and
    the reason the guard fired (None when it did not). The upper component starts at the 99th
    percentile, so that a cluster of a few percent of the pairs is found."""
    mixture = two_component_mixture(scores, (0.5, 0.99))
    upper = int(mixture.mean.argmax())
    posterior = mixture.posterior[:, upper].float()
    order = scores.argsort(descending=True)
    in_upper = int((posterior > 0.5).sum())
    m = min(in_upper, m_max)
    chosen = order[:m]
    purity = float(posterior[chosen].mean()) if m else 0.0
    separation = mixture.separation()
    reason = None
    share = in_upper / len(scores)
    if separation < min_separation:
        reason = f"no separate suspicious component (Ashman's D {separation:.2f} < {min_separation})"
    elif share > max_share:
        reason = f"the suspicious component holds {share:.0%} of the pairs (> {max_share:.0%}): a split of the bulk"
    elif m < min_pairs:
        reason = f"the suspicious component holds {m} pairs (< {min_pairs})"
    elif purity < min_purity:
        reason = f"the chosen set's estimated purity {purity:.2f} < {min_purity}"
    decision = {"separation": round(separation, 4), "upper_component_pairs": in_upper, "upper_share": round(share, 4), "m": 0 if reason else m,
                "estimated_purity": round(purity, 4), "guard": reason}
    return (order[:0] if reason else chosen), decision
