"""The embedded benchmark's evaluation sets beyond its zero-shot set, each built on first use beside the
benchmark (`EmbeddedBenchmark.prepare`) and rebuilt when its settings change (its `built.json`):

    eval_sketch/   the tier's classes as line drawings: a domain shift (`EmbeddedBenchmark.draw_sketch`), scored
                   with the zero-shot set's classnames and templates
    retrieval/     held-out images of the training distribution, each with several paraphrased captions
                   naming all its attributes, no two images alike in them: image-text retrieval and the
                   retrieval ASR
    probe/         a labelled train split in the zero-shot set's classes, for the linear probe

Each draws from a random stream of its own, so none overlaps the training pairs or the zero-shot set.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from datamodules.embedded.captions import ZEROSHOT_TEMPLATES, retrieval_captions
from datamodules.embedded.writers import write_clip_benchmark, write_clip_benchmark_retrieval

MAX_REDRAWS = 50
"""Draws of a retrieval image until its attributes are new to the set (then it keeps the last)."""
EXTRA_SETS = ("retrieval_images", "captions_per_image", "sketch_per_class", "probe_per_class")
"""The benchmark's settings that only these sets depend on (left out of its own `benchmark.json`)."""


def _build(directory: Path, spec: dict, write) -> None:
    marker = directory / "built.json"
    if marker.exists() and json.loads(marker.read_text()) == spec:
        return
    partial = directory.with_name(directory.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    write(partial)
    (partial / "built.json").write_text(json.dumps(spec, indent=1))
    shutil.rmtree(directory, ignore_errors=True)
    partial.rename(directory)


def build_extra_sets(bench) -> None:
    """Build whichever of `eval_sketch/`, `retrieval/` and `probe/` is missing or was built otherwise."""
    base = {"seed": bench.seed, "image_size": bench.image_size, "difficulty": bench.difficulty}
    classes = bench.classnames

    def sketches(out: Path) -> None:
        def samples():
            for i in range(bench.sketch_per_class * len(classes)):
                label = i % len(classes)
                yield bench.draw_sketch(bench.rng("eval_sketch", i), label), label
        write_clip_benchmark(out, samples(), classes, ZEROSHOT_TEMPLATES)

    def retrieval(out: Path) -> None:
        def samples():
            seen = set()
            for i in range(bench.retrieval_images):
                rng = bench.rng("retrieval", i)
                for _ in range(MAX_REDRAWS):  # an image whose attributes an earlier one has is drawn again
                    image, scene = bench.draw(rng, i % len(classes))
                    described = (scene.shape, scene.color, scene.size, scene.background, scene.position)
                    if described not in seen:
                        break
                seen.add(described)
                yield image, retrieval_captions(scene, bench.captions_per_image)
        write_clip_benchmark_retrieval(out, samples())

    def probe(out: Path) -> None:
        def samples():
            for i in range(bench.probe_per_class * len(classes)):
                label = i % len(classes)
                yield bench.draw(bench.rng("probe", i), label)[0], label
        write_clip_benchmark(out, samples(), classes, ZEROSHOT_TEMPLATES, split="train")

    root = Path(bench.root)
    _build(root / "eval_sketch", {**base, "per_class": bench.sketch_per_class}, sketches)
    _build(root / "retrieval", {**base, "images": bench.retrieval_images, "captions": bench.captions_per_image},
           retrieval)
    _build(root / "probe", {**base, "per_class": bench.probe_per_class}, probe)
