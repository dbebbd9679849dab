"""Shared fixtures: a small embedded benchmark built once per test session."""

from __future__ import annotations

import pytest

from datamodules.embedded.benchmark import EmbeddedBenchmark


@pytest.fixture(scope="session")
def small_benchmark(tmp_path_factory) -> EmbeddedBenchmark:
    bench = EmbeddedBenchmark(
        root=str(tmp_path_factory.mktemp("bench") / "embedded"),
        pretrain_shards=4,
        finetune_shards=1,
        samples_per_shard=200,
        eval_per_class=20,
    )
    bench.prepare()
    return bench
