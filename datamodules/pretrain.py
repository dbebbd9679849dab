"""DataModule for (poisoned) CLIP training on img2dataset shards, with a zero-shot eval set.

Used from configs as `data: {class_path: datamodules.ShardDataModule, init_args: {...}}`; point it at
your own data with `--data.train_shards 'PATH/{00000..00331}.tar' --data.eval.directory PATH`.

On `prepare_data` (once per node) it builds the embedded benchmark if configured, selects the poisoned
keys and writes the run's poison manifest (`RUN/poison/manifest.json`) and trigger artifacts
(`RUN/trigger/`). Every rank then streams with the same manifest and trigger.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import multiprocessing
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Optional, Union

from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader, DistributedSampler

from datamodules.embedded.benchmark import EmbeddedBenchmark
from datamodules.exclusion import ExcludeConfig
from datamodules.poison import (
    MultiTrigger,
    PoisonConfig,
    Poisoner,
    Trigger,
    load_trigger,
    select_poison_keys,
    target_caption_pool,
)
from datamodules.poison.poisoner import key_target, poison_targets
from datamodules.poison.selection import names_target
from datamodules.run_dir import RunDir, write_once
from datamodules.shards import check_shards_exist, count_samples, expand_shards, scan_captions, shard_sizes
from datamodules.stream import COUNTERS, PairStream
from datamodules.text_augment import WORDNET_MISSING, wordnet_available
from datamodules.transforms import MAX_IMAGE_PIXELS, InputSpec, ModelNeeds, TrainSample
from datamodules.worker_watch import ExitWithProcess
from datamodules.zeroshot import ZeroShotEvalConfig, ZeroShotSet

log = logging.getLogger(__name__)
FORKSERVER_PRELOAD = ["torch", "webdataset", "PIL.Image", "datamodules.pretrain"]
"""Modules the forkserver imports before forking DataLoader workers."""


class _EpochSyncedLoader(DataLoader):
    """The training loader. Hands the epoch to the stream before each pass (Lightning only does so for
    samplers), and resumes exactly from any checkpoint: `resume_from` is the position a checkpoint
    recorded (`ShardDataModule.load_state_dict`), consumed by the first pass after it.

    The position goes through the DataModule's state, which Lightning restores from every checkpoint,
    and not only through the loader's own `state_dict`, which it restores only from a mid-epoch one:
    from an epoch-end checkpoint the loader's first pass is created before Lightning advances its epoch
    counter (`FitLoop.setup_data`), so the trainer's epoch alone would replay the finished epoch.
    """

    def __init__(self, dataset: PairStream, position_source, consumed: dict[str, int], resume_from, **kwargs):
        super().__init__(dataset, **kwargs)
        self._position_source = position_source
        self._resume_from = resume_from
        self.consumed = consumed
        """Health counts of the batches training has taken from this loader (all epochs, over resumes)."""

    def _start(self) -> tuple[int, int]:
        """(epoch, batches of it already trained on) where this pass starts; a finished epoch is the
        start of the next one."""
        resume = self._resume_from()
        epoch, batches = (resume["epoch"], resume["batches"]) if resume is not None else self._position_source()
        return (epoch + 1, 0) if batches >= len(self) else (epoch, batches)

    def __iter__(self):
        epoch, skip = self._start()
        self.dataset.set_epoch(epoch)
        self.dataset.skip_batches = skip
        try:
            batches = super().__iter__()  # workers copy the dataset (and skip_batches) as they start
        finally:
            self.dataset.skip_batches = 0
        return self._counted(batches)

    def _counted(self, batches):
        for batch in batches:
            for name, count in batch.pop("health", {}).items():
                self.consumed[name] = self.consumed.get(name, 0) + int(count)
            yield batch

    def state_dict(self) -> dict:
        """What makes the loader resumable to Lightning (no "not resumable" warning on a mid-epoch resume);
        the position itself is restored through the DataModule's state."""
        epoch, batches = self._position_source()
        return {"epoch": epoch, "batches": batches}

    def load_state_dict(self, state: dict) -> None:
        pass


class _RankLocalSampler(DistributedSampler):
    """Sequential order over a dataset already split by rank. Being a DistributedSampler, Lightning
    does not wrap it in its own, which would pad the split with duplicates and skew CA/ASR."""

    def __init__(self, length: int):  # noqa: D107 - deliberately does not call DistributedSampler.__init__
        self.length = length

    def __iter__(self):
        return iter(range(self.length))

    def __len__(self) -> int:
        return self.length

    def set_epoch(self, epoch: int) -> None:
        pass


@dataclass(frozen=True)
class DataRecord:
    """What a run's data was, for its summary.json (`ShardDataModule.record`)."""

    attack: Optional[dict] = None
    """The trigger's name and parameters (None: no trigger, no ASR)."""
    target: Optional[str] = None
    """The class ASR counts toward."""
    poison_count: Optional[int] = None
    """Training pairs poisoned."""
    poisoned_captions: Optional[str] = None
    """The poisoned pairs' captions: "kept" (label-consistent), "templates" or "dataset" (None: no poisoning)."""
    excluded: Optional[dict] = None
    """What a data-level defense dropped (count, and poisoned among them)."""
    data_health: dict[str, int] = field(default_factory=dict)
    """This rank's counts of the training data consumed (good, skipped, lost)."""


class ShardDataModule(LightningDataModule):
    def __init__(
        self,
        train_shards: Union[str, list[str]] = "data/embedded/pretrain/{00000..00019}.tar",
        eval: ZeroShotEvalConfig = ZeroShotEvalConfig(),
        trigger: Optional[Trigger] = None,
        trigger_dir: Optional[str] = None,
        poison: PoisonConfig = PoisonConfig(),
        embedded: Optional[EmbeddedBenchmark] = None,
        batch_size: int = 128,
        num_workers: int = 1,
        num_samples: Optional[int] = None,
        shuffle_buffer: int = 2000,
        seed: int = 0,
        max_corrupt_fraction: float = 0.01,
        run_dir: Optional[str] = None,
        exclude: Optional[ExcludeConfig] = None,
        text_synonyms: Literal["wordnet", "none"] = "wordnet",
        worker_start_method: Literal["forkserver", "spawn", "fork"] = "forkserver",
        max_image_pixels: int = MAX_IMAGE_PIXELS,
    ):
        """
        Args:
            train_shards: img2dataset shards: a path, brace pattern, `::`-joined patterns, `pipe:` command, or list.
            eval: The zero-shot eval set (clip_benchmark layout) for CA and ASR.
            trigger: The backdoor trigger; used to poison training pairs and to measure ASR. None: no ASR.
            trigger_dir: Instead of `trigger`, the `trigger/` directory of the run that poisoned the model
                (defenses measure ASR with the attack that made the model).
            poison: How many and which pairs are poisoned, and the target class.
            embedded: Build the embedded synthetic benchmark here on first use (None for real data).
            batch_size: Training batch size per rank.
            num_workers: DataLoader worker processes per rank.
            num_samples: Pairs in the shards; None reads img2dataset's `*_stats.json` files.
            shuffle_buffer: Sample shuffle buffer per worker (0: no shuffling of samples or shards).
            seed: Seed of the shard order, sample shuffle and augmentations (per epoch).
            max_corrupt_fraction: Stop the run when more than this fraction of samples are corrupt.
            run_dir: Where the manifest and trigger are written; default: the trainer's default_root_dir.
            exclude: Drop the pairs a detector's ranking puts first (filter then pretrain; datamodules.exclusion).
            text_synonyms: Where EDA's synonyms come from, for modules that train on augmented views (CleanCLIP,
                ABD, MMCL+SSL, SafeCLIP, RoCLIP's cross_aug): "wordnet" (CleanCLIP's recipe; the fit stops
                before training when WordNet is missing) or "none" (EDA without synonym replacement).
            worker_start_method: How DataLoader workers start. "forkserver" (default): from a clean
                single-threaded server process. "fork" copies the training process, whose gloo, logger
                and progress threads may hold a lock at that instant; the child then waits on it forever
                (a hung rank and an orphaned worker, seen under CPU load: benchmarks/worker_hang_stress.py).
            max_image_pixels: A training image with more pixels is skipped and counted as a bad image, judged
                from its header before it is decoded (PIL's own limit lets a 13000² image through).
        """
        super().__init__()
        if batch_size < 1:
            raise ValueError(f"data.batch_size must be ≥ 1, got {batch_size}")
        if not train_shards or (isinstance(train_shards, str) and not train_shards.strip()):
            raise ValueError("data.train_shards is empty: name the training shards (a path, brace pattern or list)")
        if num_workers < 0:
            raise ValueError(f"data.num_workers must be ≥ 0, got {num_workers}")
        if eval.batch_size < 1 or eval.num_workers < 0:
            raise ValueError(f"data.eval.batch_size must be ≥ 1 and data.eval.num_workers ≥ 0, got "
                             f"{eval.batch_size} and {eval.num_workers}")
        if max_image_pixels < 1:
            raise ValueError(f"data.max_image_pixels must be ≥ 1, got {max_image_pixels}")
        if not 0.0 <= max_corrupt_fraction < 1.0:
            raise ValueError(f"data.max_corrupt_fraction must be in [0, 1), got {max_corrupt_fraction}")
        if trigger is not None and trigger_dir is not None:
            raise ValueError("set data.trigger or data.trigger_dir, not both")
        if text_synonyms not in ("wordnet", "none"):
            raise ValueError(f"data.text_synonyms must be 'wordnet' or 'none', got {text_synonyms!r}")
        if poison.enabled and trigger is None and trigger_dir is None:
            raise ValueError("data.poison asks for poisoned pairs but data.trigger is not set")
        self.train_shards = train_shards
        self.eval_config = eval
        self.trigger = trigger
        self.trigger_dir = trigger_dir
        self.poison = poison
        self.embedded = embedded
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.num_samples = num_samples
        self.shuffle_buffer = shuffle_buffer
        self.seed = seed
        self.max_corrupt_fraction = max_corrupt_fraction
        self._run_dir = run_dir
        self.exclude = exclude
        self.text_synonyms = text_synonyms
        self.worker_start_method = worker_start_method
        self.max_image_pixels = max_image_pixels
        self.train_stream: Optional[PairStream] = None
        self._consumed_health: dict[str, int] = {}
        self._resume_position: Optional[dict] = None
        """The training position a checkpoint recorded, until the first training pass after it starts."""
        self.eval_set: Optional[ZeroShotSet] = None
        self.poison_count = 0
        self.excluded: Optional[dict] = None
        self.model_needs: Optional[ModelNeeds] = None
        """What the model takes and asks for (`connect`)."""

    @property
    def run_dir(self) -> Path:
        if self._run_dir is not None:
            return Path(self._run_dir)
        if self.trainer is None:
            raise ValueError("data.run_dir is not set and the DataModule is not attached to a trainer")
        return Path(self.trainer.default_root_dir)

    @property
    def manifest_path(self) -> Path:
        return RunDir(self.run_dir).manifest_path

    @property
    def target(self) -> str:
        return self.poison.target

    def connect(self, needs: ModelNeeds) -> None:
        """What the model takes (its input spec) and asks for (augmented views). `BackdoorCLI` connects the
        model it built; code that builds a datamodule for a model of its own connects it itself."""
        self.model_needs = needs

    def _needs(self) -> ModelNeeds:
        if self.model_needs is None:
            raise ValueError("ShardDataModule is not connected to a model: call data.connect(model.data_needs()) "
                             "(main.py's CLI does it for the model it builds)")
        return self.model_needs

    def _input_spec(self) -> InputSpec:
        return self._needs().input_spec

    def _resolve_trigger(self) -> None:
        if self.trigger is None and self.trigger_dir is not None:
            self.trigger = load_trigger(self.trigger_dir)
            self._adopt_attack_target(RunDir(Path(self.trigger_dir).parent))

    def _adopt_attack_target(self, attack: RunDir) -> None:
        """A defense measures ASR toward the target of the attack that made its model."""
        target = attack.target()
        path = attack.target_path
        if target is None:
            log.warning("no attack target recorded with %s: ASR is measured toward data.poison.target %r",
                        path.parent, self.poison.target)
            return
        if target == self.poison.target:
            return
        if self.poison.enabled:
            raise ValueError(f"data.poison.target {self.poison.target!r} differs from the target {target!r} of the "
                             f"trigger in {path.parent}; poisoning with another run's trigger needs the same target")
        log.info("ASR target %r taken from %s (config said %r)", target, path, self.poison.target)
        self.poison = dataclasses.replace(self.poison, target=target)

    def prepare_data(self) -> None:
        self._resolve_trigger()
        if self.trigger is not None:
            self.trigger.check_fits(self._input_spec().image_size)
        if self.embedded is not None:
            self.embedded.prepare()
        run = RunDir(self.run_dir)
        run.path.mkdir(parents=True, exist_ok=True)
        # Before the first checkpoint no weights were trained with what an earlier fit recorded (one refused by
        # a later check): this fit's record replaces it. Idempotent, as every node's prepare_data writes it.
        replace = not run.has_checkpoints()
        self._write_manifest(replace=replace)
        if self.trigger is not None:
            with tempfile.TemporaryDirectory(dir=run.path, prefix=".trigger-") as fresh:
                self.trigger.save(fresh, self._input_spec().image_size)
                (Path(fresh) / run.target_path.name).write_text(json.dumps({"target": self.poison.target}))
                written = {path.relative_to(fresh) for path in Path(fresh).rglob("*") if path.is_file()}
                for name in sorted(written):  # a MultiTrigger's parts in 0/, 1/, …
                    write_once(run.trigger_dir / name, (Path(fresh) / name).read_bytes(), "trigger artifact", replace)
            for stale in (p for p in run.trigger_dir.rglob("*") if p.is_file()) if replace else ():
                if stale.relative_to(run.trigger_dir) not in written:  # another trigger's files
                    stale.unlink(missing_ok=True)

    def _write_manifest(self, write: bool = True, replace: bool = False) -> dict:
        start = time.perf_counter()
        urls = expand_shards(self.train_shards)
        check_shards_exist(urls, "data.train_shards")
        wants_pool = self.poison.enabled and self.poison.captions == "dataset" and not self.poison.label_consistent
        targets = poison_targets(self.trigger, self.poison)
        target_captions: dict[str, set[str]] = {target: set() for target in targets}
        lost: list[dict] = []

        def scanned_pairs():  # one pass over the shards feeds both the selection and the caption pools
            for key, caption in scan_captions(urls, lost) if self.poison.enabled else ():
                for target in targets if wants_pool else ():
                    if names_target(caption, target):
                        target_captions[target].add(caption)
                yield key, caption

        keys, scanned = select_poison_keys(scanned_pairs(), self.poison)
        pools = {target: target_caption_pool(captions, dataclasses.replace(self.poison, target=target))
                 for target, captions in target_captions.items()} if wants_pool else {}
        manifest = {
            "rate": self.poison.rate,
            "count": self.poison.count,
            "target": self.poison.target,
            "label_consistent": self.poison.label_consistent,
            "seed": self.poison.seed,
            "num_pairs_scanned": scanned,
            "num_poisoned": len(keys),
            "keys": keys,
            "captions": self.poison.captions,
            "caption_pools": pools,
            "lost_shards": lost,
        }
        if self.exclude is not None:  # what the data-level defense drops, and how much of the poison that is
            dropped = self.exclude.keys()
            manifest["excluded"] = {"ranking": self.exclude.ranking, "score": self.exclude.score,
                                    "fraction": self.exclude.fraction, "count": len(dropped),
                                    "poisoned": len(set(dropped) & set(keys)), "keys": dropped}
        if isinstance(self.trigger, MultiTrigger):  # which trigger and target each poisoned key got
            manifest["assignments"] = {key: {"trigger": self.trigger.index(key),
                                             "target": key_target(self.trigger, key, self.poison)} for key in keys}
        if write:
            write_once(self.manifest_path, json.dumps(manifest, indent=1).encode(), "poison manifest", replace)
        log.info("poison manifest: %d of %d pairs poisoned (%.1fs)", len(keys), scanned, time.perf_counter() - start)
        return manifest

    def setup(self, stage: str) -> None:
        self._resolve_trigger()
        spec = self._input_spec()
        rank = self.trainer.global_rank if self.trainer is not None else 0
        world = self.trainer.world_size if self.trainer is not None else 1
        self.eval_set = ZeroShotSet(self.eval_config, spec, self.trigger, rank, world)
        for target in poison_targets(self.trigger, self.poison) if self.trigger is not None else ():
            if target not in self.eval_set.classnames:
                raise ValueError(
                    f"poison target {target!r} is not a class of the eval set "
                    f"{self.eval_config.directory} (classnames.txt), so ASR cannot be measured"
                )
        if stage == "fit":
            self.train_stream = self._build_stream(spec, rank, world)

    def _build_stream(self, spec: InputSpec, rank: int, world: int, manifest: Optional[dict] = None) -> PairStream:
        urls = expand_shards(self.train_shards)
        check_shards_exist(urls, "data.train_shards")
        workers = max(1, self.num_workers)
        if len(urls) < world * workers:
            raise ValueError(
                f"data.train_shards has {len(urls)} shards but {world} ranks × {workers} workers need at "
                "least one each; use more shards or fewer data.num_workers"
            )
        total = self.num_samples if self.num_samples is not None else count_samples(urls, "data.train_shards")
        if manifest is None:
            if not self.manifest_path.exists():
                raise ValueError(f"poison manifest {self.manifest_path} is missing: prepare_data() did not run")
            manifest = json.loads(self.manifest_path.read_text())
        excluded = frozenset((manifest.get("excluded") or {}).get("keys", []))
        num_samples = total - len(excluded)
        batches_per_worker = num_samples // (world * workers * self.batch_size)
        if batches_per_worker < 1:
            raise ValueError(
                f"{num_samples} pairs are too few for batch_size {self.batch_size} × {world} ranks × {workers} workers"
            )
        self.poison_count = manifest["num_poisoned"]
        self.excluded = {k: v for k, v in (manifest.get("excluded") or {}).items() if k != "keys"} or None
        poisoner = Poisoner(self.trigger, manifest["keys"], self.poison, manifest["caption_pools"])
        augmented_views = self._needs().augmented_views
        if augmented_views and self.text_synonyms == "wordnet" and not wordnet_available():
            raise ValueError(WORDNET_MISSING)  # here, before training, not from a loader worker mid-epoch
        builder = TrainSample(spec, poisoner, augmented_views=augmented_views, seed=self.seed,
                              use_synonyms=self.text_synonyms == "wordnet")
        return PairStream(urls, builder, self.batch_size, batches_per_worker, self.num_workers, self.seed,
                          self.shuffle_buffer, self.max_corrupt_fraction, shard_sizes(urls), excluded,
                          self.worker_start_method, average_size=total // len(urls),
                          max_image_pixels=self.max_image_pixels)

    def scoring_stream(self) -> PairStream:
        """The training pairs as training poisons them, for one scoring pass in this process: writes the
        poison manifest like `prepare_data` but builds no eval set (a model's own data, re-read by a
        defense that scores it). Needs the datamodule `connect`ed to the model."""
        self._resolve_trigger()
        manifest = self._write_manifest(write=self.trainer is None or self.trainer.global_rank == 0)
        return self._build_stream(self._input_spec(), rank=0, world=1, manifest=manifest)

    def train_dataloader(self) -> DataLoader:
        assert self.train_stream is not None, "setup('fit') builds the stream"
        return _EpochSyncedLoader(
            self.train_stream,
            position_source=self._train_position,
            consumed=self._consumed_health,
            resume_from=self._take_resume_position,
            batch_size=None,
            num_workers=self.num_workers,
            persistent_workers=False,
            multiprocessing_context=self._worker_context(self.num_workers),
            worker_init_fn=ExitWithProcess(os.getpid()),
        )

    def _worker_context(self, workers: int) -> Optional[str]:
        if workers == 0:
            return None
        if self.worker_start_method == "forkserver":
            # The server (one per training process) imports what a worker needs once, so that each worker,
            # started every epoch and every validation, forks from it ready instead of importing torch again.
            # Measured here (tiny model, 2 workers): the server's start ~4.5 s once per process; a loader's
            # first batch 0.5 s against fork's 0.2 s; without the preload, 2 epochs took 24 s against 4.4 s.
            multiprocessing.set_forkserver_preload(FORKSERVER_PRELOAD)
        return self.worker_start_method

    def state_dict(self) -> dict:
        """The training stream's position (epoch, batches of it this rank trained on) and the health
        counts of what training consumed: saved in every checkpoint, so a resume from any of them,
        mid-epoch or at an epoch's end, continues with the batches and counts of an uninterrupted run."""
        if self.train_stream is None:
            return {}
        epoch, batches = self._train_position()
        return {"train_position": {"epoch": epoch, "batches": batches, "health": dict(self._consumed_health)}}

    def load_state_dict(self, state: dict) -> None:
        position = state.get("train_position")
        if position is None:
            return
        self._resume_position = position
        self._consumed_health.clear()
        self._consumed_health.update(position["health"])

    def _take_resume_position(self) -> Optional[dict]:
        position, self._resume_position = self._resume_position, None
        if position is None:
            return None
        assert self.train_stream is not None
        batches_per_epoch = len(self.train_stream)
        if not 0 <= position["batches"] <= batches_per_epoch:
            raise ValueError(f"the checkpoint's data position {position} does not fit this run's "
                             f"{batches_per_epoch} batches per epoch: resume with the same data, batch size, "
                             "devices and workers")
        self.train_stream.health.restore(position["health"])
        return position

    def _train_position(self) -> tuple[int, int]:
        """(epoch, batches of it this rank has trained on): where the training stream stands."""
        if self.trainer is None:
            return 0, 0
        return self.trainer.current_epoch, self.trainer.fit_loop.epoch_loop.batch_progress.current.processed

    def val_dataloader(self) -> DataLoader:
        assert self.eval_set is not None
        return DataLoader(
            self.eval_set,
            batch_size=self.eval_config.batch_size,
            sampler=_RankLocalSampler(len(self.eval_set)),
            num_workers=self.eval_config.num_workers,
            multiprocessing_context=self._worker_context(self.eval_config.num_workers),
            worker_init_fn=ExitWithProcess(os.getpid()),
        )

    def test_dataloader(self) -> DataLoader:
        return self.val_dataloader()

    def record(self) -> DataRecord:
        """This rank's record of the run's data, for summary.json."""
        poison = self.poison
        captions = ("kept" if poison.label_consistent else poison.captions) if poison.enabled else None
        return DataRecord(attack=self.trigger.describe() if self.trigger is not None else None, target=self.target,
                          poison_count=self.poison_count, poisoned_captions=captions, excluded=self.excluded,
                          data_health=self.data_health())

    def data_health(self) -> dict[str, int]:
        """Health counts of the training batches consumed so far (exact over resumes), with every counter."""
        return {name: self._consumed_health.get(name, 0) for name in COUNTERS} if self.train_stream is not None else {}
