"""Shared fixtures (a small embedded benchmark built once per test session, a small poisoned run), and the
tiers: a test's folder is its tier (tests/README.md). tests/unit/ is the fast tier; everything under
tests/integration/ and tests/distributed/ fits a model and is marked `slow`, so `-m "not slow"` and
`-m slow` select the tiers as the folders do."""

from __future__ import annotations

import gc
from pathlib import Path

import pytest

from datamodules.embedded.benchmark import EmbeddedBenchmark

TESTS = Path(__file__).resolve().parent
SLOW_FOLDERS = ("integration", "distributed")


@pytest.hookimpl(tryfirst=True)  # before `-m` selects by marker
def pytest_collection_modifyitems(config, items):
    for item in items:
        folder = Path(str(item.fspath)).resolve().relative_to(TESTS).parts[0]
        if folder in SLOW_FOLDERS:
            item.add_marker(pytest.mark.slow)
        elif folder != "unit":
            raise pytest.UsageError(f"{item.nodeid}: a test lives in tests/unit/, tests/integration/ or "
                                    "tests/distributed/ (tests/README.md)")
        elif item.get_closest_marker("slow"):
            raise pytest.UsageError(f"{item.nodeid} is marked slow: a test that fits a model belongs in "
                                    "tests/integration/ (or tests/distributed/ for several processes)")



def _resident_mb() -> int:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) // 1024 for line in status if line.startswith("VmRSS:"))


@pytest.fixture(autouse=True)
def release_models():
    """A test that grew this process by more than 100 MB (models: a CLI's trainer and module refer to each
    other, so they wait for the cycle collector, which big tensors do not prompt) is collected after it.
    Without it the fast tier's eight ViT-B/RN50 configs held 3.3 GB at once (benchmarks/suite_memory.py)."""
    before = _resident_mb()
    yield
    if _resident_mb() - before > 100:
        gc.collect()


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


def learning_benchmark_at(root) -> EmbeddedBenchmark:
    """3,000 pretraining pairs: enough for a strongly poisoned model to learn its backdoor in ~1 minute."""
    bench = EmbeddedBenchmark(root=str(root), pretrain_shards=6, finetune_shards=1, samples_per_shard=500,
                              eval_per_class=30)
    bench.prepare()
    return bench


@pytest.fixture(scope="session")
def learning_benchmark(tmp_path_factory) -> EmbeddedBenchmark:
    return learning_benchmark_at(tmp_path_factory.mktemp("learn") / "embedded")


def train_small(bench: EmbeddedBenchmark, run_dir, rate: float, *extra: str) -> dict:
    """The strongly poisoned small recipe, pinned here so that the shipped recipe can change: the shipped
    BadNet (fixed 8x8 patch at a random place, target triangle, poisoned captions drawn from the
    training captions naming it), 8 epochs, batch 64, one torch thread, deterministic algorithms;
    `extra` overrides. Its outcome over seeds and thread counts: benchmarks/learning_spread.py."""
    import json

    from lightning_app.cli import BackdoorCLI

    BackdoorCLI(args=[
        "fit", "--config", "configs/embedded/badnet.yaml",
        "--trainer.default_root_dir", str(run_dir),
        "--trainer.max_epochs", "8",
        "--trainer.deterministic", "true",
        "--torch_threads", "1",
        "--data.init_args.trigger.init_args.size", "8",
        "--data.init_args.trigger.init_args.location", "random",
        "--trainer.enable_progress_bar", "false",
        "--data.init_args.embedded", "null",
        "--data.init_args.train_shards", bench.pretrain_urls,
        "--data.init_args.eval.directory", bench.eval_dir,
        "--data.init_args.batch_size", "64",
        "--data.init_args.poison.rate", str(rate),
        "--data.init_args.poison.target", "triangle",
        "--data.init_args.poison.captions", "dataset",
        "--model.init_args.optimizer.warmup_steps", "20",
        *extra,
    ])
    return json.loads((run_dir / "summary.json").read_text())


@pytest.fixture(scope="session")
def small_poisoned_run(learning_benchmark, tmp_path_factory):
    """(run directory, summary) of a model pretrained with 30% of pairs poisoned."""
    run_dir = tmp_path_factory.mktemp("poisoned") / "run"
    return run_dir, train_small(learning_benchmark, run_dir, rate=0.3)


@pytest.fixture(scope="session")
def small_clean_run(learning_benchmark, tmp_path_factory):
    """Summary of the clean control of `small_poisoned_run`: the same recipe with nothing poisoned."""
    return train_small(learning_benchmark, tmp_path_factory.mktemp("clean") / "run", rate=0.0)
