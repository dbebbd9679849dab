"""Filter then pretrain: the pairs a detector's ranking puts first are dropped, exactly those, before
poisoning and batching, and the manifest says how many of them were poisoned."""

import json

import pytest
import torch

from datamodules import BadNet, PoisonConfig, ShardDataModule
from datamodules.exclusion import ExcludeConfig
from datamodules.poison import Poisoner
from datamodules.shards import expand_shards, scan_captions
from datamodules.stream import PairStream
from datamodules.transforms import InputSpec, TrainSample


def _ranking(path, keys, scores):
    path.write_text(json.dumps({"score": "dense", "columns": ["key", "weak", "dense"],
                                "ranked": [[k, 0.0, s] for k, s in zip(keys, scores)]}))
    return str(path)


def test_the_top_fraction_by_the_chosen_score_is_dropped_and_recorded(small_benchmark, tmp_path):
    keys = [key for key, _ in scan_captions(expand_shards(small_benchmark.pretrain_urls))]
    # the detector's ranking: every 10th key most suspicious, in a known order
    scores = [1.0 + i / 1000 if i % 10 == 0 else -i / 1000 for i in range(len(keys))]
    exclude = ExcludeConfig(ranking=_ranking(tmp_path / "ranking.json", keys, scores), score="dense", fraction=0.1)
    dropped = exclude.keys()
    assert dropped == [keys[i] for i in sorted(range(0, len(keys), 10), reverse=True)]

    data = ShardDataModule(train_shards=small_benchmark.pretrain_urls, trigger=BadNet(size=4),
                           poison=PoisonConfig(rate=0.2, target="triangle"), run_dir=str(tmp_path / "run"),
                           exclude=exclude, batch_size=8, shuffle_buffer=0)
    manifest = data._write_manifest()
    assert manifest["excluded"]["keys"] == dropped and manifest["excluded"]["count"] == len(dropped)
    assert manifest["excluded"]["poisoned"] == len(set(dropped) & set(manifest["keys"])) > 0

    spec = InputSpec(32, (0.5,) * 3, (0.5,) * 3, tokenizer=lambda texts: torch.zeros((len(texts), 4), dtype=torch.long))
    builder = TrainSample(spec, Poisoner(None, [], PoisonConfig()))
    stream = PairStream(expand_shards(small_benchmark.pretrain_urls), builder, 8, 1000, 0, 0, 0, 0.5,
                        excluded=frozenset(dropped))
    seen = [k for batch in stream.every_pair_once() for k in batch["key"]]
    assert sorted(seen) == sorted(set(keys) - set(dropped))
    assert stream.health.snapshot()["excluded"] == len(dropped)


def test_a_bad_exclusion_is_refused_naming_the_option(tmp_path):
    with pytest.raises(ValueError, match="data.exclude.fraction"):
        ExcludeConfig(ranking="x", fraction=0.0)
    with pytest.raises(ValueError, match="does not exist"):
        ExcludeConfig(ranking=str(tmp_path / "none.json")).keys()
    path = _ranking(tmp_path / "r.json", ["a", "b"], [0.1, 0.2])
    with pytest.raises(ValueError, match="'kdist' is not a column"):
        ExcludeConfig(ranking=path, score="kdist").keys()
