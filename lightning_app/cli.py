"""The LightningCLI of the toolkit: `python main.py fit --config configs/embedded/badnet.yaml`.

`trainer.default_root_dir` is the run directory, the single record of a run:
    config.yaml            the resolved config (rewritten on resume, which may change only how long the run
                           trains and how it is evaluated, logged, checkpointed and launched: run_guard)
    checkpoints/last.ckpt  and per-epoch (and with --checkpoint_every_n_steps, per-step) checkpoints;
                           `--ckpt_path last` resumes from the newest, with the exact batches to come;
                           SIGTERM/SIGUSR1 write one at the next batch end and exit 128 + signal (training_guard)
    metrics.csv, tensorboard/   logs (a resumed fit keeps the rows up to its checkpoint)
    poison/manifest.json   the poisoned keys;  trigger/  the trigger's parameters and patterns
    summary.json           final CA/ASR, attack, poison count, steps, wall time
"""

from __future__ import annotations

import pickle
import re
import signal
import sys
from pathlib import Path
from typing import Any, Optional

import torch
import yaml
from lightning.pytorch import LightningDataModule, Trainer
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint, RichProgressBar
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.strategies import DeepSpeedStrategy, StrategyRegistry
from lightning.pytorch.utilities.exceptions import SIGTERMException

from datamodules.pretrain import ShardDataModule
from datamodules.run_dir import RunDir
from lightning_app.callbacks import RunSummary
from lightning_app.checkpointing import AtomicCheckpointIO, newest_checkpoint, run_checkpoints
from lightning_app.linear_probe import LinearProbe
from lightning_app.metrics_log import KeepMetricsOnResume, ResumableCSVLogger
from lightning_app.run_guard import RunLock, refuse_changed_attack, refuse_foreign_checkpoint
from lightning_app.training_guard import TrainingGuard
from lightning_app.user_errors import report_user_errors
from modules.core.base import CLIPModule
from modules.core.linear_probe import LinearProbeConfig

EVAL_FIELD_OPTION = re.compile(r"^--data\.(init_args\.)?eval\.([a-z_]+)(=|$)")


def refuse_field_of_a_set_list(config, args: Any) -> None:
    """`--data.init_args.eval.directory X` on a config whose `data.eval` is a list of sets would change the
    last set only (jsonargparse edits a list's last item), silently, not the headline set the user means.
    A field option before a whole `--data.init_args.eval` option is harmless: the whole value replaces it."""
    sets = config.get("data", {}).get("init_args", {}).get("eval") if hasattr(config, "get") else None
    if not isinstance(sets, list) or len(sets) < 2 or not isinstance(args, (list, tuple)):
        return
    args = [str(arg) for arg in args]
    whole = [i for i, arg in enumerate(args) if re.match(r"^--data\.(init_args\.)?eval(=|$)", arg)]
    for index, arg in enumerate(args):
        if EVAL_FIELD_OPTION.match(arg) and index > max(whole, default=-1):
            raise ValueError(f"{arg.split('=')[0]}: data.eval is a list of {len(sets)} sets here, and this option would "
                             f"change the last one only; give the whole list (--data.init_args.eval "
                             f"'[{{directory: …}}, …]') or a config fragment with it")


class BackdoorCLI(LightningCLI):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._run_lock: Optional[RunLock] = None
        kwargs.setdefault("save_config_kwargs", {"overwrite": True, "config_filename": "config.yaml"})
        kwargs.setdefault("auto_configure_optimizers", False)
        kwargs.setdefault("trainer_defaults", {"use_distributed_sampler": False})
        # `--trainer.max_epoch 3` must be an error, not silently `--trainer.max_epochs 3`
        kwargs.setdefault("parser_kwargs", {"allow_abbrev": False})
        super().__init__(CLIPModule, LightningDataModule, *args, subclass_mode_model=True,
                         subclass_mode_data=True, **kwargs)

    def _parse_ckpt_path(self) -> None:
        # LightningCLI reads a checkpoint file's hyperparameters (weights_only=True) before anything else:
        # a file it cannot read that way is refused here, with its name (torch's error does not say which file).
        try:
            super()._parse_ckpt_path()
        except (pickle.UnpicklingError, RuntimeError, EOFError, OSError) as exn:
            path = self.config[self.config.subcommand].get("ckpt_path")
            raise ValueError(f"--ckpt_path {path}: not a checkpoint that loads as plain weights ({type(exn).__name__}; "
                             "checkpoints are untrusted input and are read with weights_only=True)") from exn

    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        super().parse_arguments(parser, args)
        subcommand = self.config.get("subcommand")
        refuse_field_of_a_set_list(self.config.get(subcommand) if subcommand else self.config,
                                   sys.argv[1:] if args is None else args)

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_argument(
            "--torch_threads", type=Optional[int], default=None,
            help="Intra-op CPU threads for torch (None: torch's default). On a small CPU, 1 thread beside "
                 "one data worker beats 2 threads fighting the worker for the cores.",
        )
        parser.add_argument(
            "--checkpoint_every_n_steps", type=Optional[int], default=None,
            help="Also checkpoint every N optimizer steps (and refresh last.ckpt), for mid-epoch resume "
                 "after preemption. None: checkpoints at epoch ends only.",
        )
        parser.add_argument("--keep_step_checkpoints", type=int, default=2,
                            help="How many of the newest step checkpoints to keep.")
        parser.add_argument("--linear_probe", type=Optional[LinearProbeConfig], default=None,
                            help="Probe the trained image features with a linear classifier at the end of fit "
                                 "(clip_benchmark's protocol; its accuracy goes into summary.json). None: no probe.")

    def before_instantiate_classes(self) -> None:
        config = self.config.get(str(self.subcommand), self.config)
        if config.get("torch_threads"):
            torch.set_num_threads(config["torch_threads"])

    def instantiate_classes(self) -> None:
        """The model and datamodule, then the one hand-over between them: what the model takes and asks of
        its data (`data.connect(model.data_needs())`), so the data never reaches into the trainer for it."""
        super().instantiate_classes()
        if isinstance(self.datamodule, ShardDataModule) and isinstance(self.model, CLIPModule):
            self.datamodule.connect(self.model.data_needs())

    def before_fit(self) -> None:
        run = RunDir(self.trainer.default_root_dir)
        ckpt_path = self.config_init.fit.get("ckpt_path")
        if ckpt_path is None and run.has_checkpoints():
            raise ValueError(
                f"run directory {run.path} already holds checkpoints: resume it with "
                "`--ckpt_path last`, or remove it / set another trainer.default_root_dir for a new run"
            )
        if ckpt_path is not None:
            refuse_foreign_checkpoint(run, str(ckpt_path))
            config = self.config.get(str(self.subcommand), self.config)
            refuse_changed_attack(run, yaml.safe_load(self._parser(self.subcommand).dump(config, skip_none=False)))
        if ckpt_path == "last":
            self.config_init.fit.ckpt_path = str(newest_checkpoint(run.checkpoints))
        if self.trainer.global_rank == 0:
            self._run_lock = RunLock(run.path)  # a second fit into the directory fails at once
            for partial in run.path.rglob("*.partial"):  # left by a write killed midway; the lock says no other
                partial.unlink(missing_ok=True)           # fit is writing one now

    def fit(self, **kwargs: Any) -> None:
        try:
            self.trainer.fit(**kwargs)
        except SIGTERMException:
            # before training started (setup, sanity check) Lightning's own handler stops the fit as a
            # success; a killed run is not one. During training, TrainingGuard checkpoints and exits.
            raise SystemExit(128 + signal.SIGTERM) from None
        finally:
            if self._run_lock is not None:
                self._run_lock.release()
                self._run_lock = None

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        trainer_config = self._get(self.config_init, "trainer", default={})
        run_dir = Path(trainer_config.get("default_root_dir") or "runs/default")
        if trainer_config.get("logger") in (None, True):
            kwargs["logger"] = [
                ResumableCSVLogger(run_dir),
                TensorBoardLogger(str(run_dir), name="", version="tensorboard"),
            ]
        callbacks = list(trainer_config.get("callbacks") or [])
        if trainer_config.get("enable_checkpointing") is not False and not any(isinstance(c, ModelCheckpoint) for c in callbacks):
            callbacks += run_checkpoints(run_dir / "checkpoints", self._get(self.config_init, "checkpoint_every_n_steps"),
                                         self._get(self.config_init, "keep_step_checkpoints"))
        if not trainer_config.get("plugins") and "deepspeed" not in str(trainer_config.get("strategy", "")).lower():
            kwargs["plugins"] = [AtomicCheckpointIO()]
        if trainer_config.get("enable_progress_bar") is not False and not any(isinstance(c, RichProgressBar) for c in callbacks):
            callbacks.append(RichProgressBar(leave=True))
        if trainer_config.get("logger") is not False:
            callbacks.append(LearningRateMonitor(logging_interval="step"))
        probe = self._get(self.config_init, "linear_probe")
        if probe is not None:
            callbacks.append(LinearProbe(probe))
        callbacks += [TrainingGuard(), RunSummary()]
        if any(isinstance(logger, ResumableCSVLogger) for logger in kwargs.get("logger") or []):
            callbacks.append(KeepMetricsOnResume())
        kwargs["callbacks"] = callbacks
        kwargs["default_root_dir"] = str(run_dir)
        strategy = self._deepspeed_strategy(trainer_config.get("strategy"), str(trainer_config.get("precision")))
        if strategy is not None:
            kwargs["strategy"] = strategy
        return super().instantiate_trainer(**kwargs)


    def _deepspeed_strategy(self, strategy: Any, precision: str) -> Optional[DeepSpeedStrategy]:
        """A DeepSpeed strategy whose micro batch size (`logging_batch_size_per_gpu`) is the data's batch
        size: Lightning cannot read it from the shard loader (batching happens in the stream) and would
        tell DeepSpeed 1. Under DeepSpeed's 16-bit modes, its buffers in the parameters' dtype: DeepSpeed
        (≥ 0.19) casts parameters only, and a BatchNorm (RN50) with 16-bit weights and fp32 running
        statistics fails in its first eval forward ("expected scalar type BFloat16 but found Float")."""
        if isinstance(strategy, str) and strategy.startswith("deepspeed"):
            strategy = StrategyRegistry.get(strategy)
        if not isinstance(strategy, DeepSpeedStrategy):
            return None
        batch_size = self.datamodule.batch_size if isinstance(self.datamodule, ShardDataModule) else None
        if batch_size is not None and "train_micro_batch_size_per_gpu" not in strategy.config:
            strategy.config["train_micro_batch_size_per_gpu"] = batch_size
        half = {"16": "fp16", "bf16": "bf16"}.get(precision.split("-")[0])
        if half is not None:
            strategy.config.setdefault("data_types", {}).setdefault("buffer_dtype", half)
        return strategy


def main(args: list[str] | None = None) -> BackdoorCLI:
    """The command line: user errors as one line naming the file, key or option (lightning_app.user_errors)."""
    return report_user_errors(lambda: BackdoorCLI(args=args), args)
