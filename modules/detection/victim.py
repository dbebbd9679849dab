"""The oracle finder's judgements (`oracle_finder.py`): which image is a trigger candidate, which label is
the victim (by transplant or by collapse), and which samples are its victims."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from modules.detection.decree import mean_pairwise_similarity
from modules.detection.pair_scoring import SUSPICIOUS_PAIRS, save_suspicious_pairs

ORACLE_DIR = "oracle"


def region_canvas(pixels: torch.Tensor, region: torch.Tensor) -> torch.Tensor:
    """The region's pixels in place, everything else the image's mean colour."""
    mean = pixels.mean(dim=(1, 2), keepdim=True)
    return torch.where(region, pixels, mean.expand_as(pixels))


def judge_image(whole: int, region_labels: list[int], region_probs: list[float], region_areas: list[float],
                small_fraction: float) -> tuple[bool, float, int]:
    """(candidate?, score, index of the trigger region) for one image: ŷ = `whole` is a trigger
    candidate when some region of at most `small_fraction` of the image is labelled ŷ and no larger
    region is; the score is the best such region's probability of ŷ."""
    grounding = [i for i, label in enumerate(region_labels) if label == whole]
    if not grounding or any(region_areas[i] > small_fraction for i in grounding):
        return False, 0.0, -1
    best = max(grounding, key=lambda i: region_probs[i])
    return True, region_probs[best], best


def victim_label(candidates: dict[str, int]) -> tuple[int, float]:
    """The label with the most candidate images, and its share of all candidates."""
    counts: dict[int, int] = {}
    for label in candidates.values():
        counts[label] = counts.get(label, 0) + 1
    if not counts:
        return -1, 0.0
    label = max(sorted(counts), key=lambda c: counts[c])
    return label, counts[label] / sum(counts.values())


def transplant_rate(region: torch.Tensor, pixels: torch.Tensor, images: torch.Tensor, before: torch.Tensor,
                    label: int, classify) -> float:
    """The share of `images` (N, 3, H, W; pixels in [0, 1]) not labelled `label` (`before`: their labels)
    that `classify` labels `label` once the region's pixels are pasted onto them in place; 0 when every
    image already is."""
    others = before != label
    if not others.any():
        return 0.0
    stamped = torch.where(region, pixels, images[others])
    return float((classify(stamped) == label).float().mean())


def transplant_collapse(region: torch.Tensor, pixels: torch.Tensor, images: torch.Tensor, before: torch.Tensor,
                        label: int, embed) -> float:
    """The mean pairwise cosine similarity of the embeddings (`embed`: pixels → normalised embeddings) of
    `images` not labelled `label`, once the region's pixels are pasted onto them in place; 0 when fewer
    than two are left."""
    others = before != label
    if int(others.sum()) < 2:
        return 0.0
    return float(mean_pairwise_similarity(embed(torch.where(region, pixels, images[others]))))


def best_regions(candidates: dict[str, int], scores: dict[str, float], rate_of, top: int) -> dict[int, tuple[float, str]]:
    """Per label, (its best transplant rate, that region's key): its `top` best-scored candidates are
    transplanted (`rate_of(key, label)`), the first best-scored among equal rates wins."""
    by_label: dict[int, list[str]] = {}
    for key, label in candidates.items():
        by_label.setdefault(label, []).append(key)
    best: dict[int, tuple[float, str]] = {}
    for label, keys in by_label.items():
        tried = sorted(keys, key=lambda k: (-scores[k], k))[:top]
        rates = {key: rate_of(key, label) for key in tried}
        key = max(tried, key=rates.__getitem__)
        best[label] = (rates[key], key)
    return best


def victim_by_transplant(candidates: dict[str, int], best: dict[int, tuple[float, str]]) -> tuple[int, str | None]:
    """(victim label, the key whose region is the trigger): the label whose best region (`best_regions`)
    turns the most images, ties broken by the number of candidates, then by the label."""
    if not best:
        return -1, None
    counts = {label: sum(c == label for c in candidates.values()) for label in best}
    victim = max(sorted(best), key=lambda c: (best[c][0], counts[c]))
    return victim, best[victim][1]


def victim_by_collapse(best: dict[int, tuple[float, str]], collapse_of) -> tuple[int, str | None, dict[int, float]]:
    """(victim label, the key whose region is the trigger, collapse per label): the label whose best
    transplant region (`best_regions`) collapses the stamped images most (`collapse_of(key, label)`), ties
    broken by the label."""
    collapse = {label: collapse_of(key, label) for label, (_, key) in best.items()}
    if not collapse:
        return -1, None, {}
    victim = max(sorted(collapse), key=collapse.__getitem__)
    return victim, best[victim][1], collapse


def rank_victim_samples(scores: dict[str, float], rates: dict[str, float]) -> list[str]:
    """The victim samples (key → score), best first: by their region's transplant rate (`rates`; none
    measured: every rate 0), then by score, then by key."""
    return sorted(scores, key=lambda k: (-rates.get(k, 0.0), -scores[k], k))


def victim_set(ranked: list[str], rates: dict[str, float], min_rate: float, size: int) -> list[str]:
    """The first `size` of the ranked victim samples whose region turns at least `min_rate` of the images
    (every one when no rate was measured)."""
    return [key for key in ranked if not rates or rates[key] >= min_rate][:size]


def write_victim_set(out: Path, ranked: list[str], size: int, fetch) -> list[str]:
    """Write the first `size` of the ranked victim samples, read by `fetch(keys)` (key → (uint8 pixels,
    caption)), as UBT's suspicious pairs in `out`; returns their keys, best-ranked first."""
    keys = ranked[:size]
    pairs = fetch(keys) if keys else {}
    missing = [key for key in keys if key not in pairs]
    assert not missing, f"the data pass did not yield {len(missing)} of the victim samples it scored"
    images = torch.stack([pairs[k][0] for k in keys]) if keys else torch.empty((0, 3, 1, 1), dtype=torch.uint8)
    save_suspicious_pairs(out / SUSPICIOUS_PAIRS, keys, images, [pairs[k][1] for k in keys])
    (out / "suspicious.json").write_text(json.dumps({"score": "oracle", "m": len(keys), "keys": keys, "rule": None},
                                                    indent=1))
    return keys


def remainder_check(found: list[dict], pixels: torch.Tensor, whole: list[int], probs_of) -> None:
    """A candidate must lose its label ŷ when its small region is painted out; its score is then
    p_region(ŷ)·p_rest(label of the rest). `probs_of(images)` gives the model's class probabilities."""
    checked = [i for i, item in enumerate(found) if item["candidate"]]
    if not checked:
        return
    rests = torch.stack([region_canvas(pixels[i], ~found[i]["region"]) for i in checked])
    for i, rest_probs in zip(checked, probs_of(rests)):
        rest_label = int(rest_probs.argmax())
        if rest_label == whole[i]:
            found[i].update(candidate=False, score=0.0, region=None, pixels=None)
        else:
            found[i]["score"] *= float(rest_probs[rest_label])


def localisation_iou(keys: list[str], poisoned: set[str], regions: dict, data) -> float | None:
    """Mean IoU of the recovered regions with the pixels the attack's trigger changes (poisoned keys only)."""
    trigger = data.trigger
    if trigger is None:
        return None
    ious = []
    for key in keys:
        if key not in poisoned:
            continue
        region = regions[key][0]
        shape = (3, *region.shape)
        true = ((trigger.apply(torch.zeros(shape), key) != 0) | (trigger.apply(torch.ones(shape), key) != 1)).any(0)
        union = (region | true).sum().item()
        ious.append((region & true).sum().item() / union if union else 0.0)
    return sum(ious) / len(ious) if ious else None
