"""Find the backdoor's victim label, its victim samples and its trigger from a poisoned model, with a
segmentation oracle supervising the model (after Hossain et al., arXiv 2511.13545; no public code).

    python main.py fit --config configs/embedded/oracle_finder.yaml     # writes RUN/oracle/

One pass over the defender's images (the model's training data with its poisoning replayed, as UBT's
discovery reads it; `max_pairs` of them). For each image the model under audit predicts a label ŷ for
the whole image; the oracle (`modules.detection.segmentation`) splits the image into regions; the model labels each
region on its own. A label the whole image gets that no large region grounds, only a small one
(`small_fraction` of the image at most), points at a trigger: the image is a candidate for ŷ with
score p_region(ŷ), the small region its trigger candidate. Over all images, the victim label is named
by `victim_rule` (below); the victim samples are the candidates for it, ranked by how many of the
defender's images their own region turns into the victim label when pasted on them (then by score);
the recovered trigger is the victim label's best region, with its image's pixels, as a
`datamodules.MaskedPattern` in `RUN/oracle/trigger/` (pasted at the same place), which
`modules.TriggerRepair` stamps for the repair. The victim samples whose region turns at least
`victim_min_rate` of those images (at most `victim_set_size`, best first), as the model saw them, are
written in UBT's format (`RUN/oracle/suspicious_pairs.safetensors`, `suspicious.json`), so
`modules.UBTUnlearn` can unlearn them (`suspicious_dir: RUN/oracle`): the other repair, by the victim
samples rather than the trigger.

The choices made where the paper's summary leaves a point open (how a region is shown to the model, what
"grounds" means, the victim rules `transplant`, `count` and `collapse`, the ranking of the victim samples,
the remainder check) and what each was measured against: docs/oracle_finder.md.

Evaluation only (no decision reads them): AUROC and precision/recall@k of the ranking against the
poison manifest, whether the victim label equals the attack's target, and the IoU of the recovered
regions with the true trigger region (where the attack's trigger changes pixels), for the top-k victim
samples that are truly poisoned.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Literal

import torch
from lightning.pytorch.utilities import rank_zero_only

from datamodules.poison import MaskedPattern
from datamodules.transforms import denormalise, normalise_pixels
from modules.core.base import CLIPModule, OptimizerConfig
from modules.core.model_loading import ModelConfig
from modules.core.summary_columns import SummaryColumns
from modules.detection.pair_scoring import DETECTION_COLUMNS, collect_pairs, detection_metrics
from modules.detection.segmentation import Felzenszwalb, SegmentationOracle
from modules.detection.victim import (
    ORACLE_DIR,
    best_regions,
    judge_image,
    localisation_iou,
    rank_victim_samples,
    region_canvas,
    remainder_check,
    transplant_collapse,
    transplant_rate,
    victim_by_collapse,
    victim_by_transplant,
    victim_label,
    victim_set,
    write_victim_set,
)


class OracleTriggerFinder(CLIPModule):
    """One scoring pass: victim label, victim samples and trigger region; writes RUN/oracle/."""

    changes_weights = False
    summary_columns = CLIPModule.summary_columns + (
        DETECTION_COLUMNS,
        SummaryColumns("oracle", "oracle_", bools_as_numbers=True, counts=frozenset({
            "oracle_pairs_examined", "oracle_candidates", "oracle_victim_set"}), headings={
            "oracle_victim_label": "victim label found", "oracle_victim_label_correct": "found the target",
            "oracle_confidence": "its share of candidates", "oracle_mean_iou": "IoU with the trigger",
            "oracle_transplant_rate": "its region turns", "oracle_transplant_runner_up": "best other label's region turns",
            "oracle_collapse": "its region's collapse", "oracle_collapse_runner_up": "best other label's collapse",
            "oracle_pairs_examined": "images examined", "oracle_candidates": "candidate images",
            "oracle_victim_set": "victim samples handed over",
            "oracle_victim_set_share_poisoned": "their share poisoned"}),
    )

    def __init__(self, model: ModelConfig = ModelConfig(), optimizer: OptimizerConfig = OptimizerConfig(),
                 oracle: SegmentationOracle = Felzenszwalb(), small_fraction: float = 0.15, max_pairs: int = 4000,
                 max_regions: int = 12, remainder_check: bool = True,
                 victim_rule: Literal["collapse", "transplant", "count"] = "collapse", verify_top: int = 32,
                 verify_images: int = 64, victim_set_size: int = 200, victim_min_rate: float = 0.5,
                 report_k: list[int] = [50, 100, 200]):
        """
        Args:
            model: The model under audit (not trained).
            optimizer: Unused (no training step); kept so the module shares the base signature.
            oracle: The segmentation oracle.
            small_fraction: Largest region, as a fraction of the image, that can be a trigger.
            max_pairs: Images of the defender's data to examine.
            max_regions: Regions per image shown to the model, largest first.
            remainder_check: Also require the image without the small region to be labelled otherwise,
                and weight the score by that label's probability (False: the area rule alone).
            victim_rule: "collapse": the label whose best candidate region (by the transplant test), pasted
                onto other images, collapses their embeddings the most; "transplant": the label whose
                candidate region turns the most of them into it; "count": the label with the most candidates.
            verify_top: Candidates per label whose regions the transplant test tries (best-scored first).
            verify_images: Images the regions are pasted onto (the first ones examined).
            victim_set_size: Victim samples (best-ranked first) written for unlearning; 0 writes none.
            victim_min_rate: Only victim samples whose region turns at least this share of the verify
                images are written for unlearning (rules that measure transplants).
            report_k: k of precision/recall@k against the manifest (evaluation only).
        """
        super().__init__(model, optimizer)
        if not 0.0 < small_fraction < 1.0 or min(max_pairs, max_regions, verify_top, verify_images) < 1:
            raise ValueError(f"model.small_fraction must be in (0, 1), max_pairs, max_regions, verify_top and "
                             f"verify_images ≥ 1; got {small_fraction}, {max_pairs}, {max_regions}, {verify_top}, "
                             f"{verify_images}")
        if victim_set_size < 0 or not 0.0 <= victim_min_rate <= 1.0:
            raise ValueError(f"model.victim_set_size must be ≥ 0 and model.victim_min_rate in [0, 1], got "
                             f"{victim_set_size} and {victim_min_rate}")
        if victim_rule not in ("collapse", "transplant", "count"):
            raise ValueError(f"model.victim_rule must be 'collapse', 'transplant' or 'count', got {victim_rule!r}")
        self.oracle = oracle
        self.small_fraction = small_fraction
        self.max_pairs = max_pairs
        self.max_regions = max_regions
        self.remainder_check = remainder_check
        self.victim_rule = victim_rule
        self.verify_top = verify_top
        self.verify_images = verify_images
        self.victim_set_size = victim_set_size
        self.victim_min_rate = victim_min_rate
        self.report_k = list(report_k)
        self.result: dict = {}

    @torch.no_grad()
    def _embed(self, pixels: torch.Tensor, chunk: int = 1024) -> torch.Tensor:
        """Normalised image embeddings of images given as pixels in [0, 1] (N ≥ 1), in chunks, on the module's device."""
        spec = self.input_spec()
        return torch.cat([self.encode_image(normalise_pixels(part, spec.mean, spec.std).to(self.device))
                          for part in pixels.split(chunk)])

    def _probs(self, pixels: torch.Tensor, classifier: torch.Tensor) -> torch.Tensor:
        """Zero-shot class probabilities of images given as pixels in [0, 1]."""
        if not len(pixels):
            return torch.empty(0, classifier.shape[1])
        return (100.0 * (self._embed(pixels) @ classifier)).softmax(1).cpu()

    @torch.no_grad()
    def examine(self, images: torch.Tensor, classifier: torch.Tensor) -> list[dict]:
        """Per normalised image: ŷ, and the candidate decision with its region (a mask) and pixels. Every
        region of every image goes through the model in one batch, then every remainder check in another."""
        spec = self.input_spec()
        pixels = denormalise(images, spec.mean, spec.std).clamp(0, 1).cpu()
        whole = (self.encode_image(images) @ classifier).argmax(1).tolist()
        regions = [sorted(self.oracle.segments(image), key=lambda m: -int(m.sum()))[: self.max_regions] for image in pixels]
        canvases = [region_canvas(image, r) for image, rs in zip(pixels, regions) for r in rs]
        probs = self._probs(torch.stack(canvases), classifier) if canvases else None
        out, start = [], 0
        for i, image in enumerate(pixels):
            if not regions[i]:
                out.append({"whole": whole[i], "candidate": False, "score": 0.0})
                continue
            mine = probs[start:start + len(regions[i])]
            start += len(regions[i])
            areas = [float(r.float().mean()) for r in regions[i]]
            candidate, score, index = judge_image(whole[i], mine.argmax(1).tolist(), mine[:, whole[i]].tolist(), areas,
                                                  self.small_fraction)
            out.append({"whole": whole[i], "candidate": candidate, "score": score,
                        "region": regions[i][index] if candidate else None, "pixels": image if candidate else None})
        if self.remainder_check:
            remainder_check(out, pixels, whole, lambda rests: self._probs(rests, classifier))
        return out

    def on_train_start(self) -> None:
        if self.trainer.world_size != 1:
            raise ValueError(f"the oracle finder runs on one device (one pass over the defender's data), but "
                             f"trainer.devices × num_nodes gives {self.trainer.world_size} ranks under "
                             f"{type(self.trainer.strategy).__name__}: set trainer.devices 1 and trainer.num_nodes 1 "
                             "(any strategy, ZeRO included)")
        super().on_train_start()
        with self.gathered_weights():
            self._find()

    def _find(self) -> None:
        data = self.trainer.datamodule
        eval_set = data.eval_set
        classifier = self.class_embeddings(eval_set.classnames, eval_set.templates)
        was_training = self.model.training
        self.model.eval()
        candidates: dict[str, int] = {}
        scores: dict[str, tuple[int, float]] = {}
        regions: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        pool: list[torch.Tensor] = []
        spec = self.input_spec()
        seen = 0
        for batch in data.scoring_stream().every_pair_once():
            if len(pool) < self.verify_images:
                pool.extend(denormalise(batch["image"][: self.verify_images - len(pool)], spec.mean, spec.std).clamp(0, 1))
            for key, found in zip(batch["key"], self.examine(batch["image"].to(self.device), classifier)):
                scores[key] = (found["whole"], found["score"])
                if found["candidate"]:
                    candidates[key] = found["whole"]
                    regions[key] = (found["region"], found["pixels"])
            seen += len(batch["key"])
            if seen >= self.max_pairs:
                break
        victim, trigger_key, measures, rates = self.decide(candidates, {k: scores[k][1] for k in candidates}, regions,
                                                           torch.stack(pool), classifier)
        self.model.train(was_training)
        self._finish(victim, trigger_key, measures, rates, candidates, scores, regions, eval_set.classnames, data)
        self.trainer.should_stop = True  # the fit loop ends before its first batch

    def decide(self, candidates: dict[str, int], scores: dict[str, float], regions: dict, images: torch.Tensor,
               classifier: torch.Tensor) -> tuple[int, str | None, dict[str, dict[int, float]], dict[str, float]]:
        """The victim label by `victim_rule`, the key whose region is the recovered trigger (None: the top
        victim sample's), each measure the rule weighed (transplant rate, collapse) per label, of the
        label's best region, and each victim sample's own transplant rate (none for the count rule)."""
        if self.victim_rule == "count":
            return victim_label(candidates)[0], None, {}, {}

        def classify(pixels: torch.Tensor) -> torch.Tensor:
            return self._probs(pixels, classifier).argmax(1)

        before = classify(images)

        @functools.cache  # the victim label's best-scored candidates are tried twice: for its region, then ranked
        def rate_of(key: str, label: int) -> float:
            return transplant_rate(regions[key][0], regions[key][1], images, before, label, classify)

        best = best_regions(candidates, scores, rate_of, self.verify_top)
        measures = {"transplant": {label: rate for label, (rate, _) in best.items()}}
        if self.victim_rule == "transplant":
            victim, trigger_key = victim_by_transplant(candidates, best)
        else:
            def collapse_of(key: str, label: int) -> float:
                return transplant_collapse(regions[key][0], regions[key][1], images, before, label, self._embed)

            victim, trigger_key, measures["collapse"] = victim_by_collapse(best, collapse_of)
        rates = {key: rate_of(key, victim) for key, label in candidates.items() if label == victim}
        return victim, trigger_key, measures, rates

    def _finish(self, victim, trigger_key, measures, rates, candidates, scores, regions, classnames, data) -> None:
        confidence = sum(label == victim for label in candidates.values()) / len(candidates) if candidates else 0.0
        ranked = rank_victim_samples({k: scores[k][1] for k, label in candidates.items() if label == victim}, rates)
        ranking = dict.fromkeys(scores, 0.0) | {key: float(len(ranked) - i) for i, key in enumerate(ranked)}
        self.result = {"victim_label": classnames[victim] if victim >= 0 else None, "confidence": confidence,
                       "candidates": len(candidates), "victim_samples": len(ranked), "pairs_examined": len(scores),
                       "victim_rule": self.victim_rule}
        if rates:
            self.result["victim_samples_turning"] = sum(rate >= self.victim_min_rate for rate in rates.values())
        for measure, by_label in measures.items():
            if victim in by_label:  # e.g. transplant_rate, transplant_runner_up, transplant_by_label
                self.result["transplant_rate" if measure == "transplant" else measure] = by_label[victim]
                self.result[f"{measure}_runner_up"] = max((v for c, v in by_label.items() if c != victim), default=0.0)
                self.result[f"{measure}_by_label"] = {classnames[c]: round(v, 4) for c, v in sorted(by_label.items())}
        manifest = Path(data.manifest_path)
        if manifest.exists():
            spec = json.loads(manifest.read_text())
            poisoned = set(spec["keys"])
            if poisoned:
                self.result["victim_label_correct"] = self.result["victim_label"] == spec["target"]
                self.result["detection"] = detection_metrics(ranking, poisoned, self.report_k)
                self.result["mean_iou"] = localisation_iou(ranked[: max(self.report_k)], poisoned, regions, data)
        out = Path(self.trainer.default_root_dir) / ORACLE_DIR
        if self.victim_set_size and self.trainer.is_global_zero:
            spec = self.input_spec()
            handed = write_victim_set(out, victim_set(ranked, rates, self.victim_min_rate, self.victim_set_size),
                                      self.victim_set_size, lambda keys: collect_pairs(data.scoring_stream(), keys, spec))
            self.result["victim_set"] = len(handed)
            if "detection" in self.result and handed:  # evaluation only: how pure the handed-over set is
                self.result["victim_set_share_poisoned"] = sum(k in poisoned for k in handed) / len(handed)
        if ranked:
            region, pixels = regions[trigger_key if trigger_key is not None else ranked[0]]
            trigger = MaskedPattern.from_tensors(region[None].float(), pixels)
            self._write(out, trigger, ranked, rates)
        else:
            self._write(out, None, ranked, rates)

    @rank_zero_only
    def _write(self, out: Path, trigger: MaskedPattern | None, ranked: list[str], rates: dict[str, float]) -> None:
        out.mkdir(parents=True, exist_ok=True)
        if trigger is not None:
            trigger.save(out / "trigger", self.input_spec().image_size)
        finding = {**self.result, "ranked": ranked, "transplant_rate_of": {key: rates[key] for key in ranked if key in rates}}
        (out / "finding.json").write_text(json.dumps(finding, indent=1))

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        raise AssertionError("the oracle finder stops before its first batch")

    def summary_extras(self) -> dict:
        return {"oracle": {k: v for k, v in self.result.items() if k != "detection"},
                "detection": {"oracle": self.result["detection"]} if "detection" in self.result else {}}
