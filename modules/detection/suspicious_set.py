"""Choosing UBT's unlearning set without eval labels, where the weakest-matched pairs are mostly clean.

On data with noisy captions the weakest pairs are mostly clean pairs whose captions fit badly (the
UBT-transfer issue measured 29% poisoned among the 1,000 weakest on held-out real images; on the hard
embedded tier none of the 200 weakest is poisoned), so `weak` and `cluster`, which is seeded by them,
pick clean pairs. What did find them on both embedded tiers is how tightly the poisoned images sit
together: the trigger collapses their embeddings, so each one's distance to its k-th nearest
neighbour (`kdist`, modules.detection.detectors) is the smallest of all (`dense` = −log kdist in
modules.detection.pair_scoring: a k-NN log-density up to its dimension and a constant).

`choose_suspicious` turns a ranking into a set without a fixed m: a two-component mixture over the
scores, whose upper component is the pairs with a posterior above one half; m = those with a posterior of
at least `min_posterior` (0.9; at most `m_max`). A guard refuses to unlearn when there is no such
component (Ashman's D below `min_separation`, or below `small_separation` for a component of at most
`small_share` of the pairs), when it is too large to be a trigger's (more than
`max_share` of the pairs: the mixture split a skewed bulk), when its estimated purity (the mean posterior
of its best `m_max`) is below `min_purity`, or when fewer than `min_pairs` reach `min_posterior`. What
the caller does instead is its business (TokenUnlearning: retain-only training, recorded in its summary).

Three changes made after the threats study's BadCLIP model (seed 0: 188 poisoned pairs of 20K, 1%; `dense`
AUROC 0.98, precision@100 1.00) was seen; BadCLIP's seeds 2–4 and the clean controls' `ubt_clean` runs
are their test:
- The mixture is fitted to the log-density, not to −kdist. K-distances are right-skewed, and on that
  scale the upper component took the bulk's tail with the 188 pairs (D 0.92): the guard fired and UBT's
  row was a clean fine-tune (ASR 0.72). On the log scale D is 2.52. Every 5%-rate ranking still on disk
  (the tier, ViT and threats studies) chooses the same 200 pairs either way (D 4.4–6.3 on the log scale);
  the clean controls of seeds 0 and 1 stay below D 2 (1.67, 1.72), with upper components of 12% and 18%
  of the pairs.
- Only pairs of posterior 0.9 or more are unlearned. With the half-posterior component (179 pairs, 85%
  poisoned: the other 27 were clean pictures of the target, a triangle) the unlearning took ASR to 0.000
  and CA from 0.989 to 0.922; seed 1's −kdist set, 171 pairs at 99.4%, had cost no CA. At 0.9 the set is
  144 pairs, 97.9% poisoned (seed 1: 187 at 98.3%); the 5%-rate sets are unchanged (877 or more pairs
  reach 0.9).
- A component of at most 5% of the pairs needs D 1.5, not 2. BadCLIP's seed 3 failed the two changes
  above (D 1.93, precision@100 1.00, ASR left at 0.884) while the clean controls' D was 1.67–1.79 with
  components of 12–18% of the pairs. This rule was written down before seed 4 ran (predicted: BadCLIP
  chosen, clean refused) and held on it: BadCLIP D 1.83 with 0.9% of the pairs (119 pairs of posterior
  0.9, 88% poisoned), clean D 1.46 with 10%. Of the archived decisions it changes BadCLIP's seeds 3
  and 4 alone; two older ones made on the −kdist scale (D 1.17 and 1.24, the objectives study's hard
  mmcl_ssl and the defense study's 0.5% BadNet) could come out otherwise if run again.
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
    small_share: float = 0.05
    """An upper component of at most this share of the pairs (a trigger's cluster at a poisoning rate of a
    few percent or less) needs only `small_separation`: at 1% its D fell to 1.8–1.9 on two BadCLIP seeds
    of five, while the clean controls' components, below D 2 too, held 10–18% of the pairs."""
    small_separation: float = 1.5
    """The guard's separation for a component of at most `small_share` of the pairs."""
    max_share: float = 0.33
    """The guard: an upper component holding more than this share of the pairs is the mixture splitting the
    clean bulk (a synthetic skewed bulk: 45%), not a trigger's cluster, and nothing is unlearned. A third is
    above the poisoning rates of the field's papers (at most a few percent) and the heaviest here (30%, a
    test's strongly poisoned model, whose component is 26%); raise it for heavier poisoning."""
    min_purity: float = 0.8
    """The guard: the upper component's estimated purity (the mean posterior of its best m pairs) below
    this, and nothing is unlearned."""
    min_posterior: float = 0.9
    """Of the upper component, only the pairs whose posterior reaches this are unlearned: a poisoned pair
    left out costs little (the unlearning carries over to the trigger, which the held-out signal measures),
    a clean one unlearned costs its class, and the clean pairs nearest a trigger's cluster are of the
    target's class (BadCLIP)."""


def choose_suspicious(scores: torch.Tensor, m_max: int, rule: SetRule | None = None) -> tuple[torch.Tensor, dict]:
    """The indices of the pairs to unlearn (best first; empty when the guard fires) and the decision:
    the mixture's separation, the upper component's size and share, its estimated purity, the chosen m
    (the pairs with a posterior of at least `rule.min_posterior`, at most `m_max`), and the reason the guard
    fired (None when it did not). `rule`: the guard's bounds (SetRule's defaults when None). The upper
    component starts at the 99th percentile, so that a cluster of a few percent of the pairs is found."""
    rule = SetRule(rule="mixture") if rule is None else rule
    mixture = two_component_mixture(scores, (0.5, 0.99))
    upper = int(mixture.mean.argmax())
    posterior = mixture.posterior[:, upper].float()
    order = scores.argsort(descending=True)
    in_upper = int((posterior > 0.5).sum())
    share = in_upper / len(scores)
    best = order[:min(in_upper, m_max)]
    purity = float(posterior[best].mean()) if len(best) else 0.0
    m = min(int((posterior >= rule.min_posterior).sum()), m_max)
    chosen = order[:m]
    separation = mixture.separation()
    reason = None
    needed = rule.small_separation if share <= rule.small_share else rule.min_separation
    if separation < needed:
        reason = f"no separate suspicious component (Ashman's D {separation:.2f} < {needed} for {share:.1%} of the pairs)"
    elif share > rule.max_share:
        reason = f"the suspicious component holds {share:.0%} of the pairs (> {rule.max_share:.0%}): a split of the bulk"
    elif purity < rule.min_purity:
        reason = f"the suspicious component's estimated purity {purity:.2f} < {rule.min_purity}"
    elif m < rule.min_pairs:
        reason = f"the suspicious component holds {m} pairs of posterior {rule.min_posterior} or more (< {rule.min_pairs})"
    decision = {"separation": round(separation, 4), "upper_component_pairs": in_upper, "upper_share": round(share, 4),
                "m": 0 if reason else m, "estimated_purity": round(purity, 4), "guard": reason}
    return (order[:0] if reason else chosen), decision
