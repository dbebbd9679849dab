"""The embedded benchmark: deterministic from its seed, in the img2dataset and clip_benchmark layouts."""

import hashlib
import json
import tarfile
from pathlib import Path

import pytest

from datamodules.embedded.benchmark import EmbeddedBenchmark
from datamodules.embedded.shapes import CLASSNAMES
from datamodules.eval_config import EvalSetConfig
from datamodules.shards import expand_shards, scan_captions
from datamodules.transforms import InputSpec
from datamodules.zeroshot import ZeroShotSet


def _digest(root: Path) -> str:
    h = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        h.update(str(path.relative_to(root)).encode())
        h.update(path.read_bytes())
    return h.hexdigest()


NO_EXTRA_SETS = {"retrieval_images": 1, "sketch_per_class": 1, "probe_per_class": 1}
"""The retrieval, sketch and probe sets at their smallest (test_eval_sets.py reads them)."""


def _tiny(root, seed=0):
    return EmbeddedBenchmark(root=str(root), seed=seed, pretrain_shards=2, finetune_shards=1,
                             samples_per_shard=30, eval_per_class=3, retrieval_images=20, sketch_per_class=2,
                             probe_per_class=2)


def test_same_seed_same_bytes_other_seed_other_data(tmp_path):
    _tiny(tmp_path / "a").prepare()
    _tiny(tmp_path / "b").prepare()
    _tiny(tmp_path / "c", seed=1).prepare()
    assert _digest(tmp_path / "a") == _digest(tmp_path / "b")
    assert _digest(tmp_path / "a") != _digest(tmp_path / "c")


def test_prepare_reuses_and_refuses_a_different_build(tmp_path):
    bench = _tiny(tmp_path / "x")
    bench.prepare()
    stamp = (tmp_path / "x" / "pretrain" / "00000.tar").stat().st_mtime_ns
    bench.prepare()
    assert (tmp_path / "x" / "pretrain" / "00000.tar").stat().st_mtime_ns == stamp
    with pytest.raises(ValueError, match="other settings"):
        _tiny(tmp_path / "x", seed=5).prepare()


def _prepare_after(root: str, start: float) -> None:
    import time

    time.sleep(max(0.0, start - time.time()))
    _tiny(root).prepare()


def test_two_processes_preparing_at_once_build_it_once(tmp_path):
    # a study's `--jobs 2` on a fresh checkout: both fits' prepare_data at the same moment; without the lock
    # the second removes the first's half-written `.partial` directory under it
    import multiprocessing
    import time

    start = time.time() + 1.0
    processes = [multiprocessing.get_context("fork").Process(target=_prepare_after, args=(str(tmp_path / "x"), start))
                 for _ in range(2)]
    for process in processes:
        process.start()
    for process in processes:
        process.join(60)
    assert [process.exitcode for process in processes] == [0, 0]
    _tiny(tmp_path / "y").prepare()
    assert _digest(tmp_path / "x") == _digest(tmp_path / "y")


def test_img2dataset_layout(small_benchmark):
    root = Path(small_benchmark.root)
    for split in ("pretrain", "finetune"):
        for tar_path in sorted((root / split).glob("*.tar")):
            shard = int(tar_path.stem)
            stats = json.loads((root / split / f"{tar_path.stem}_stats.json").read_text())
            with tarfile.open(tar_path) as tar:
                names = tar.getnames()
            keys = {n.split(".")[0] for n in names}
            assert stats["successes"] == len(keys) == small_benchmark.samples_per_shard
            assert all(len(k) == 9 and k.isdigit() and int(k[:5]) == shard for k in keys)
            assert {n.split(".", 1)[1] for n in names} == {"jpg", "txt", "json"}


def test_captions_name_their_class(small_benchmark):
    captions = [c for _, c in scan_captions(expand_shards(small_benchmark.pretrain_urls))]
    assert len(captions) == 800
    assert all(any(name in c for name in CLASSNAMES) for c in captions)
    assert len(set(captions)) > 100


def test_splits_are_disjoint(small_benchmark):
    def images(split):
        out = set()
        for tar_path in (Path(small_benchmark.root) / split).glob("*.tar"):
            with tarfile.open(tar_path) as tar:
                out |= {tar.extractfile(m).read() for m in tar if m.name.endswith(".jpg")}
        return out
    assert not images("pretrain") & images("finetune")


def test_clip_benchmark_layout_reads_back(small_benchmark):
    root = Path(small_benchmark.eval_dir)
    assert (root / "test" / "nshards.txt").read_text().strip() == "1"
    assert (root / "classnames.txt").read_text().split() == list(CLASSNAMES)
    assert all("{c}" in t for t in (root / "zeroshot_classification_templates.txt").read_text().splitlines())
    spec = InputSpec(32, (0.5,) * 3, (0.5,) * 3, tokenizer=None)
    eval_set = ZeroShotSet(EvalSetConfig(directory=str(root)), spec, trigger=None)
    assert len(eval_set) == 10 * small_benchmark.eval_per_class
    labels = [eval_set[i]["label"] for i in range(len(eval_set))]
    assert sorted(set(labels)) == list(range(10))
    assert all("{}" in t for t in eval_set.templates)
    halves = [ZeroShotSet(EvalSetConfig(directory=str(root)), spec, None, rank=r, world_size=2) for r in (0, 1)]
    assert sorted(k for h in halves for k, _, _ in h.items) == sorted(k for k, _, _ in eval_set.items)


def _tiny_hard(root, seed=0):
    return EmbeddedBenchmark(root=str(root), seed=seed, pretrain_shards=1, finetune_shards=1,
                             samples_per_shard=200, eval_per_class=2, difficulty="hard", retrieval_images=20,
                             sketch_per_class=1, probe_per_class=1)


def test_hard_tier_composes_colour_shape_classes_among_distractors(tmp_path):
    bench = _tiny_hard(tmp_path / "hard")
    bench.prepare()
    classnames = (tmp_path / "hard" / "eval" / "classnames.txt").read_text().splitlines()
    assert len(classnames) == len(set(classnames)) == 80
    assert {name.split(" ", 1)[1] for name in classnames} == set(CLASSNAMES)
    captions = [c for _, c in scan_captions(expand_shards(bench.pretrain_urls))]
    naming_a_class = sum(any(name in c for name in classnames) for c in captions)
    naming_two = sum(" and a small " in c or c.startswith("a small ") for c in captions)
    assert 0.3 < naming_a_class / len(captions) < 0.95   # some captions name only the shape
    assert 0.1 < naming_two / len(captions) < 0.5
    spec = InputSpec(32, (0.5,) * 3, (0.5,) * 3, tokenizer=None)
    eval_set = ZeroShotSet(EvalSetConfig(directory=bench.eval_dir), spec, trigger=None)
    assert sorted({eval_set[i]["label"] for i in range(len(eval_set))}) == list(range(80))


def test_hard_scene_draws_the_class_above_other_objects():
    import numpy as np

    from datamodules.embedded.shapes import COMPOSED_CLASSNAMES, draw_composed_scene
    for i in range(30):
        color, shape = COMPOSED_CLASSNAMES[i % 80].split(" ", 1)
        _, scene = draw_composed_scene(np.random.default_rng(i), color, shape)
        assert (scene.color, scene.shape) == (color, shape)
        assert 1 <= len(scene.distractors) <= 3 and (color, shape) not in scene.distractors
        assert scene.size in ("medium", "large")


def test_tiers_are_separate_builds_and_the_easy_spec_is_unchanged(tmp_path):
    _tiny(tmp_path / "easy").prepare()
    assert "difficulty" not in json.loads((tmp_path / "easy" / "benchmark.json").read_text())
    with pytest.raises(ValueError, match="other settings"):
        EmbeddedBenchmark(root=str(tmp_path / "easy"), pretrain_shards=2, finetune_shards=1,
                          samples_per_shard=30, eval_per_class=3, difficulty="hard").prepare()
    with pytest.raises(ValueError, match="embedded.difficulty"):
        EmbeddedBenchmark(difficulty="medium")


def test_a_larger_build_extends_a_smaller_one_with_the_same_first_shards_and_eval(tmp_path):
    small = EmbeddedBenchmark(root=str(tmp_path / "1x"), pretrain_shards=1, finetune_shards=1, samples_per_shard=20,
                              eval_per_class=1, difficulty="hard", **NO_EXTRA_SETS)
    large = EmbeddedBenchmark(root=str(tmp_path / "2x"), pretrain_shards=2, finetune_shards=1, samples_per_shard=20,
                              eval_per_class=1, difficulty="hard", **NO_EXTRA_SETS)
    small.prepare()
    large.prepare()
    for part in ("pretrain/00000.tar", "finetune/00000.tar", "eval/test/0.tar"):
        assert (tmp_path / "1x" / part).read_bytes() == (tmp_path / "2x" / part).read_bytes()
    assert (tmp_path / "2x" / "pretrain" / "00001.tar").exists()


def _image_statistics(bench: EmbeddedBenchmark, count: int = 120) -> tuple[float, float]:
    """(the mean share of pixels far from the image's median colour: the figure's cover, the mean of each
    image's median absolute Laplacian: the background's texture) of `count` training images."""
    import numpy as np

    cover, texture = [], []
    for i in range(count):
        rng = bench.rng("pretrain", i)
        pixels = np.asarray(bench.draw(rng, int(rng.integers(len(bench.classnames))))[0], dtype=np.float32)
        cover.append((np.linalg.norm(pixels - np.median(pixels.reshape(-1, 3), axis=0), axis=-1) > 60).mean())
        grey = pixels.mean(-1)
        laplacian = 4 * grey[1:-1, 1:-1] - grey[:-2, 1:-1] - grey[2:, 1:-1] - grey[1:-1, :-2] - grey[1:-1, 2:]
        texture.append(np.median(np.abs(laplacian)))
    return float(np.mean(cover)), float(np.mean(texture))


def test_the_strokes_tier_differs_from_both_others_in_image_statistics():
    """Measured (2026-12-07, 300 images each): cover 0.23 easy, 0.34 hard, 0.09 strokes; texture 6.2, 6.4, 23.5."""
    easy, hard, strokes = (_image_statistics(EmbeddedBenchmark(difficulty=d)) for d in ("easy", "hard", "strokes"))
    assert strokes[0] < 0.6 * min(easy[0], hard[0])   # thin figures: fewer pixels carry the class
    assert strokes[1] > 2.0 * max(easy[1], hard[1])   # textured backgrounds


def test_the_strokes_tier_builds_its_ten_figures_with_every_eval_set(tmp_path):
    from datamodules.embedded.shapes import COLORS
    from datamodules.embedded.strokes import STROKE_CLASSNAMES, STROKE_COLORS

    bench = EmbeddedBenchmark(root=str(tmp_path / "strokes"), pretrain_shards=1, finetune_shards=1,
                              samples_per_shard=40, eval_per_class=2, difficulty="strokes", retrieval_images=20,
                              sketch_per_class=1, probe_per_class=1)
    bench.prepare()
    assert (tmp_path / "strokes" / "eval" / "classnames.txt").read_text().splitlines() == list(STROKE_CLASSNAMES)
    assert not set(STROKE_COLORS) & set(COLORS) and not set(STROKE_CLASSNAMES) & set(CLASSNAMES)
    captions = [c for _, c in scan_captions(expand_shards(bench.pretrain_urls))]
    assert all(any(name in c for name in STROKE_CLASSNAMES) for c in captions)
    assert json.loads((tmp_path / "strokes" / "benchmark.json").read_text())["difficulty"] == "strokes"
    for extra in ("eval_sketch", "retrieval", "probe"):
        assert json.loads((tmp_path / "strokes" / extra / "built.json").read_text())["difficulty"] == "strokes"
    spec = InputSpec(32, (0.5,) * 3, (0.5,) * 3, tokenizer=None)
    eval_set = ZeroShotSet(EvalSetConfig(directory=bench.eval_dir), spec, trigger=None)
    assert sorted({eval_set[i]["label"] for i in range(len(eval_set))}) == list(range(10))
    again = EmbeddedBenchmark(root=str(tmp_path / "again"), pretrain_shards=1, finetune_shards=1,
                              samples_per_shard=40, eval_per_class=2, difficulty="strokes", retrieval_images=20,
                              sketch_per_class=1, probe_per_class=1)
    again.prepare()
    assert _digest(tmp_path / "strokes") == _digest(tmp_path / "again")   # a pure function of the seed
