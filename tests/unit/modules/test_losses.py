"""Loss terms against direct computations on hand-made embeddings."""

import torch
import torch.nn.functional as F

from modules.core.losses import clamped_logit_scale, cleanclip_loss, make_clip_loss, ssl_loss


def _emb(seed, n=6, d=4):
    return F.normalize(torch.randn((n, d), generator=torch.Generator().manual_seed(seed)), dim=-1)


def _infonce(a, b, scale):
    labels = torch.arange(a.shape[0])
    logits = scale * a @ b.T
    return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2


def test_ssl_term_is_image_and_text_infonce_against_their_augmented_views():
    image, image_aug, text, text_aug = (_emb(s) for s in range(4))
    scale = torch.tensor(10.0)
    got = ssl_loss(make_clip_loss(), image, image_aug, text, text_aug, scale)
    assert torch.allclose(got, _infonce(image, image_aug, scale) + _infonce(text, text_aug, scale))


def test_cleanclip_loss_weights_its_terms():
    image, text, image_aug, text_aug = (_emb(s) for s in range(4))
    scale = torch.tensor(20.0)
    terms = cleanclip_loss(make_clip_loss(), image, text, image_aug, text_aug, scale, lambda_clip=0.5, lambda_ss=4.0)
    clip = _infonce(image, text, scale)
    ss = _infonce(image, image_aug, scale) + _infonce(text, text_aug, scale)
    assert torch.allclose(terms["loss_clip"], clip)
    assert torch.allclose(terms["loss_ss"], ss)
    assert torch.allclose(terms["loss"], 0.5 * clip + 4.0 * ss)


def test_matching_views_give_a_lower_ssl_loss_than_shuffled_ones():
    image, text = _emb(0), _emb(1)
    scale = torch.tensor(30.0)
    aligned = ssl_loss(make_clip_loss(), image, image, text, text, scale)
    shuffled = ssl_loss(make_clip_loss(), image, image.roll(1, 0), text, text.roll(1, 0), scale)
    assert aligned < shuffled


def test_logit_scale_is_clamped_at_100_in_the_forward_pass_only():
    param = torch.nn.Parameter(torch.tensor(10.0))
    assert abs(clamped_logit_scale(param).item() - 100.0) < 1e-3
    assert param.item() == 10.0
    assert abs(clamped_logit_scale(torch.tensor(2.0)).item() - torch.exp(torch.tensor(2.0)).item()) < 1e-5
