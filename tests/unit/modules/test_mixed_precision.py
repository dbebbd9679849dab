"""What must stay fp32 inside a `bf16-mixed` step does: the zero-shot classifier and ABD's PGD come out the same
with autocast on as with it off (rounded to bf16 they would differ in the third digit)."""

from __future__ import annotations

import torch

from modules import ABD, CLIPModule, ModelConfig

TINY = ModelConfig(name="configs/models/tiny-rn32.json")


def test_the_zero_shot_classifier_is_fp32_under_autocast():
    module = CLIPModule(TINY).eval()
    classnames, templates = ["circle", "square", "triangle"], ["a photo of a {}.", "a drawing of a {}."]
    plain = module.class_embeddings(classnames, templates)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = module.class_embeddings(classnames, templates)
        assert module.model.encode_text(module.input_spec().tokenizer(["a circle"])).dtype == torch.bfloat16
    assert mixed.dtype == torch.float32
    torch.testing.assert_close(mixed, plain, rtol=0, atol=0)


def test_pgd_runs_in_fp32_under_autocast():
    torch.manual_seed(0)
    module = ABD(TINY, adversarial="pgd", pgd_steps=3).eval()
    tokens = module.input_spec().tokenizer(["a photo of a circle."] * 4)
    batch = {"image": torch.randn(4, 3, 32, 32), "text": tokens}
    plain = module.adversarial_images(batch)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = module.adversarial_images(batch)
    assert mixed.dtype == torch.float32
    torch.testing.assert_close(mixed, plain, rtol=0, atol=0)
