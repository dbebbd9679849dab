"""The embedded benchmark: synthetic image-caption shards and a zero-shot eval set, made from a seed.

Run `python -m datamodules.embedded.benchmark data/embedded` to build it by hand; DataModules build it
on first use from `prepare_data()` and reuse it after (a `benchmark.json` records what was built).

Layout under `root`:
    pretrain/NNNNN.tar   image-caption pairs for (poisoned) pretraining      (img2dataset)
    finetune/NNNNN.tar   a disjoint clean split for fine-tuning defenses      (img2dataset)
    eval/                zero-shot classification over the tier's classes     (clip_benchmark)
    eval_sketch/         the same classes drawn as line drawings: a domain shift, ImageNet-Sketch's part
    retrieval/           held-out images with several captions each: image-text retrieval (clip_benchmark)
    probe/               a labelled train split for the linear probe (tested on eval/)
The last three are built beside a benchmark that lacks them (each records its settings in `built.json`),
so a benchmark built before they existed stays valid.

Three tiers (`difficulty`): `easy`, the default, one of 10 shapes per image, on which the tiny model's
clean CA saturates (0.99); `hard`, 80 colour-shape classes ("orange star") among smaller distractor
objects, with captions that sometimes name a wrong class or a distractor too, so that clean CA sits
below saturation and pretraining objectives can differ in it (`python -m datamodules.embedded.benchmark
data/embedded_hard hard`); `strokes`, 10 thin line figures ("spiral") on textures in other colours and
sizes (datamodules/embedded/strokes.py), a tier no recipe was chosen on.
"""

from __future__ import annotations

import fcntl
import json
import logging
import shutil
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from datamodules.embedded.captions import ZEROSHOT_TEMPLATES, caption_for, composed_caption_for
from datamodules.embedded.extra_sets import EXTRA_SETS, build_extra_sets
from datamodules.embedded.shapes import (
    CLASSNAMES,
    COMPOSED_CLASSNAMES,
    Scene,
    draw_composed_scene,
    draw_scene,
    draw_sketch,
)
from datamodules.embedded.strokes import STROKE_CLASSNAMES, draw_stroke_scene, draw_stroke_sketch
from datamodules.embedded.writers import write_clip_benchmark, write_img2dataset_shard

log = logging.getLogger(__name__)

_SPLIT_STREAMS = {"pretrain": 1, "finetune": 2, "eval": 3, "retrieval": 4, "eval_sketch": 5, "probe": 6}
DIFFICULTIES = ("easy", "hard", "strokes")


@dataclass
class EmbeddedBenchmark:
    """A synthetic CLIP benchmark small enough to train on a CPU in minutes."""

    root: str = "data/embedded"
    """Directory the benchmark is written to (and reused from)."""
    seed: int = 0
    """Seed of every image, caption and split."""
    pretrain_shards: int = 20
    """Number of pretraining shards."""
    finetune_shards: int = 10
    """Number of clean fine-tuning shards (disjoint from pretraining)."""
    samples_per_shard: int = 1000
    """Image-caption pairs per shard."""
    eval_per_class: int = 200
    """Zero-shot eval images per class."""
    image_size: int = 32
    """Side of the square images, in pixels."""
    difficulty: str = "easy"
    """`easy`: 10 shapes, one per image. `hard`: 80 colour-shape classes among distractors, noisy captions.
    `strokes`: 10 line figures on textures (other image statistics than both)."""
    retrieval_images: int = 1000
    """Images of the retrieval set (`retrieval/`), each with `captions_per_image` captions."""
    captions_per_image: int = 5
    """Captions per retrieval image (MSCOCO has 5)."""
    sketch_per_class: int = 50
    """Line-drawing images per class of the domain-shift set (`eval_sketch/`)."""
    probe_per_class: int = 50
    """Labelled images per class of the linear probe's train split (`probe/train/`)."""

    def __post_init__(self) -> None:
        if self.difficulty not in DIFFICULTIES:
            raise ValueError(f"embedded.difficulty is {self.difficulty!r}; expected one of {DIFFICULTIES}")

    @property
    def classnames(self) -> tuple[str, ...]:
        return {"hard": COMPOSED_CLASSNAMES, "strokes": STROKE_CLASSNAMES}.get(self.difficulty, CLASSNAMES)

    @property
    def pretrain_urls(self) -> str:
        return f"{self.root}/pretrain/{{00000..{self.pretrain_shards - 1:05d}}}.tar"

    @property
    def finetune_urls(self) -> str:
        return f"{self.root}/finetune/{{00000..{self.finetune_shards - 1:05d}}}.tar"

    @property
    def eval_dir(self) -> str:
        return f"{self.root}/eval"

    @property
    def sketch_dir(self) -> str:
        return f"{self.root}/eval_sketch"

    @property
    def retrieval_dir(self) -> str:
        return f"{self.root}/retrieval"

    @property
    def probe_dir(self) -> str:
        return f"{self.root}/probe"

    def _spec(self) -> dict:
        spec = asdict(self)
        spec.pop("root")
        for name in EXTRA_SETS:  # recorded by each extra set's own built.json
            spec.pop(name)
        if spec["difficulty"] == "easy":  # easy benchmarks built before there were tiers stay valid
            spec.pop("difficulty")
        return spec

    def is_built(self) -> bool:
        marker = Path(self.root) / "benchmark.json"
        return marker.exists() and json.loads(marker.read_text()) == self._spec()

    def prepare(self) -> None:
        """Build the benchmark unless an identical one is already at `root`.

        Under an exclusive lock (`<root>.lock`): fits that start together on a fresh checkout (a study's
        `--jobs 2`, or every node's `prepare_data` on a shared filesystem) would otherwise write the same
        `.partial` directory at once; the first builds it, the others wait and find it built."""
        root = Path(self.root)
        root.parent.mkdir(parents=True, exist_ok=True)
        with open(root.with_name(root.name + ".lock"), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            self._prepare()

    def _prepare(self) -> None:
        if self.is_built():
            build_extra_sets(self)
            return
        root = Path(self.root)
        if (root / "benchmark.json").exists():
            raise ValueError(
                f"{root} holds an embedded benchmark built with other settings "
                f"({(root / 'benchmark.json').read_text().strip()}); remove it or choose another `root`."
            )
        start = time.perf_counter()
        tmp = root.with_name(root.name + ".partial")
        shutil.rmtree(tmp, ignore_errors=True)
        self._write_pairs(tmp / "pretrain", "pretrain", self.pretrain_shards)
        self._write_pairs(tmp / "finetune", "finetune", self.finetune_shards)
        self._write_eval(tmp / "eval")
        (tmp / "benchmark.json").write_text(json.dumps(self._spec(), indent=1))
        root.parent.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(root, ignore_errors=True)
        tmp.rename(root)
        build_extra_sets(self)
        log.info("embedded benchmark written to %s in %.1fs", root, time.perf_counter() - start)

    def rng(self, split: str, index: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, _SPLIT_STREAMS[split], index])

    def _write_pairs(self, out_dir: Path, split: str, num_shards: int) -> None:
        for shard in range(num_shards):
            pairs = []
            for i in range(self.samples_per_shard):
                rng = self.rng(split, shard * self.samples_per_shard + i)
                image, scene = self.draw(rng, int(rng.integers(len(self.classnames))))
                caption = composed_caption_for(scene, rng) if self.difficulty == "hard" else caption_for(scene, rng)
                pairs.append((image, caption))
            write_img2dataset_shard(out_dir, shard, pairs)

    def draw(self, rng: np.random.Generator, label: int) -> tuple[Image.Image, Scene]:
        if self.difficulty == "hard":
            color, shape = self.classnames[label].split(" ", 1)
            return draw_composed_scene(rng, color, shape, self.image_size)
        if self.difficulty == "strokes":
            return draw_stroke_scene(rng, self.classnames[label], self.image_size)
        return draw_scene(rng, self.classnames[label], self.image_size)

    def draw_sketch(self, rng: np.random.Generator, label: int) -> Image.Image:
        """Class `label` as the domain-shift set (`eval_sketch/`) draws it: a line drawing on paper."""
        if self.difficulty == "hard":
            color, shape = self.classnames[label].split(" ", 1)
            return draw_sketch(rng, shape, self.image_size, color)
        if self.difficulty == "strokes":
            return draw_stroke_sketch(rng, self.classnames[label], self.image_size)
        return draw_sketch(rng, self.classnames[label], self.image_size)

    def _write_eval(self, out_dir: Path) -> None:
        def samples():
            for i in range(self.eval_per_class * len(self.classnames)):
                label = i % len(self.classnames)
                yield self.draw(self.rng("eval", i), label)[0], label

        write_clip_benchmark(out_dir, samples(), self.classnames, ZEROSHOT_TEMPLATES)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    EmbeddedBenchmark(root=sys.argv[1] if len(sys.argv) > 1 else "data/embedded",
                      difficulty=sys.argv[2] if len(sys.argv) > 2 else "easy").prepare()
