import pytest
import torch

from datamodules.poison import SIG, BadNet, Blended, BlendedPattern, WaNet, load_trigger


@pytest.fixture
def image():
    return torch.rand((3, 32, 32), generator=torch.Generator().manual_seed(0))


ALL_TRIGGERS = [
    BadNet(size=6, pattern="noise", location="random", seed=1),
    BadNet(size=6, pattern="fixed", location="random", seed=1),
    BadNet(size=4, pattern="fixed", location="fixed", position=(2, 3), seed=1),
    BadNet(size=8, pattern="fixed", location="random", seed=1, cell=2),
    BadNet(size=7, pattern="noise", location="random", seed=1, cell=3),
    Blended(alpha=0.2, pattern="fixed", seed=1),
    Blended(alpha=0.2, pattern="noise", seed=1),
    SIG(),
    WaNet(k=4, strength=1.0, seed=1),
]


@pytest.mark.parametrize("trigger", ALL_TRIGGERS, ids=lambda t: t.name + str(t.params()))
def test_trigger_is_a_function_of_key_and_changes_the_image(trigger, image):
    out = trigger.apply(image, "000000042")
    assert out.shape == image.shape
    assert 0.0 <= out.min() and out.max() <= 1.0
    assert not torch.equal(out, image)
    assert torch.equal(out, trigger.apply(image, "000000042"))


@pytest.mark.parametrize("trigger", ALL_TRIGGERS, ids=lambda t: t.name + str(t.params()))
def test_saved_trigger_reloads_to_the_same_trigger(trigger, image, tmp_path):
    trigger.save(tmp_path, image_size=32)
    loaded = load_trigger(tmp_path)
    assert type(loaded) is type(trigger)
    for key in ("a", "000000007", "s0000001"):
        assert torch.allclose(loaded.apply(image, key), trigger.apply(image, key), atol=1e-6)


def test_badnet_noise_is_redrawn_per_image_and_fixed_is_not(image):
    noise = BadNet(size=6, pattern="noise", location="fixed")
    fixed = BadNet(size=6, pattern="fixed", location="fixed")
    patch = lambda t, key: t.apply(image, key)[:, -6:, -6:]  # noqa: E731
    assert not torch.equal(patch(noise, "k1"), patch(noise, "k2"))
    assert torch.equal(patch(fixed, "k1"), patch(fixed, "k2"))


@pytest.mark.parametrize("pattern", ["fixed", "noise"])
def test_badnet_cells_are_uniform_blocks(pattern, image):
    patch = BadNet(size=8, pattern=pattern, location="fixed", cell=2).apply(image, "k")[:, -8:, -8:]
    blocks = patch.unfold(1, 2, 2).unfold(2, 2, 2)  # (3, 4, 4, 2, 2): one 2x2 block per cell
    assert torch.equal(blocks, blocks[..., :1, :1].expand_as(blocks))
    assert len(torch.unique(blocks[..., 0, 0])) > 10


def test_badnet_cell_one_is_per_pixel_noise_unchanged():
    assert torch.equal(BadNet(size=6, pattern="fixed", seed=3).fixed_pattern(),
                       torch.randint(0, 256, (3, 6, 6), generator=torch.Generator().manual_seed(3)).float() / 255)


def test_badnet_rejects_a_cell_larger_than_the_patch():
    with pytest.raises(ValueError, match="cell"):
        BadNet(size=4, cell=5)


def test_badnet_touches_only_the_patch(image):
    trigger = BadNet(size=5, pattern="fixed", location="fixed", position=(10, 20))
    diff = (trigger.apply(image, "k") != image).any(dim=0)
    rows, cols = torch.nonzero(diff, as_tuple=True)
    assert rows.min() >= 10 and rows.max() < 15 and cols.min() >= 20 and cols.max() < 25


def test_badnet_random_location_varies_with_key(image):
    trigger = BadNet(size=4, pattern="fixed", location="random")
    corners = set()
    for i in range(20):
        diff = (trigger.apply(image, f"key{i}") != image).any(dim=0)
        rows, cols = torch.nonzero(diff, as_tuple=True)
        corners.add((int(rows.min()), int(cols.min())))
    assert len(corners) > 10


def test_blended_is_the_convex_mix(image):
    trigger = Blended(alpha=0.25, pattern="fixed", seed=5)
    expected = 0.75 * image + 0.25 * trigger.fixed_pattern(32, 32)
    assert torch.allclose(trigger.apply(image, "k"), expected)


def test_sig_adds_a_column_signal():
    flat = torch.full((3, 8, 16), 0.5)
    out = SIG(delta=0.1, frequency=2).apply(flat, "k")
    assert torch.allclose(out[:, 0], out[:, 5])  # same signal on every row
    assert out[0, 0, 2].item() == pytest.approx(0.5 + 0.1, abs=1e-5)  # sin(2π·2·2/16) = 1


def test_wanet_warp_is_small_and_smooth(image):
    out = WaNet(k=4, strength=0.5).apply(image, "k")
    assert (out - image).abs().mean() < 0.2


def test_missing_trigger_artifacts_name_the_file(tmp_path):
    with pytest.raises(ValueError, match="trigger.json"):
        load_trigger(tmp_path)


STRUCTURED = [
    BadNet(size=8, pattern="stripes", location="random", seed=1, cell=2),
    BlendedPattern(kind="stripes", alpha=0.03, period=4),
    BlendedPattern(kind="triangles", alpha=0.15, period=8),
    BlendedPattern(kind="text", alpha=0.15, text="cf"),
]


@pytest.mark.parametrize("trigger", STRUCTURED, ids=lambda t: t.name + str(t.params()))
def test_structured_triggers_reload_bit_exact(trigger, image, tmp_path):
    trigger.save(tmp_path, image_size=32)
    loaded = load_trigger(tmp_path)
    out = trigger.apply(image, "k1")
    assert not torch.equal(out, image)
    assert torch.equal(loaded.apply(image, "k1"), out)


def test_badnet_stripes_alternate_black_and_white_columns():
    out = BadNet(size=8, pattern="stripes", location="fixed", position=(0, 0), cell=2).apply(torch.full((3, 8, 8), 0.5), "k")
    assert torch.equal(out[0, 0], torch.tensor([0.0, 0, 1, 1, 0, 0, 1, 1]))
    assert torch.equal(out[:, :, 2], torch.ones(3, 8))


def test_blended_stripes_move_each_pixel_by_alpha_toward_the_stripe():
    image = torch.full((3, 16, 16), 0.5)
    out = BlendedPattern(kind="stripes", alpha=0.03, period=4).apply(image, "k")
    assert torch.allclose(out[:, :, 0:2], torch.full((3, 16, 2), 0.485))
    assert torch.allclose(out[:, :, 2:4], torch.full((3, 16, 2), 0.515))


def test_triangles_are_separated_cells_pointing_up():
    pattern = BlendedPattern(kind="triangles", alpha=1.0, period=8).pattern(16, 16)[0]
    cell = pattern[:8, :8]
    assert cell[0].sum() <= 1 and cell[-1].sum() >= 5  # narrow apex, wide base
    assert cell[:, 0].sum() == 0  # a clear column between neighbours
    assert torch.equal(pattern[:8, :8], pattern[8:, 8:])


def test_text_pattern_draws_the_word_and_depends_on_it():
    cf = BlendedPattern(kind="text", alpha=1.0, text="cf").pattern(32, 32)
    xy = BlendedPattern(kind="text", alpha=1.0, text="xy").pattern(32, 32)
    assert cf.max() > 0.5 and 0.02 < cf.mean() < 0.5
    assert not torch.equal(cf, xy)


def test_blended_pattern_rejects_bad_options():
    with pytest.raises(ValueError, match="kind"):
        BlendedPattern(kind="dots")
    with pytest.raises(ValueError, match="text"):
        BlendedPattern(kind="text", text=" ")
    with pytest.raises(ValueError, match="pattern"):
        BadNet(pattern="checker")
