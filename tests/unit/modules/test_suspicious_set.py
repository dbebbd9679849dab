"""UBT's label-free choice of the unlearning set (modules.detection.suspicious_set, the `dense` ranking of
modules.detection.pair_scoring) on hand-made embeddings, and what the unlearning fit does when the guard refuses."""

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from modules.cleaning.token_unlearning import TokenUnlearning
from modules.core.model_loading import ModelConfig
from modules.detection.pair_scoring import one_pass_rankings, rank_keys, save_suspicious_pairs, write_discovery
from modules.detection.suspicious_set import SetRule, choose_suspicious


def _pairs(poisoned: int = 60, clean: int = 1500, dim: int = 32, seed: int = 0):
    """Keys, similarities and image embeddings: clean images around 10 class directions, the poisoned ones
    collapsed together by their trigger; the weakest-matched pairs are 200 clean ones (noisy captions),
    the poisoned pairs only middling."""
    gen = torch.Generator().manual_seed(seed)
    common = F.normalize(torch.randn(dim, generator=gen), dim=0) * 3
    classes = F.normalize(torch.randn(10, dim, generator=gen), dim=-1)
    trigger = F.normalize(torch.randn(dim, generator=gen), dim=0)
    labels = torch.randint(10, (clean,), generator=gen)
    images = torch.cat([common + trigger + 0.05 * torch.randn(poisoned, dim, generator=gen),
                        common + classes[labels] + 0.3 * torch.randn(clean, dim, generator=gen)])
    keys = [f"p{i:04d}" for i in range(poisoned)] + [f"c{i:04d}" for i in range(clean)]
    similarity = {k: 0.3 for k in keys[:poisoned]}
    similarity.update({k: 0.1 if i < 200 else 0.5 for i, k in enumerate(keys[poisoned:])})
    return keys, similarity, [(keys, images.half())]


def test_dense_ranks_the_planted_pairs_first_where_the_weakest_pairs_are_all_clean(tmp_path):
    keys, similarity, embeddings = _pairs()
    scores, candidates = one_pass_rankings(similarity, embeddings, "dense", cluster_seed=300)
    assert candidates is None
    assert all(k.startswith("c") for k in rank_keys(scores["weak"])[:200])
    assert all(k.startswith("p") for k in rank_keys(scores["dense"])[:60])
    # the mixture rule sizes the set to the planted component; pairs the pass did not keep are fetched
    fetched = []

    def fetch(wanted):
        fetched.extend(wanted)
        return {k: (torch.zeros(3, 4, 4, dtype=torch.uint8), "a red triangle") for k in wanted}

    top, _, decision = write_discovery(tmp_path / "ubt", scores, {}, "dense", 200, [100], None,
                                       rule=SetRule(rule="mixture"), fetch=fetch)
    assert decision["guard"] is None and 50 <= len(top) <= 70 and sorted(fetched) == sorted(top)
    assert sum(k.startswith("p") for k in top) / len(top) >= 0.9
    assert json.loads((tmp_path / "ubt" / "suspicious.json").read_text())["rule"]["m"] == len(top)


def test_the_set_counts_its_clean_pairs_whose_caption_names_the_target(tmp_path):
    """Evaluation only, from the replayed manifest: of the clean pairs the rule kept, those whose caption
    names the attack's target (BadCLIP's clean pairs unlearned are pictures of its target)."""
    keys, similarity, embeddings = _pairs()
    scores, _ = one_pass_rankings(similarity, embeddings, "dense", cluster_seed=300)
    poisoned = [k for k in keys if k.startswith("p")][:50]  # 10 of the planted component's pairs counted clean
    manifest = tmp_path / "manifest.json"
    manifest.write_text(json.dumps({"keys": poisoned, "target": "triangle"}))
    clean_in_component = [k for k in keys if k.startswith("p")][50:]
    captions = {k: "a caption" for k in keys}
    captions.update({k: "the Triangle is red" for k in clean_in_component[:4]})
    captions.update({k: "the triangles are blue" for k in clean_in_component[4:6]})
    captions.update({k: "a triangle" for k in poisoned})  # poisoned pairs are not counted
    captions[clean_in_component[6]] = "a pentriangle"  # a word that only contains the name is not it
    pixels = {k: (torch.zeros(3, 4, 4, dtype=torch.uint8), captions[k]) for k in keys}
    top, _, decision = write_discovery(tmp_path / "ubt", scores, pixels, "dense", 200, [100], manifest,
                                       rule=SetRule(rule="mixture"))
    assert set(clean_in_component) <= set(top), "the planted component is chosen whole"
    assert decision["clean_naming_target"] == 6
    assert decision["true_purity"] == pytest.approx(50 / len(top), abs=1e-4)
    manifest.write_text(json.dumps({"keys": poisoned, "target": None}))  # no one target to name
    _, _, decision = write_discovery(tmp_path / "ubt", scores, pixels, "dense", 200, [100], manifest,
                                     rule=SetRule(rule="mixture"))
    assert decision["clean_naming_target"] is None


def test_the_guard_fires_without_a_separate_component_and_sizes_nothing():
    _, _, embeddings = _pairs(poisoned=0)
    keys, similarity, _ = _pairs(poisoned=0)
    scores, _ = one_pass_rankings(similarity, embeddings, "dense", cluster_seed=300)
    chosen, decision = choose_suspicious(torch.tensor(list(scores["dense"].values())), m_max=200)
    assert decision["guard"] is not None and len(chosen) == 0 and decision["m"] == 0
    # a separate component that is too small for the guard's minimum
    with_planted = torch.cat([torch.randn(1000), 8 + 0.1 * torch.randn(10)])
    chosen, decision = choose_suspicious(with_planted, m_max=200, rule=SetRule(min_pairs=20))
    assert decision["upper_component_pairs"] == 10 and "holds 10 pairs" in decision["guard"] and len(chosen) == 0
    chosen, decision = choose_suspicious(with_planted, m_max=200, rule=SetRule(min_pairs=5))
    assert decision["guard"] is None and sorted(chosen.tolist()) == list(range(1000, 1010))
    # a separate but overlapping component: kept whole, its estimated purity decides
    gen = torch.Generator().manual_seed(0)
    overlapping = torch.cat([torch.randn(1000, generator=gen), 2.3 + torch.randn(1000, generator=gen)])
    chosen, decision = choose_suspicious(overlapping, m_max=2000, rule=SetRule(min_purity=0.8, max_share=1.0))
    assert decision["guard"] is None and 0.8 <= decision["estimated_purity"] < 0.9 and len(chosen) == decision["m"]
    chosen, decision = choose_suspicious(overlapping, m_max=2000, rule=SetRule(min_purity=0.9, max_share=1.0))
    assert "estimated purity" in decision["guard"] and len(chosen) == 0


def _skewed_pairs(poisoned: int, clean: int = 3000, dim: int = 32, seed: int = 0):
    """Keys and image embeddings whose clean images spread by a per-image factor (some tight, most wide):
    a right-skewed bulk of k-distances, as real images give, with `poisoned` images collapsed by a trigger."""
    gen = torch.Generator().manual_seed(seed)
    common = F.normalize(torch.randn(dim, generator=gen), dim=0) * 3
    classes = F.normalize(torch.randn(10, dim, generator=gen), dim=-1)
    trigger = F.normalize(torch.randn(dim, generator=gen), dim=0)
    spread = 0.3 * (0.5 + 1.5 * torch.rand(clean, 1, generator=gen) ** 2)
    images = torch.cat([common + trigger + 0.05 * torch.randn(poisoned, dim, generator=gen),
                        common + classes[torch.randint(10, (clean,), generator=gen)]
                        + spread * torch.randn(clean, dim, generator=gen)])
    keys = [f"p{i:04d}" for i in range(poisoned)] + [f"c{i:04d}" for i in range(clean)]
    return keys, {k: 0.5 for k in keys}, [(keys, images.half())]


def test_a_one_percent_trigger_in_a_skewed_bulk_is_chosen_on_the_log_density_scale():
    keys, similarity, embeddings = _skewed_pairs(poisoned=30)
    scores, _ = one_pass_rankings(similarity, embeddings, "dense", cluster_seed=300)
    dense = torch.tensor([scores["dense"][k] for k in keys])
    chosen, decision = choose_suspicious(dense, m_max=200)
    assert decision["guard"] is None and 25 <= len(chosen) <= 30 and set(chosen.tolist()) <= set(range(30))
    # the same ranking on the −kdist scale: the tail of the bulk swallows the small component
    _, on_distances = choose_suspicious(torch.tensor([-scores["kdist"][k] for k in keys]), m_max=200)
    assert on_distances["guard"] is not None


def test_the_guard_fires_on_a_skewed_clean_bulk_whose_mixture_splits_it():
    keys, similarity, embeddings = _skewed_pairs(poisoned=0)
    scores, _ = one_pass_rankings(similarity, embeddings, "dense", cluster_seed=300)
    dense = torch.tensor([scores["dense"][k] for k in keys])
    chosen, decision = choose_suspicious(dense, m_max=200)
    assert decision["separation"] >= 2 and decision["upper_share"] > 0.33  # a separate-looking half of the bulk
    assert "a split of the bulk" in decision["guard"] and len(chosen) == 0
    _, without = choose_suspicious(dense, m_max=200, rule=SetRule(max_share=1.0))
    assert without["guard"] is None and without["m"] == 200


FIXTURES = Path(__file__).parents[2] / "fixtures"


def test_a_small_component_needs_less_separation_on_real_rankings():
    """Two stored `dense` rankings of the threats study (tests/fixtures/dense_scores.safetensors): BadCLIP at 1%
    (seed 4), whose component's D is 1.83, and a clean control (seed 1), whose is 1.72 with 18% of the pairs."""
    scores = load_file(FIXTURES / "dense_scores.safetensors")
    chosen, decision = choose_suspicious(scores["badclip_1pct"].float(), m_max=200)
    assert 1.5 <= decision["separation"] < 2.0 and decision["upper_share"] <= 0.05 and decision["guard"] is None
    poisoned = set(scores["badclip_1pct_poisoned"].tolist())
    assert len(chosen) >= 100 and sum(i in poisoned for i in chosen.tolist()) / len(chosen) >= 0.85
    _, at_one_bound = choose_suspicious(scores["badclip_1pct"].float(), m_max=200, rule=SetRule(rule="mixture", small_share=0.0))
    assert "Ashman's D 1.83 < 2.0" in at_one_bound["guard"]
    # the clean control is as close, but its component is a slice of the bulk: the share keeps the bound at 2
    chosen, decision = choose_suspicious(scores["clean"].float(), m_max=200)
    assert 1.5 <= decision["separation"] < 2.0 and decision["upper_share"] > 0.05
    assert "no separate suspicious component" in decision["guard"] and len(chosen) == 0
    _, without_share = choose_suspicious(scores["clean"].float(), m_max=200, rule=SetRule(rule="mixture", small_share=1.0))
    assert without_share["guard"] is None and without_share["m"] == 200


def test_when_the_guard_refused_the_unlearning_fit_trains_on_the_retain_loss_alone(tmp_path):
    out = tmp_path / "ubt"
    save_suspicious_pairs(out / "suspicious_pairs.safetensors", [], torch.empty((0, 3, 1, 1), dtype=torch.uint8), [])
    (out / "suspicious.json").write_text(json.dumps({"score": "dense", "m": 0, "keys": [],
                                                     "rule": {"guard": "no separate suspicious component", "m": 0}}))
    module = TokenUnlearning(model=ModelConfig(name="configs/models/tiny-rn32.json"), suspicious_dir=str(out))
    module.trainer = SimpleNamespace(world_size=1, strategy=None, global_rank=0, global_step=0)
    module.setup("fit")
    assert module.forget_keys == [] and module.summary_extras()["suspicious_set"]["guard"]
    (out / "suspicious.json").write_text(json.dumps({"score": "weak", "m": 0, "keys": []}))
    with pytest.raises(ValueError, match="holds no pairs"):
        module.setup("fit")


def test_a_step_without_a_forget_set_is_the_retain_loss():
    module = TokenUnlearning(model=ModelConfig(name="configs/models/tiny-rn32.json"), suspicious_dir="unused")
    module.trainer = SimpleNamespace(world_size=1, strategy=None, global_rank=0, global_step=0)
    module.log = module.log_dict = lambda *args, **kwargs: None
    batch = {"image": torch.randn(4, 3, 32, 32), "text": torch.randint(1, 100, (4, 16))}
    scale = module.logit_scale()
    retain = module.clip_loss(module.encode_image(batch["image"]), module.encode_text(batch["text"]), scale)
    assert module.training_step(batch, 0).item() == pytest.approx(retain.item(), rel=1e-5)


def test_the_set_is_counted_by_the_trigger_that_poisoned_each_pair(tmp_path):
    """A multi-trigger attack: suspicious.json and the unlearning fit's summary say whose pairs the set holds."""
    keys, similarity, embeddings = _pairs(poisoned=60)
    scores, _ = one_pass_rankings(similarity, embeddings, "dense", cluster_seed=300)
    poisoned = keys[:60]
    manifest = tmp_path / "manifest.json"
    manifest.write_text(json.dumps({"keys": poisoned, "assignments": {
        k: {"trigger": i % 3, "target": ["triangle", "star", "heart"][i % 3]} for i, k in enumerate(poisoned)}}))
    pixels = {k: (torch.zeros(3, 32, 32, dtype=torch.uint8), "a caption") for k in keys}
    top, _, _ = write_discovery(tmp_path / "ubt", scores, pixels, "dense", 80, [100], manifest,
                                part_names=["0_badnet", "1_blended", "2_sig"])
    counts = json.loads((tmp_path / "ubt" / "suspicious.json").read_text())["by_trigger"]
    assert counts == {"0_badnet": 20, "1_blended": 20, "2_sig": 20, "clean": 20} and len(top) == 80

    module = TokenUnlearning(model=ModelConfig(name="configs/models/tiny-rn32.json"), suspicious_dir=str(tmp_path / "ubt"))
    module.trainer = SimpleNamespace(world_size=1, strategy=None, global_rank=0, global_step=0)
    module.setup("fit")
    assert module.summary_extras()["unlearned_by_trigger"] == counts
    # an unlearning fit that takes fewer pairs than the set holds counts the ones it takes
    fewer = TokenUnlearning(model=ModelConfig(name="configs/models/tiny-rn32.json"), suspicious_dir=str(tmp_path / "ubt"), m=60)
    fewer.trainer = module.trainer
    fewer.setup("fit")
    assert fewer.summary_extras()["unlearned_by_trigger"] == {"0_badnet": 20, "1_blended": 20, "2_sig": 20, "clean": 0}
    # one trigger: no count by trigger
    manifest.write_text(json.dumps({"keys": poisoned}))
    write_discovery(tmp_path / "one", scores, pixels, "dense", 80, [100], manifest)
    assert json.loads((tmp_path / "one" / "suspicious.json").read_text())["by_trigger"] is None
