"""Several evaluation sets per run (datamodules/eval_config.py, eval_sets.py, retrieval.py): the embedded
benchmark's retrieval, sketch and probe sets in clip_benchmark's layouts, read back; a retrieval set's
batches pair each caption with its image's place; the configured list checked; one loader per set."""

from __future__ import annotations

import json
from pathlib import Path

import open_clip
import pytest

from datamodules import ShardDataModule
from datamodules.embedded.benchmark import EmbeddedBenchmark
from datamodules.eval_config import EvalSetConfig, eval_set_list
from datamodules.eval_sets import build_eval_set
from datamodules.retrieval import RetrievalSet
from datamodules.transforms import InputSpec, ModelNeeds
from datamodules.zeroshot import ZeroShotSet


def _spec():
    return InputSpec(32, (0.5,) * 3, (0.5,) * 3, tokenizer=lambda texts: __import__("torch").zeros(len(texts), 4))


def test_the_embedded_extra_sets_read_back_in_clip_benchmarks_layouts(small_benchmark):
    retrieval = build_eval_set(EvalSetConfig(directory=small_benchmark.retrieval_dir), _spec(), None)
    assert isinstance(retrieval, RetrievalSet) and len(retrieval) == small_benchmark.retrieval_images
    item = retrieval[3]
    assert len(item["captions"]) == small_benchmark.captions_per_image and item["position"] == 3
    captions = [caption for i in range(len(retrieval)) for caption in retrieval[i]["captions"]]
    # no two images share a caption (a tie in image-to-text retrieval), not even as the tiny models' 16-token
    # context cuts them (14 tokens between its start and end tokens)
    assert len(set(captions)) == len(captions)
    encode = open_clip.get_tokenizer("RN50").encode
    assert max(len(encode(caption)) for caption in captions) <= 14
    sketch = build_eval_set(EvalSetConfig(directory=small_benchmark.sketch_dir), _spec(), None)
    assert isinstance(sketch, ZeroShotSet) and len(sketch) == 10 * small_benchmark.sketch_per_class
    assert sketch.classnames == list(small_benchmark.classnames)
    probe = ZeroShotSet(EvalSetConfig(directory=small_benchmark.probe_dir, split="train"), _spec(), None)
    assert sorted({probe[i]["label"] for i in range(len(probe))}) == list(range(10))


def test_a_retrieval_batch_pairs_every_caption_with_its_images_place_and_ranks_split_the_set(small_benchmark):
    halves = [RetrievalSet(EvalSetConfig(directory=small_benchmark.retrieval_dir, max_samples=9), _spec(), None,
                           rank, 2) for rank in (0, 1)]
    assert sorted(p for half in halves for p in half.positions) == list(range(9))
    batch = halves[1].collate([halves[1][i] for i in range(len(halves[1]))])
    assert batch["position"].tolist() == [1, 3, 5, 7]
    per_image = small_benchmark.captions_per_image
    assert batch["text_position"].tolist() == [p for p in (1, 3, 5, 7) for _ in range(per_image)]
    assert len(batch["captions"]) == len(batch["text"]) == 4 * per_image


def test_a_text_trigger_gives_each_retrieval_caption_its_phrase_and_no_image_a_triggered_view(small_benchmark):
    from datamodules.poison import TextPhrase

    data = RetrievalSet(EvalSetConfig(directory=small_benchmark.retrieval_dir, max_samples=3), _spec(),
                        TextPhrase(phrase="zq", position="end"))
    items = [data[i] for i in range(3)]
    assert not any(name.startswith("image_triggered") for name in items[0])
    batch = data.collate(items)
    assert len(batch["text_triggered"]) == len(batch["captions"])


def test_extra_sets_are_built_beside_an_existing_benchmark_without_changing_its_record(tmp_path):
    bench = EmbeddedBenchmark(root=str(tmp_path / "b"), pretrain_shards=1, finetune_shards=1, samples_per_shard=20,
                              eval_per_class=2, retrieval_images=6, sketch_per_class=1, probe_per_class=1)
    bench.prepare()
    record = json.loads((tmp_path / "b" / "benchmark.json").read_text())
    assert not set(record) & {"retrieval_images", "sketch_per_class", "probe_per_class", "captions_per_image"}
    (tmp_path / "b" / "retrieval" / "built.json").unlink()  # as a benchmark built before the set existed
    bench.retrieval_images = 8
    bench.prepare()
    assert len(RetrievalSet(EvalSetConfig(directory=bench.retrieval_dir), _spec(), None)) == 8


def test_the_configured_sets_are_checked_and_named(tmp_path):
    (tmp_path / "coco").mkdir()
    (tmp_path / "coco" / "dataset_type.txt").write_text("retrieval\n")
    assert EvalSetConfig(directory=str(tmp_path / "coco")).resolved_kind() == "retrieval"
    assert EvalSetConfig(directory=str(tmp_path / "in1k/")).set_name == "in1k"
    assert [c.set_name for c in eval_set_list(EvalSetConfig(directory="a"))] == ["a"]
    with pytest.raises(ValueError, match=r"set name\(s\) \['x'\] appear more than once"):
        eval_set_list([EvalSetConfig(directory="a/x"), EvalSetConfig(directory="b/x")])
    with pytest.raises(ValueError, match="empty list"):
        eval_set_list([])
    with pytest.raises(ValueError, match="name '../x'"):
        EvalSetConfig(name="../x")


def test_a_set_may_take_another_sets_classnames(small_benchmark, tmp_path):
    names = tmp_path / "names.txt"
    names.write_text("\n".join(f"class {i}" for i in range(10)) + "\n")
    sketch = ZeroShotSet(EvalSetConfig(directory=small_benchmark.sketch_dir, classnames=str(names)), _spec(), None)
    assert sketch.classnames[0] == "class 0"


def test_each_set_gets_its_loader_the_first_is_the_headline(small_benchmark, tmp_path):
    data = ShardDataModule(train_shards=small_benchmark.pretrain_urls, run_dir=str(tmp_path), eval=[
        EvalSetConfig(directory=small_benchmark.eval_dir), EvalSetConfig(directory=small_benchmark.retrieval_dir)])
    data.connect(ModelNeeds(_spec()))
    data.setup("validate")
    loaders = data.val_dataloader()
    assert [type(s).__name__ for s in data.eval_sets] == ["ZeroShotSet", "RetrievalSet"]
    assert data.eval_set is data.eval_sets[0] and len(loaders) == 2
    batch = next(iter(loaders[1]))
    assert set(batch) >= {"image", "captions", "text", "text_position", "position"}
    assert Path(small_benchmark.eval_dir).name == data.eval_set.name == "eval"
