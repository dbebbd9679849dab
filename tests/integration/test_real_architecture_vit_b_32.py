"""(slow) ViT-B-32 at 224 px through every stage for a step or two (tests/helpers/real_architectures.py says
what is checked): catches the shape, resolution and loading bugs that only 224-px models show.

    python -m pytest -q -m slow tests/integration/test_real_architecture_vit_b_32.py
"""

from helpers.real_architectures import every_stage_at_224_px, make_bench224


def test_every_stage_runs_at_224_px(tmp_path_factory, tmp_path):
    every_stage_at_224_px("ViT-B-32", make_bench224(tmp_path_factory), tmp_path)
