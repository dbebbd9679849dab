"""A DeepSpeed ZeRO checkpoint directory (what Lightning's DeepSpeedStrategy writes as `last.ckpt/`)
as one fp32 state dict, for export and for defenses that start from the model:

    python -m modules.core.deepspeed_checkpoint runs/cc3m/pretrain_badnet/checkpoints/last.ckpt model.safetensors

`model.pretrained` also accepts such a directory directly. DeepSpeed's `zero_to_fp32` merges the
partitioned fp32 master weights (stages 1-3); it loads its files with `weights_only=False`, which
would run any code pickled into them. Here it runs with `torch.load` forced to `weights_only=True`
and only DeepSpeed's own checkpoint record types allowed.
"""

from __future__ import annotations

import argparse
import importlib
from pathlib import Path
from unittest import mock

import torch

# The non-tensor types DeepSpeed (0.14-0.19) pickles into ZeRO checkpoints; plain data records.
_DEEPSPEED_RECORD_TYPES = (
    "deepspeed.runtime.fp16.loss_scaler.LossScaler",
    "deepspeed.runtime.fp16.loss_scaler.DynamicLossScaler",
    "deepspeed.runtime.zero.config.ZeroStageEnum",
    "deepspeed.utils.tensor_fragment.fragment_address",
)
_WRAPPER_PREFIXES = ("_forward_module.", "module.")


def is_deepspeed_checkpoint(path: str | Path) -> bool:
    path = Path(path)
    return path.is_dir() and ((path / "latest").is_file() or any(path.glob("*/*mp_rank_*_model_states.pt")))


def _record_types() -> list[type]:
    types = []
    for dotted in _DEEPSPEED_RECORD_TYPES:
        module, name = dotted.rsplit(".", 1)
        try:
            types.append(getattr(importlib.import_module(module), name))
        except (ImportError, AttributeError):
            pass  # older/newer DeepSpeed without this type: its checkpoints cannot hold it either
    return types


def _tag(path: Path) -> str | None:
    if (path / "latest").is_file():
        return None  # zero_to_fp32 reads it
    tags = sorted({p.parent.name for p in path.glob("*/*mp_rank_*_model_states.pt")})
    if len(tags) != 1:
        raise ValueError(f"{path}: no `latest` file and {len(tags)} checkpoint tags {tags}; convert one tag directory")
    return tags[0]


def read_deepspeed_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The fp32 weights of a ZeRO checkpoint directory, with DeepSpeed's and Lightning's wrapper prefixes removed."""
    try:
        from deepspeed.utils import zero_to_fp32
    except ImportError as exn:
        raise ValueError(f"{path} is a DeepSpeed checkpoint; reading it needs `pip install deepspeed`") from exn
    path = Path(path)
    allowed = _record_types()
    unrestricted_load = torch.load

    def restricted_load(*args, **kwargs):
        kwargs["weights_only"] = True
        with torch.serialization.safe_globals(allowed):
            return unrestricted_load(*args, **kwargs)

    try:
        with mock.patch.object(torch, "load", restricted_load):
            state = zero_to_fp32.get_fp32_state_dict_from_zero_checkpoint(str(path), tag=_tag(path))
    except Exception as exn:
        if "weights_only" in str(exn) or "Unsupported global" in str(exn):
            raise ValueError(f"{path}: the DeepSpeed checkpoint holds objects outside the allowed record types "
                             f"and is not loaded (checkpoints are untrusted input): {exn}") from exn
        raise
    for prefix in _WRAPPER_PREFIXES:
        if state and all(k.startswith(prefix) for k in state):
            state = {k[len(prefix):]: v for k, v in state.items()}
    return {k: v.contiguous() for k, v in state.items()}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", help="DeepSpeed checkpoint directory (e.g. RUN/checkpoints/last.ckpt)")
    parser.add_argument("output", help="where to write the fp32 weights (.safetensors)")
    args = parser.parse_args(argv)
    from safetensors.torch import save_file

    state = read_deepspeed_state_dict(args.checkpoint)
    save_file(state, args.output)
    print(f"{len(state)} tensors, {sum(v.numel() for v in state.values()):,} parameters → {args.output}")


if __name__ == "__main__":
    main()
