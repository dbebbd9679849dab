"""DeepSpeed on CPU ranks: the same ZeRO engine a GPU run uses, on gloo, so that a CPU machine (the tests,
`benchmarks/gpu_acceptance.py --cpu-smoke`, a laptop trying a recipe) trains through the DeepSpeed path.

    DS_ACCELERATOR=cpu python main.py fit --config configs/embedded/badnet.yaml \\
        --config configs/strategies/deepspeed_zero3.yaml --config configs/strategies/cpu.yaml

Lightning's `DeepSpeedStrategy` refuses every accelerator but CUDA, although DeepSpeed itself runs on
the CPU (its CPU accelerator falls back to gloo without oneCCL). It stands in the way three times, and
this subclass changes exactly those three places, nothing else:
- `setup_environment` raises for a non-CUDA accelerator: we run DDP's environment set-up instead;
- `setup_distributed` validates device indices, and a CPU device has none: we skip that check;
- the engine is told `device_rank = root_device.index` (None on the CPU, a TypeError inside DeepSpeed):
  the root device is `cpu:<local rank>`, which torch treats as the CPU.
On a GPU it is not needed and refuses to run, so a GPU recipe never takes this path by mistake.
"""

from __future__ import annotations

import torch
from lightning.fabric.utilities.seed import reset_seed
from lightning.pytorch.accelerators import CPUAccelerator
from lightning.pytorch.strategies import DDPStrategy, DeepSpeedStrategy


class CPUDeepSpeedStrategy(DeepSpeedStrategy):
    """Lightning's DeepSpeed strategy on CPU ranks (gloo); takes every `DeepSpeedStrategy` argument."""

    def __init__(self, *args, param_persistence_threshold: int = 0, **kwargs) -> None:
        """
        Args:
            param_persistence_threshold: ZeRO-3 leaves parameters with fewer elements than this whole on
                every rank (DeepSpeed's default 100,000). 0 here: every parameter is partitioned, so that a
                tiny CPU model meets ZeRO-3 the way ViT-B/32's and RN50's large weights do.
        """
        super().__init__(*args, **kwargs)
        if isinstance(self.config, dict) and "zero_optimization" in self.config:
            self.config["zero_optimization"]["stage3_param_persistence_threshold"] = param_persistence_threshold

    def setup_environment(self) -> None:
        if not isinstance(self.accelerator, CPUAccelerator):
            raise ValueError(
                f"trainer.strategy: {type(self).__name__} runs DeepSpeed on CPU ranks, but the accelerator is "
                f"{type(self.accelerator).__name__}: on GPUs use lightning.pytorch.strategies.DeepSpeedStrategy "
                "(configs/strategies/deepspeed_zero*.yaml without configs/strategies/cpu.yaml)"
            )
        from deepspeed.accelerator import get_accelerator

        if get_accelerator().device_name() != "cpu":
            raise ValueError(
                f"trainer.strategy: {type(self).__name__} needs DeepSpeed's CPU accelerator, but DeepSpeed chose "
                f"{get_accelerator().device_name()!r}: set DS_ACCELERATOR=cpu before starting"
            )
        DDPStrategy.setup_environment(self)  # skip DeepSpeedStrategy's CUDA check, keep everything else

    def setup_distributed(self) -> None:
        # DeepSpeedStrategy.setup_distributed less `_validate_device_index_selection`: CPU devices have no index.
        reset_seed()
        self.set_world_ranks()
        self._init_deepspeed_distributed()

    @property
    def root_device(self) -> torch.device:
        # DeepSpeed reads `device_rank` from this index; torch moves nothing for "cpu:N".
        return torch.device("cpu", self.local_rank)
