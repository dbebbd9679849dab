"""UBT stage 2: token attribution and gating on hand-made tensors and on tiny open_clip models; the
unlearning set is bounded by m; gradients reach only the configured parameters and tokens."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from modules.cleaning.token_unlearning import TokenUnlearning
from modules.core.freezing import freeze_all_but, token_local_parameters
from modules.core.losses import relative_squared_change
from modules.core.model_loading import ModelConfig, build_model
from modules.detection.pair_scoring import load_suspicious_pairs, save_suspicious_pairs
from modules.detection.token_attribution import (
    TokenTap,
    captured_image_tokens,
    gate,
    image_tokens_only,
    token_attribution,
    top_token_mask,
)


def test_attribution_is_grad_times_activation_summed_over_channels():
    act = torch.tensor([[[1.0, 2.0], [3.0, -1.0], [0.5, 0.5]]])  # (N=1, L=3, D=2)
    grad = torch.tensor([[[2.0, 1.0], [0.0, 4.0], [-2.0, 2.0]]])
    assert token_attribution(act, grad, channel_dim=-1).tolist() == [[4.0, -4.0, 0.0]]
    image = torch.arange(8.0).view(1, 2, 2, 2)  # (N, C, H, W)
    assert token_attribution(image, torch.ones_like(image), channel_dim=1).tolist() == [[4.0, 6.0, 8.0, 10.0]]


def test_top_token_mask_takes_the_k_best_valid_tokens():
    scores = torch.tensor([[0.1, 0.9, 0.5, 0.7], [0.3, 0.2, 0.8, 0.1]])
    valid = torch.tensor([[True, False, True, True], [True, True, False, False]])
    mask = top_token_mask(scores, 2, valid)
    assert mask.tolist() == [[False, False, True, True], [True, True, False, False]]
    assert top_token_mask(scores, 10).sum().item() == 8
    with pytest.raises(ValueError, match="≥ 1"):
        top_token_mask(scores, 0)


def test_gate_keeps_the_value_and_passes_gradient_only_through_the_mask():
    x = torch.tensor([[1.0, 2.0, 3.0]], requires_grad=True)
    y = gate(x, torch.tensor([[True, False, True]]))
    assert torch.equal(y, x)
    (y * torch.tensor([[1.0, 10.0, 100.0]])).sum().backward()
    assert x.grad.tolist() == [[1.0, 0.0, 100.0]]


@pytest.fixture(scope="module", params=["tiny-rn32", "tiny-vit32"])
def tiny_model(request):
    torch.manual_seed(0)
    model, spec = build_model(ModelConfig(name=f"configs/models/{request.param}.json"))
    return model.eval(), spec


def _similarity(model, images, tokens):
    return (model.encode_image(images, normalize=True) * model.encode_text(tokens, normalize=True)).sum(-1)


def test_gated_forward_leaves_the_similarity_unchanged_and_grads_only_top_token_rows(tiny_model):
    model, spec = tiny_model
    images = torch.randn(3, 3, spec.image_size, spec.image_size)
    tokens = spec.tokenizer(["a red star", "a blue circle on grey", "stripes"])
    freeze_all_but(model, token_local_parameters(model))
    model.zero_grad(set_to_none=True)
    with TokenTap(model) as tap:
        plain = _similarity(model, images, tokens)
        text_grad, image_grad = torch.autograd.grad(plain.sum(), [tap.text, tap.image])
        text_mask = top_token_mask(token_attribution(tap.text, text_grad, -1), 2, valid=tokens != 0)
        image_mask = top_token_mask(token_attribution(tap.image, image_grad, 1), 1)
        tap.gate_with(text_mask, image_mask)
        gated = _similarity(model, images, tokens)
    assert torch.allclose(plain, gated, atol=1e-6)
    gated.sum().backward()
    chosen_ids = set(tokens[text_mask].tolist())
    rows_with_grad = set(torch.nonzero(model.token_embedding.weight.grad.abs().sum(1)).flatten().tolist())
    assert rows_with_grad and rows_with_grad <= chosen_ids
    for name, param in model.named_parameters():
        if not param.requires_grad:
            assert param.grad is None, name
    for param in model.parameters():
        param.requires_grad_(True)


def test_image_gate_closed_stops_the_visual_gradient(tiny_model):
    model, spec = tiny_model
    images = torch.randn(2, 3, spec.image_size, spec.image_size)
    tokens = spec.tokenizer(["a star", "a ring"])
    freeze_all_but(model, token_local_parameters(model))
    visual = [p for n, p in model.named_parameters() if p.requires_grad and n.startswith("visual")]
    for open_gate in (False, True):
        model.zero_grad(set_to_none=True)
        with TokenTap(model) as tap:
            _similarity(model, images, tokens)  # records the token shapes
            n_image = tap.image.flatten(2).shape[-1] if tap.image.dim() == 4 else tap.image.shape[1]
            tap.gate_with(tokens != 0, torch.full((2, n_image), open_gate))
            _similarity(model, images, tokens).sum().backward()
        total = sum(p.grad.abs().sum().item() for p in visual if p.grad is not None)
        assert (total > 0) == open_gate
    for param in model.parameters():
        param.requires_grad_(True)


def test_trainable_prefixes_that_match_nothing_are_refused(tiny_model):
    model, _ = tiny_model
    with pytest.raises(ValueError, match="matches no parameter"):
        freeze_all_but(model, ["visual.no_such_layer"])


def test_the_unlearning_set_is_bounded_by_m(tmp_path):
    path = tmp_path / "ubt" / "suspicious_pairs.safetensors"
    keys = [f"{i:09d}" for i in range(30)]
    save_suspicious_pairs(path, keys, torch.randint(0, 256, (30, 3, 32, 32), dtype=torch.uint8), [f"a star {i}" for i in range(30)])
    loaded_keys, images, captions = load_suspicious_pairs(path, m=12)
    assert loaded_keys == keys[:12] and images.shape[0] == 12 and captions[0] == "a star 0"

    module = TokenUnlearning(model=ModelConfig(name="configs/models/tiny-rn32.json"), suspicious_dir=str(path.parent),
                             m=12, forget_batch_size=8)
    module.trainer = SimpleNamespace(world_size=1, strategy=None, global_rank=0, global_step=0)
    module.setup("fit")
    assert len(module.forget_keys) == 12
    images, tokens = module.forget_batch()
    assert images.shape == (8, 3, 32, 32) and tokens.shape[0] == 8
    loss, _ = module.forget_loss(images, tokens)
    loss.backward()
    assert all(p.grad is None for n, p in module.model.named_parameters() if n not in module.trainable)
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for n, p in module.model.named_parameters() if n in module.trainable)


def test_vit_tokens_after_a_block_gate_the_layers_below_and_only_those():
    torch.manual_seed(0)
    model, spec = build_model(ModelConfig(name="configs/models/tiny-vit32.json"))
    model.eval()
    trainable = freeze_all_but(model, token_local_parameters(model, vit_block=0))
    assert any(n.startswith("visual.transformer.resblocks.0.") for n in trainable)
    assert not any(n.startswith("visual.transformer.resblocks.1.") for n in trainable)
    images = torch.randn(2, 3, spec.image_size, spec.image_size)
    tokens = spec.tokenizer(["a star", "a ring"])
    below = [p for n, p in model.named_parameters() if p.requires_grad and n.startswith("visual")]
    grads = {}
    for opened in (0, 1, 2):  # no token, one token, two tokens of each image let gradient through
        model.zero_grad(set_to_none=True)
        with TokenTap(model, vit_block=0) as tap:
            plain = _similarity(model, images, tokens)
            assert tap.image.shape == (2, 1 + (spec.image_size // 4) ** 2, 128) and tap.image_channel_dim == -1
            mask = torch.zeros(2, tap.image.shape[1], dtype=torch.bool)
            mask[:, 1:1 + opened] = True
            tap.gate_with(tokens != 0, mask)
            gated = _similarity(model, images, tokens)
            assert torch.allclose(plain, gated, atol=1e-6)
            gated.sum().backward()
        grads[opened] = torch.cat([p.grad.flatten() if p.grad is not None else torch.zeros(p.numel()) for p in below])
    assert grads[0].abs().sum() == 0 and grads[1].abs().sum() > 0
    assert not torch.allclose(grads[1], grads[2])  # the second token adds its own gradient
    with pytest.raises(ValueError, match="image_token_block 5"):
        TokenTap(model, vit_block=5)
    with pytest.raises(ValueError, match="last block"):  # its patch tokens never reach the pooled class token
        TokenTap(model, vit_block=1)
    rn, _ = build_model(ModelConfig(name="configs/models/tiny-rn32.json"))
    with pytest.raises(ValueError, match="ModifiedResNet"):
        TokenTap(rn, vit_block=0)


def test_relative_squared_change_is_zero_at_the_reference_and_scale_free():
    reference = torch.tensor([[3.0, 4.0], [0.0, 0.0]])
    assert relative_squared_change(reference.clone(), reference).item() == 0.0
    assert relative_squared_change(torch.zeros(2, 2), reference).item() == pytest.approx(1.0)
    moved = reference + torch.tensor([[0.0, 1.0], [0.0, 0.0]])
    assert relative_squared_change(moved, reference).item() == pytest.approx(1 / 25)
    assert relative_squared_change(10 * moved, 10 * reference).item() == pytest.approx(1 / 25)


@pytest.mark.parametrize("name,vit_block", [("tiny-rn32", None), ("tiny-vit32", None), ("tiny-vit32", 0)])
def test_image_tokens_only_stops_at_the_tokens_and_matches_a_full_pass(name, vit_block):
    torch.manual_seed(0)
    model, spec = build_model(ModelConfig(name=f"configs/models/{name}.json"))
    model.eval()
    images = torch.randn(2, 3, spec.image_size, spec.image_size)
    with captured_image_tokens(model.visual, vit_block) as captured:
        model.visual(images)
    above = []  # a module the full pass runs after the tokens
    last = model.visual.attnpool if hasattr(model.visual, "attnpool") else model.visual.ln_post
    handle = last.register_forward_hook(lambda *args: above.append(True))
    try:
        tokens = image_tokens_only(model.visual, images, vit_block)
    finally:
        handle.remove()
    assert torch.equal(tokens, captured[0]) and not above


def test_retain_tokens_loss_is_zero_at_the_incoming_model_and_grows_with_the_change():
    torch.manual_seed(0)
    module = TokenUnlearning(model=ModelConfig(name="configs/models/tiny-vit32.json"), suspicious_dir="unused",
                             image_token_block=0, lambda_retain_tokens=1.0)
    assert not any("incoming" in key for key in module.state_dict())  # not checkpointed
    assert not any(p.requires_grad for p in module.incoming_visual.parameters())
    images = torch.randn(4, 3, 32, 32)

    def loss():
        with captured_image_tokens(module.model.visual, 0) as tokens:
            module.encode_image(images)
        return module.retain_tokens_loss(images, tokens[0])

    assert loss().item() == pytest.approx(0.0, abs=1e-10)
    with torch.no_grad():
        module.model.visual.transformer.resblocks[0].mlp.c_fc.weight.mul_(1.5)
    moved = loss()
    assert moved.item() > 1e-4
    moved.backward()
    assert module.model.visual.transformer.resblocks[0].mlp.c_fc.weight.grad.abs().sum() > 0
    assert all(p.grad is None for n, p in module.model.named_parameters() if n not in module.trainable)
    with pytest.raises(ValueError, match="lambda_retain_tokens"):
        TokenUnlearning(model=ModelConfig(name="configs/models/tiny-vit32.json"), suspicious_dir="unused",
                        lambda_retain_tokens=-1.0)
