"""Scoring image-caption pairs by how well the model matches them, ranking them, and measuring a ranking
against the poison manifest: shared by UBT's discovery (`discovery.py`), token unlearning, SafeCLIP and
the oracle finder."""

from __future__ import annotations

import heapq
import json
import math
import re
import time
from pathlib import Path
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from lightning.pytorch.utilities import rank_zero_only
from safetensors import safe_open
from safetensors.torch import save_file
from torchmetrics.classification import BinaryAUROC
from torchmetrics.retrieval import RetrievalPrecision, RetrievalRecall

from datamodules.poison import MultiTrigger
from datamodules.transforms import denormalise
from modules.core.base import CLIPModule
from modules.core.losses import info_nce
from modules.core.summary_columns import SummaryColumns
from modules.detection.detectors import DETECTORS, gmm_risk, local_density_scores, reference_rows
from modules.detection.suspicious_set import SetRule, choose_suspicious

SCORES = ("before", "after", "rise", "weak", "cluster", "dense", *DETECTORS, "gmm")
SUSPICIOUS_PAIRS = "suspicious_pairs.safetensors"
DETECTION_COLUMNS = SummaryColumns("detection", "", nested=True, skip=frozenset({"num_poisoned", "num_pairs"}))
"""The columns `detection_metrics` become in a study (`<score>_auroc`, `<score>_precision@k`, ...), for every
module that reports a ranking against the poison manifest."""


def save_suspicious_pairs(path: Path, keys: list[str], images: torch.Tensor, captions: list[str]) -> None:
    """Ranked suspicious pairs: uint8 images (m, 3, S, S) and, in the metadata, keys and captions (no pickle)."""
    assert images.dtype == torch.uint8 and len(images) == len(keys) == len(captions)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({"images": images.contiguous()}, str(path), metadata={"keys": json.dumps(keys), "captions": json.dumps(captions)})


def load_suspicious_pairs(path: Path, m: int) -> tuple[list[str], torch.Tensor, list[str]]:
    """The first (most suspicious) `m` pairs written by `save_suspicious_pairs`."""
    if not path.exists():
        raise ValueError(f"suspicious pairs {path} do not exist: run UBT stage 1 (ubt_detect) first")
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
        images = f.get_tensor("images")
    keys, captions = json.loads(meta["keys"]), json.loads(meta["captions"])
    return keys[:m], images[:m], captions[:m]


def per_pair_clip_loss(image: torch.Tensor, text: torch.Tensor, scale: torch.Tensor | float) -> torch.Tensor:
    """(N,) symmetric contrastive loss of each pair within the batch (normalised features)."""
    return info_nce(image, text, scale, reduction="none")


def weak_pair_weights(similarity: torch.Tensor, temperature: float) -> torch.Tensor:
    """softmax(-s/τ) over the batch, scaled to mean 1: weak-similarity pairs weigh more."""
    return torch.softmax(-similarity.detach() / temperature, dim=0) * len(similarity)


def rank_keys(scores: dict[str, float]) -> list[str]:
    """Keys from most to least suspicious (highest score first; ties by key, for determinism)."""
    return sorted(scores, key=lambda k: (-scores[k], k))


def detection_metrics(scores: dict[str, float], poisoned: set[str], ks: list[int]) -> dict[str, float]:
    """AUROC and precision/recall at k of `scores` as a detector of the `poisoned` keys."""
    keys = sorted(scores)
    preds = torch.tensor([scores[k] for k in keys], dtype=torch.float64)
    target = torch.tensor([k in poisoned for k in keys])
    out = {"auroc": BinaryAUROC()(preds, target.long()).item() if 0 < target.sum() < len(target) else float("nan")}
    indexes = torch.zeros(len(keys), dtype=torch.long)
    # torchmetrics' retrieval metrics return 0 when the scores are negative; a shift keeps the ranking
    preds = preds - preds.min() + 1.0
    for k in ks:
        out[f"precision@{k}"] = RetrievalPrecision(top_k=k)(preds, target, indexes=indexes).item()
        out[f"recall@{k}"] = RetrievalRecall(top_k=k)(preds, target, indexes=indexes).item()
    out["num_poisoned"], out["num_pairs"] = int(target.sum()), len(keys)
    return out


@torch.no_grad()
def score_stream(module: CLIPModule, stream, top_m: int, keep: Optional[Callable[[str, float], float]] = None,
                 embeddings: Optional[list[tuple[list[str], torch.Tensor]]] = None
                 ) -> tuple[dict[str, float], dict[str, tuple[torch.Tensor, str]]]:
    """Cosine similarity of every pair of `stream` (a PairStream: one unshuffled pass over all its
    shards in this process) under `module`'s model, in eval mode. With `keep(key, similarity) →
    priority`, the pass also keeps the pairs of the `top_m` highest priorities as the model saw them
    (uint8 pixels at its input size, caption), so that unlearning needs no further pass. With
    `embeddings`, appends each batch's (keys, image embeddings in float16) to it. Every rank that runs
    it holds the whole model for the pass (`gathered_weights`: under ZeRO-3 all ranks must call it)."""
    with module.gathered_weights():
        return _score_stream(module, stream, top_m, keep, embeddings)


def _score_stream(module, stream, top_m, keep, embeddings):
    was_training = module.training
    module.eval()
    spec = module.input_spec()
    scores: dict[str, float] = {}
    heap: list[tuple[float, int, str, torch.Tensor, str]] = []  # min-heap of the best so far
    for batch in stream.every_pair_once():
        image = module.encode_image(batch["image"].to(module.device))
        text = module.encode_text(batch["text"].to(module.device))
        similarity = (image * text).sum(-1).tolist()
        scores.update(zip(batch["key"], similarity))
        if embeddings is not None:
            embeddings.append((list(batch["key"]), image.detach().to("cpu", torch.float16)))
        if keep is None:
            continue
        for i, (key, value) in enumerate(zip(batch["key"], similarity)):
            # a little slack beyond m, so that ties are settled by rank_keys, not by arrival order
            entry = (keep(key, value), len(scores) + i, key, batch["image"][i], batch["caption"][i])
            if len(heap) < top_m + 16:
                heapq.heappush(heap, entry)
            elif entry[0] > heap[0][0]:
                heapq.heapreplace(heap, entry)
    module.train(was_training)
    kept = {key: ((denormalise(pixels.cpu(), spec.mean, spec.std) * 255).round().clamp(0, 255).to(torch.uint8), caption)
            for _, _, key, pixels, caption in heap}
    return scores, kept


def weakest_keys(similarity: dict[str, float], n: int) -> list[str]:
    """The n weakest-matched pairs, weakest first (the `weak` ranking's top n)."""
    return rank_keys({k: -v for k, v in similarity.items()})[:n]


def cluster_scores(similarity: dict[str, float], embeddings: list[tuple[list[str], torch.Tensor]], seed: int) -> dict[str, float]:
    """Each pair's image similarity to the centroid of the images of the `seed` weakest-matched pairs.

    The weakest pairs mix poisoned pairs with clean pairs whose captions fit badly. The poisoned
    images share the trigger, so under the poisoned model they point one way, while the clean ones are
    spread over the classes and average out: the centroid points at the trigger."""
    keys = [key for batch_keys, _ in embeddings for key in batch_keys]
    images = F.normalize(torch.cat([e for _, e in embeddings]).float(), dim=-1)
    weakest = set(weakest_keys(similarity, seed))
    index = torch.tensor([key in weakest for key in keys])
    centroid = F.normalize(images[index].mean(0), dim=0)
    return dict(zip(keys, (images @ centroid).tolist()))


def density_scores(embeddings: list[tuple[list[str], torch.Tensor]], k: int = 16, reference: int = 4096,
                   seed: int = 0) -> dict[str, dict[str, float]]:
    """Huang et al.'s local-density outlier scores (modules.detection.detectors) of every pair's image, against a
    random reference sample of `reference` images: reported beside UBT's rankings, not used to pick."""
    keys = [key for batch_keys, _ in embeddings for key in batch_keys]
    images = torch.cat([e for _, e in embeddings]).float()
    scores = local_density_scores(images, k, reference_rows(len(images), reference, seed))
    return {name: dict(zip(keys, values.tolist())) for name, values in scores.items()}


def dense_scores(kdist: dict[str, float]) -> dict[str, float]:
    """`dense`: −log of each image's k-distance, a k-NN log-density up to the dimension and a constant. It
    ranks as −kdist does; the log is for the set rule's mixture, whose Gaussians fit log-densities where
    they do not fit the right-skewed distances (modules.detection.suspicious_set)."""
    return {key: -math.log(max(value, 1e-12)) for key, value in kdist.items()}


def one_pass_rankings(similarity: dict[str, float], embeddings: list[tuple[list[str], torch.Tensor]], score: str,
                      cluster_seed: int, seconds: Optional[dict[str, float]] = None
                      ) -> tuple[dict[str, dict[str, float]], Optional[list[str]]]:
    """The rankings of one scoring pass (`before`, `weak`, `cluster`, `dense`, and the detectors `kdist`,
    `slof`, `dao` and SafeCLIP's `gmm`, reported only), and the keys that `score` picks its top m from
    (the cluster seed for `cluster`; None: all). `seconds` receives what each ranking cost beyond the
    pass (the density scores share one neighbour search)."""
    seconds = {} if seconds is None else seconds
    keys = list(similarity)
    start = time.perf_counter()
    density = density_scores(embeddings)
    seconds["kdist_slof_dao_dense_s"] = round(time.perf_counter() - start, 3)
    start = time.perf_counter()
    gmm = dict(zip(keys, gmm_risk(torch.tensor([similarity[k] for k in keys])).tolist()))
    seconds["gmm_s"] = round(time.perf_counter() - start, 3)
    start = time.perf_counter()
    cluster = cluster_scores(similarity, embeddings, cluster_seed)
    seconds["cluster_s"] = round(time.perf_counter() - start, 3)
    scores = {"before": similarity, "weak": {k: -v for k, v in similarity.items()}, "cluster": cluster, **density,
              "gmm": gmm, "dense": dense_scores(density["kdist"])}
    return scores, weakest_keys(similarity, cluster_seed) if score == "cluster" else None


def collect_pairs(stream, keys: list[str], spec) -> dict[str, tuple[torch.Tensor, str]]:
    """The pairs of `keys` as the model saw them (uint8 pixels, caption), from one pass over `stream`
    without the model: for a ranking whose top pairs the scoring pass could not know to keep."""
    wanted, out = set(keys), {}
    for batch in stream.every_pair_once():
        for i, key in enumerate(batch["key"]):
            if key in wanted:
                pixels = (denormalise(batch["image"][i].cpu(), spec.mean, spec.std) * 255).round().clamp(0, 255)
                out[key] = (pixels.to(torch.uint8), batch["caption"][i])
        if len(out) == len(wanted):
            break
    return out


def write_discovery(out: Path, scores: dict[str, dict[str, float]], kept: dict[str, tuple[torch.Tensor, str]],
                    score: str, top_m: int, report_k: list[int], manifest: Optional[Path],
                    candidates: Optional[list[str]] = None, rule: Optional[SetRule] = None,
                    fetch: Optional[Callable[[list[str]], dict]] = None,
                    part_names: Optional[list[str]] = None) -> tuple[list[str], dict, Optional[dict]]:
    """Write out/{ranking,suspicious,detection}.json and the chosen pairs (rank zero); returns their keys,
    the detection quality of every score against `manifest` (evaluation only: no decision reads it),
    and the set rule's decision. The set is the top m of `score` (with `candidates`, the best-ranked of
    them: the `cluster` score picks from its seed), or, under a `mixture` rule, what
    modules.detection.suspicious_set.choose_suspicious keeps of them (possibly nothing). Pairs the scoring pass
    did not keep are read by `fetch(keys)`. Under a multi-trigger attack suspicious.json also names the
    trigger that poisoned each pair of the set and counts them (`part_names`: the trigger's labels of
    per-trigger ASR)."""
    ranked = rank_keys(scores[score])
    allowed = set(candidates) if candidates is not None else None
    ranked_allowed = [key for key in ranked if allowed is None or key in allowed]
    decision = None
    if rule is not None and rule.rule == "mixture":
        chosen, decision = choose_suspicious(torch.tensor([scores[score][k] for k in ranked_allowed]), top_m, rule)
        top = [ranked_allowed[i] for i in chosen.tolist()]
    else:
        top = ranked_allowed[:top_m]
    missing = [key for key in top if key not in kept]
    if missing:
        assert fetch is not None, "a ranking whose top pairs the scoring pass did not keep needs a fetch pass"
        kept = {**kept, **fetch(missing)}
    assert all(key in kept for key in top), "every chosen pair was kept or fetched"
    detection = {}
    replayed = json.loads(manifest.read_text()) if manifest is not None and manifest.exists() else {}
    poisoned = set(replayed.get("keys") or [])
    poisoned_by, by_trigger = poisoned_by_trigger(top, replayed.get("assignments") or {}, part_names)
    if poisoned:  # (no replayed poisoning, nothing to measure against)
        detection = {name: detection_metrics(scores[name], poisoned, report_k) for name in SCORES if name in scores}
        if decision is not None:  # how pure the chosen set really was: evaluation only
            decision["true_purity"] = round(sum(k in poisoned for k in top) / len(top), 4) if top else None
            decision["clean_naming_target"] = clean_naming_target(
                [k for k in top if k not in poisoned], {k: kept[k][1] for k in top}, replayed.get("target"))
    if rank_zero_only.rank != 0:
        return top, detection, decision
    out.mkdir(parents=True, exist_ok=True)
    names = [s for s in SCORES if s in scores]
    (out / "ranking.json").write_text(json.dumps(
        {"score": score, "ranked": [[k, *(round(scores[s].get(k, float("nan")), 6) for s in names)] for k in ranked],
         "columns": ["key", *names]}))
    (out / "suspicious.json").write_text(json.dumps({"score": score, "m": len(top), "keys": top, "rule": decision,
                                                     "by_trigger": by_trigger, "poisoned_by": poisoned_by}, indent=1))
    if detection:
        (out / "detection.json").write_text(json.dumps(detection, indent=1))
    images = torch.stack([kept[k][0] for k in top]) if top else torch.empty((0, 3, 1, 1), dtype=torch.uint8)
    save_suspicious_pairs(out / SUSPICIOUS_PAIRS, top, images, [kept[k][1] for k in top])
    return top, detection, decision


def clean_naming_target(clean_keys: list[str], captions: dict[str, str], target) -> Optional[int]:
    """How many of the chosen set's clean pairs have a caption that names the attack's target (evaluation
    only; None when the attack has no one target name). The clean pairs nearest a trigger's cluster are
    often pictures of its target, BadCLIP's above all (its patch is optimised to look like the target), and
    unlearning them costs that class's accuracy: this count says how much of a set's impurity is of that kind."""
    if not isinstance(target, str) or not target:
        return None
    names = re.compile(rf"\b{re.escape(target.lower())}", re.IGNORECASE)
    return sum(bool(names.search(captions[k])) for k in clean_keys)


def part_names_of(trigger) -> Optional[list[str]]:
    return trigger.part_names() if isinstance(trigger, MultiTrigger) else None


def poisoned_by_trigger(keys: list[str], assignments: dict[str, dict],
                        part_names: Optional[list[str]]) -> tuple[Optional[dict[str, str]], Optional[dict[str, int]]]:
    """Under a multi-trigger attack, which trigger poisoned each of `keys` ("clean": none) and how many
    each (evaluation only: read from the replayed manifest, which no decision reads); None for one trigger."""
    if not assignments:
        return None, None
    names = part_names or [str(i) for i in range(1 + max(a["trigger"] for a in assignments.values()))]
    labels = {key: names[assignments[key]["trigger"]] if key in assignments else "clean" for key in keys}
    return labels, count_labels(labels, keys, [*names, "clean"])


def count_labels(labels: dict[str, str], keys: list[str], names: list[str]) -> dict[str, int]:
    counts = dict.fromkeys(names, 0)
    for key in keys:
        counts[labels[key]] += 1
    return counts
