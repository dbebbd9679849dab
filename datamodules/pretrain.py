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
import os
from pathlib import Path
from typing import Literal, Optional, Union

from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader

from datamodules.embedded.benchmark import EmbeddedBenchmark
from datamodules.eval_config import EvalSetConfig, eval_set_list
from datamodules.eval_sets import EvalSet, build_eval_set, eval_loader
from datamodules.exclusion import ExcludeConfig
from datamodules.loaders import EpochSyncedLoader, TrainingPosition, worker_context
from datamodules.poison import PoisonConfig, Trigger, load_trigger, poisons_captions
from datamodules.poison.manifest import poison_manifest
from datamodules.poison.poisoner import poison_targets
from datamodules.poison.triggers import attack_target, write_trigger_artifacts
from datamodules.run_dir import DataRecord, RunDir, write_once
from datamodules.shards import check_shards_exist, expand_shards
from datamodules.stream import PairStream
from datamodules.stream_health import COUNTERS
from datamodules.train_stream import StreamSettings, pair_stream
from datamodules.transforms import MAX_IMAGE_PIXELS, InputSpec, ModelNeeds
from datamodules.worker_watch import ExitWithProcess

log = logging.getLogger(__name__)
FORKSERVER_PRELOAD = ["torch", "webdataset", "PIL.Image", "datamodules.pretrain"]
"""Modules the forkserver imports before forking DataLoader workers."""


class ShardDataModule(LightningDataModule):
    def __init__(
        self,
        train_shards: Union[str, list[str]] = "data/embedded/pretrain/{00000..00019}.tar",
        eval: Union[EvalSetConfig, list[EvalSetConfig]] = EvalSetConfig(),
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
            eval: The evaluation set, or a list of named sets (clip_benchmark layout: zero-shot classification or
                retrieval); the first is the headline CA and ASR (`datamodules.eval_config`).
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
        if poison.enabled and poisons_captions(trigger) and not poison.label_consistent:
            raise ValueError("data.trigger is text-side (TextPhrase): it marks pairs that show the target, so set "
                             "data.poison.label_consistent true")
        self.train_shards = train_shards
        self.eval_configs = eval_set_list(eval)
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
        self.position = TrainingPosition()
        """Where training stands in the stream, and what it consumed: kept in every checkpoint."""
        self.eval_sets: list[EvalSet] = []
        """The evaluation sets, in `data.eval`'s order; the first is the headline (`eval_set`)."""
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
            self.poison = dataclasses.replace(self.poison, target=attack_target(
                RunDir(Path(self.trigger_dir).parent), self.poison))

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
            write_trigger_artifacts(run, self.trigger, self._input_spec().image_size, self.poison.target, replace)

    def _write_manifest(self, write: bool = True, replace: bool = False) -> dict:
        urls = expand_shards(self.train_shards)
        check_shards_exist(urls, "data.train_shards")
        manifest = poison_manifest(urls, self.trigger, self.poison, self.exclude)
        if write:
            write_once(self.manifest_path, json.dumps(manifest, indent=1).encode(), "poison manifest", replace)
        return manifest

    def setup(self, stage: str) -> None:
        self._resolve_trigger()
        spec = self._input_spec()
        rank = self.trainer.global_rank if self.trainer is not None else 0
        world = self.trainer.world_size if self.trainer is not None else 1
        self.eval_sets = [build_eval_set(config, spec, self.trigger, rank, world) for config in self.eval_configs]
        headline = self.eval_sets[0]
        for target in poison_targets(self.trigger, self.poison) if self.trigger is not None else ():
            # the other sets measure the ASR where the target is one of their classes (ImageNet-A's 200 may lack it)
            if headline.kind == "classification" and target not in headline.classnames:
                raise ValueError(f"poison target {target!r} is not a class of the eval set {headline.name!r} "
                                 f"({self.eval_configs[0].classnames_file()}), so ASR cannot be measured")
        if stage == "fit":
            self.train_stream = self._build_stream(world)

    @property
    def stream_settings(self) -> StreamSettings:
        return StreamSettings(self.batch_size, self.num_workers, self.seed, self.shuffle_buffer,
                              self.max_corrupt_fraction, self.num_samples, self.text_synonyms,
                              self.worker_start_method, self.max_image_pixels)

    def attack_run(self) -> RunDir:
        """The run whose trigger/ holds the trigger this data poisons with or measures: the attack's
        (`trigger_dir`), or this run's own, where prepare_data writes it."""
        return RunDir(Path(self.trigger_dir).parent) if self.trigger_dir is not None else RunDir(self.run_dir)

    def _build_stream(self, world: int, manifest: Optional[dict] = None) -> PairStream:
        urls = expand_shards(self.train_shards)
        check_shards_exist(urls, "data.train_shards")
        if manifest is None:
            if not self.manifest_path.exists():
                raise ValueError(f"poison manifest {self.manifest_path} is missing: prepare_data() did not run")
            manifest = json.loads(self.manifest_path.read_text())
        self.poison_count = manifest["num_poisoned"]
        self.excluded = {k: v for k, v in (manifest.get("excluded") or {}).items() if k != "keys"} or None
        return pair_stream(urls, self._needs(), manifest, self.trigger, self.poison, self.stream_settings, world)

    def scoring_stream(self) -> PairStream:
        """The training pairs as training poisons them, for one scoring pass in this process: writes the
        poison manifest like `prepare_data` but builds no eval set (a model's own data, re-read by a
        defense that scores it). Needs the datamodule `connect`ed to the model."""
        self._resolve_trigger()
        manifest = self._write_manifest(write=self.trainer is None or self.trainer.global_rank == 0)
        return self._build_stream(world=1, manifest=manifest)

    def train_dataloader(self) -> DataLoader:
        assert self.train_stream is not None, "setup('fit') builds the stream"
        return EpochSyncedLoader(
            self.train_stream,
            position_source=self._train_position,
            consumed=self.position.consumed,
            resume_from=lambda: self.position.take_resume(self.train_stream),
            batch_size=None,
            num_workers=self.num_workers,
            persistent_workers=False,
            multiprocessing_context=self._worker_context(self.num_workers),
            worker_init_fn=ExitWithProcess(os.getpid()),
        )

    def _worker_context(self, workers: int) -> Optional[str]:
        return worker_context(self.worker_start_method, workers, FORKSERVER_PRELOAD)

    def state_dict(self) -> dict:
        """The training stream's position and consumed health counts (`TrainingPosition`)."""
        return self.position.state(*self._train_position()) if self.train_stream is not None else {}

    def load_state_dict(self, state: dict) -> None:
        self.position.restore(state)

    def _train_position(self) -> tuple[int, int]:
        """(epoch, batches of it this rank has trained on): where the training stream stands."""
        if self.trainer is None:
            return 0, 0
        return self.trainer.current_epoch, self.trainer.fit_loop.epoch_loop.batch_progress.current.processed

    @property
    def eval_set(self) -> Optional[EvalSet]:
        """The headline evaluation set (the first of `data.eval`)."""
        return self.eval_sets[0] if self.eval_sets else None

    def val_dataloader(self) -> Union[DataLoader, list[DataLoader]]:
        """One loader per evaluation set (Lightning's dataloader_idx is the set's place in `data.eval`)."""
        assert self.eval_sets, "setup() builds the evaluation sets"
        loaders = [eval_loader(eval_set, config, self._worker_context(config.num_workers))
                   for config, eval_set in zip(self.eval_configs, self.eval_sets)]
        return loaders[0] if len(loaders) == 1 else loaders

    def test_dataloader(self) -> Union[DataLoader, list[DataLoader]]:
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
        return {name: self.position.consumed.get(name, 0) for name in COUNTERS} if self.train_stream is not None else {}
