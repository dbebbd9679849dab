"""What every rank of a fit agrees on: a few numbers combined over the ranks (one all-reduce; a single
process returns them as they are). A collective: every rank must call it at the same point."""

from __future__ import annotations

import torch


def over_ranks(trainer, values: list[float | int], op: str, dtype: torch.dtype = torch.float64) -> list:
    """`values` of this rank combined element-wise over all ranks with `op` ("sum" or "max")."""
    tensor = torch.tensor(values, dtype=dtype, device=trainer.strategy.root_device)
    if trainer.world_size > 1:
        tensor = trainer.strategy.reduce(tensor, reduce_op=op)
    return tensor.tolist()
