"""Poisoned-sample detectors on embeddings: local-density outlier scores (Huang et al., ICLR 2025,
"Detecting Backdoor Samples in Contrastive Language Image Pretraining").

Their finding: under a backdoored CLIP, the image embeddings of poisoned samples are *sparse* in their
local neighbourhood, so a density-based outlier score ranks them first. Every score here is higher
for a more suspicious sample, and is computed against a reference set (Huang et al. use the batch,
gathered over ranks; `reference_sample` draws one from the whole set, so the cost is N × R, not N²):

- `kdist`: the distance to the k-th nearest reference neighbour (the sample itself excluded);
- `slof`: simplified LOF, the mean over the k nearest neighbours n of kdist(x) / kdist(n);
- `dao`: dimensionality-aware outlier score, the mean over the k nearest neighbours n of
  LID(n) · log(kdist(x) / kdist(n)), with LID the maximum-likelihood local intrinsic dimension.

and SafeCLIP's split (Yang et al., ICML 2024), on image–caption similarity instead of image embeddings:

- `gmm`: a two-component Gaussian mixture over every pair's cosine similarity; the score is the
  posterior of the lower-mean component (SafeCLIP trains with the CLIP loss only on pairs whose
  posterior of the higher one exceeds a threshold).

Choices of ours: Euclidean distance between *normalised* image embeddings (the geometry the model's
similarities use; Huang et al. use the raw features), image embeddings only (their default
modality), k counted from 1 without the sample itself. No decision reads the poison manifest: it
only scores the rankings (modules.detection.pair_scoring.detection_metrics).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

DETECTORS = ("kdist", "slof", "dao")


def _neighbours(queries: torch.Tensor, reference: torch.Tensor, k: int, self_index: torch.Tensor | None,
                chunk: int = 4096) -> tuple[torch.Tensor, torch.Tensor]:
    """(distances, indices) of each query's k nearest reference points, ascending; `self_index[i]` is
    query i's own row in `reference` (excluded), or -1 when it is not there."""
    distances, indices = [], []
    for start in range(0, len(queries), chunk):
        d = torch.cdist(queries[start:start + chunk], reference)
        if self_index is not None:
            own = self_index[start:start + chunk]
            rows = torch.nonzero(own >= 0).squeeze(1)
            d[rows, own[rows]] = float("inf")
        top = d.topk(k, dim=1, largest=False)
        distances.append(top.values)
        indices.append(top.indices)
    return torch.cat(distances), torch.cat(indices)


def local_density_scores(embeddings: torch.Tensor, k: int = 16, reference_rows: torch.Tensor | None = None
                         ) -> dict[str, torch.Tensor]:
    """kdist, SLOF and DAO of every row of `embeddings` (N, D), against the rows `reference_rows` of the
    same set (default: all of them, N²; `reference_rows(n, size)` draws a random sample)."""
    x = F.normalize(embeddings.float(), dim=-1)
    rows = torch.arange(len(x)) if reference_rows is None else reference_rows
    ref = x[rows]
    if len(ref) <= k:
        raise ValueError(f"the reference set has {len(ref)} samples: k = {k} needs more")
    # the reference points' own k-distances and LIDs (each against the reference, without itself)
    ref_d, _ = _neighbours(ref, ref, k, torch.arange(len(ref)))
    ref_kdist = ref_d[:, -1].clamp_min(1e-12)
    ref_lid = -k / torch.log(ref_d / ref_kdist[:, None] + 1e-4).sum(1)
    own = torch.full((len(x),), -1, dtype=torch.long)
    own[rows] = torch.arange(len(rows))  # a query that is in the reference is not its own neighbour
    d, idx = _neighbours(x, ref, k, own)
    kdist = d[:, -1]
    ratio = kdist[:, None] / ref_kdist[idx]
    return {"kdist": kdist, "slof": ratio.mean(1), "dao": (ref_lid[idx] * torch.log(ratio.clamp_min(1e-12))).mean(1)}


def reference_rows(n: int, size: int, seed: int = 0) -> torch.Tensor:
    """A random sample of `size` of the rows 0..n-1 (all of them when n ≤ size)."""
    if n <= size:
        return torch.arange(n)
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:size]


@dataclass
class Mixture:
    """A two-component 1-D Gaussian mixture fitted by EM: weights, means, variances (2,) and each
    point's posteriors (N, 2)."""

    weight: torch.Tensor
    mean: torch.Tensor
    var: torch.Tensor
    posterior: torch.Tensor

    def separation(self) -> float:
        """Ashman's D, |μ1 − μ2| / sqrt((σ1² + σ2²) / 2): above 2, the two components are cleanly apart."""
        return float((self.mean[0] - self.mean[1]).abs() / ((self.var.sum() / 2).sqrt()))


def two_component_mixture(values: torch.Tensor, init_quantiles: tuple[float, float] = (0.25, 0.75),
                          iterations: int = 100) -> Mixture:
    """EM for two 1-D Gaussians, the means started at two quantiles of `values` (N,). (A 1-D,
    two-component EM is a few lines; it does not warrant scikit-learn as a dependency.)"""
    x = values.double().flatten()
    if len(x) < 4:
        raise ValueError(f"a two-component mixture needs at least 4 values, got {len(x)}")
    mean = torch.quantile(x, torch.tensor(init_quantiles, dtype=x.dtype))
    var = x.var().expand(2).clone().clamp_min(1e-8)
    weight = torch.tensor([0.5, 0.5], dtype=x.dtype)

    def posterior() -> torch.Tensor:
        log_p = -0.5 * ((x[:, None] - mean) ** 2 / var + torch.log(2 * torch.pi * var)) + torch.log(weight)
        return torch.softmax(log_p, dim=1)

    for _ in range(iterations):
        resp = posterior()
        total = resp.sum(0).clamp_min(1e-12)
        weight = total / len(x)
        mean = (resp * x[:, None]).sum(0) / total
        var = ((resp * (x[:, None] - mean) ** 2).sum(0) / total).clamp_min(1e-8)
    return Mixture(weight, mean, var, posterior())


def gmm_risk(similarity: torch.Tensor, iterations: int = 100) -> torch.Tensor:
    """Posterior of the lower-mean component of a two-component mixture fitted to `similarity` (N,):
    SafeCLIP's risky-pair probability. Initialised at the lower and upper quartiles."""
    mixture = two_component_mixture(similarity, (0.25, 0.75), iterations)
    return mixture.posterior[:, int(mixture.mean.argmin())].float()
