"""The test-time detectors of triggered inputs (modules/detection/input_scores.py, input_detection.py) on
hand-made encoders and embeddings: each separates planted triggered images from clean ones and is near
chance between two clean sets; the masking views and orders; the rates against a hand computation."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from modules.detection.input_detection import ContrastDetector, MaskingDetector, class_descriptions
from modules.detection.input_scores import (
    contrast_scores,
    detection_rates,
    masked_views,
    masking_orders,
    masking_scores,
)


def _auroc(clean: torch.Tensor, triggered: torch.Tensor) -> float:
    """Brute force: P(triggered > clean) + ½ P(tie)."""
    greater = (triggered[:, None] > clean[None, :]).double().mean()
    ties = (triggered[:, None] == clean[None, :]).double().mean()
    return float(greater + 0.5 * ties)


# --- a hand-made encoder with a backdoor: a bright top-left 2x2 block sends any image to one point ---

def _encode(images: torch.Tensor) -> torch.Tensor:
    content = F.avg_pool2d(images, 4).flatten(1)                       # (N, 12): quadrant means per channel
    features = torch.cat([content, torch.full((len(images), 1), 0.3), torch.zeros(len(images), 1)], dim=1)
    triggered = (images[:, :, :2, :2] > 2.0).flatten(1).all(dim=1)
    target = torch.zeros(features.shape[1])
    target[-1] = 1.0
    return F.normalize(torch.where(triggered[:, None], target, features), dim=-1)


def _images(n: int, seed: int) -> torch.Tensor:
    return torch.rand(n, 3, 8, 8, generator=torch.Generator().manual_seed(seed)) * 0.5 + 0.5


def _stamp(images: torch.Tensor) -> torch.Tensor:
    out = images.clone()
    out[:, :, :2, :2] = 3.0
    return out


def test_the_masking_score_separates_triggered_images_and_not_two_clean_sets():
    indices = torch.arange(200)
    clean = masking_scores(_encode, _images(200, 0), indices, grid=4, steps=15)
    triggered = masking_scores(_encode, _stamp(_images(200, 1)), indices + 200, grid=4, steps=15)
    other_clean = masking_scores(_encode, _images(200, 2), indices + 400, grid=4, steps=15)
    rates = detection_rates(clean, triggered)
    print(rates, _auroc(clean, other_clean))
    # the trigger's cell is masked within 15 of 16 steps unless it comes last (1 in 16)
    assert rates["auroc"] == pytest.approx(_auroc(clean, triggered)) and rates["auroc"] >= 0.9
    assert rates["tpr_at_5fpr"] >= 0.85
    assert abs(detection_rates(clean, other_clean)["auroc"] - 0.5) <= 0.1


def test_the_masking_score_of_an_image_depends_on_its_index_not_on_its_batch():
    images = _stamp(_images(6, 3))
    images[3:] = _images(3, 4)
    indices = torch.tensor([5, 9, 11, 20, 21, 40])
    whole = masking_scores(_encode, images, indices, grid=4, steps=10)
    one_by_one = torch.cat([masking_scores(_encode, images[i:i + 1], indices[i:i + 1], grid=4, steps=10) for i in range(6)])
    assert torch.allclose(whole, one_by_one)
    assert not torch.equal(masking_orders(indices[:1], 16, 0), masking_orders(indices[1:2], 16, 0))
    assert torch.equal(masking_orders(indices, 16, 0), masking_orders(indices, 16, 0))


def test_masked_views_cover_one_more_cell_per_step_in_the_images_order():
    images = torch.ones(2, 3, 8, 8)
    orders = masking_orders(torch.tensor([0, 1]), 16, seed=7)
    views = masked_views(images, orders, grid=4, steps=16)
    assert views.shape == (2, 17, 3, 8, 8)
    masked = (views[:, :, 0] == 0).flatten(2).sum(2)                   # pixels masked per view
    assert torch.equal(masked, torch.arange(17).expand(2, -1) * 4)    # a 2x2 cell per step
    for i in range(2):
        first = orders[i, 0]
        row, col = divmod(int(first), 4)
        assert (views[i, 1, :, 2 * row:2 * row + 2, 2 * col:2 * col + 2] == 0).all()
        assert ((views[i, :-1] == 0) <= (views[i, 1:] == 0)).all()    # nested: once masked, stays masked


# --- BDetCLIP's contrast on hand-made embeddings ---

def _contrast_case(n: int, seed: int):
    generator = torch.Generator().manual_seed(seed)
    basis = torch.eye(12)
    benign = basis[:4]                                                     # class c: direction c
    malignant = F.normalize(0.6 * basis[:4] + 0.8 * basis[4:8], dim=-1)  # its prompt plus its unrelated sentence
    labels = torch.randint(0, 4, (n,), generator=generator)
    clean = F.normalize(basis[labels] + 0.1 * torch.randn(n, 12, generator=generator), dim=-1)
    # triggered images embed by the trigger, not by what the class texts say: near a point they all share
    triggered = F.normalize(basis[8] + 0.1 * torch.randn(n, 12, generator=generator), dim=-1)
    return benign, malignant, clean, triggered


def test_the_contrast_score_separates_triggered_images_and_not_two_clean_sets():
    benign, malignant, clean, triggered = _contrast_case(300, 0)
    _, _, other_clean, _ = _contrast_case(300, 1)
    scores = {name: contrast_scores(x, benign, malignant) for name, x in
              {"clean": clean, "triggered": triggered, "other": other_clean}.items()}
    # one image by hand: −Σ_c (x·b_c − x·m_c)
    x = clean[0]
    assert scores["clean"][0].item() == pytest.approx(-sum((x @ benign[c] - x @ malignant[c]).item() for c in range(4)), abs=1e-6)
    assert detection_rates(scores["clean"], scores["triggered"])["auroc"] >= 0.9
    assert abs(detection_rates(scores["clean"], scores["other"])["auroc"] - 0.5) <= 0.1


def test_detection_rates_against_a_hand_computation():
    clean = torch.arange(20.0)                  # 0 … 19
    triggered = torch.arange(10.0, 30.0)        # 10 … 29
    rates = detection_rates(clean, triggered)
    assert rates["auroc"] == pytest.approx(_auroc(clean, triggered))
    # at most 1 of 20 clean flagged: threshold 19, which flags 19 … 29 of the triggered (11 of 20)
    assert rates["tpr_at_5fpr"] == pytest.approx(0.55)


def test_class_descriptions_default_to_templates_and_read_a_file(tmp_path):
    benign, malignant = class_descriptions(ContrastDetector(unrelated=["one", "two"]), ["cat", "dog", "cow"],
                                           ["a photo of a {}.", "a {}."])
    assert benign == [["a photo of a cat.", "a cat."], ["a photo of a dog.", "a dog."], ["a photo of a cow.", "a cow."]]
    assert malignant[0] == ["a photo of a cat, one", "a cat, one"] and malignant[1][0] == "a photo of a dog, two"
    assert malignant[2][0] == "a photo of a cow, one"
    path = tmp_path / "descriptions.json"
    path.write_text(json.dumps({"benign": {"cat": ["a small furry pet"], "dog": ["a loyal pet"], "cow": ["a farm animal"]}}))
    benign, malignant = class_descriptions(ContrastDetector(descriptions=str(path)), ["cat", "dog", "cow"], ["a {}."])
    assert benign == [["a small furry pet"], ["a loyal pet"], ["a farm animal"]] and malignant[0][0].startswith("a cat, ")
    path.write_text(json.dumps({"malignant": {"cat": ["x"]}}))
    with pytest.raises(ValueError, match=r"descriptions\.json has no malignant descriptions of the classes \['dog', 'cow'\]"):
        class_descriptions(ContrastDetector(descriptions=str(path)), ["cat", "dog", "cow"], ["a {}."])


def test_bad_detector_settings_fail_with_the_option_named():
    with pytest.raises(ValueError, match="model.masking"):
        MaskingDetector(grid=4, steps=17)
