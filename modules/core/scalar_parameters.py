"""open_clip's `logit_scale` is a 0-dim parameter; DeepSpeed (0.19) broadcasts every parameter at
engine start as `p.data.view(torch.uint8)`, which raises for 0-dim tensors, so ZeRO 1/2 cannot start
on an open_clip model. `store_scalars_as_vectors` keeps such parameters as shape [1] inside the
model while its state dict keeps the 0-dim shape, so checkpoints and exports stay open_clip's.
"""

from __future__ import annotations

import torch


def store_scalars_as_vectors(model: torch.nn.Module) -> list[str]:
    """Re-store 0-dim parameters of `model` with shape [1]; returns their names."""
    names = [name for name, param in model.named_parameters() if param.ndim == 0]
    for name in names:
        owner_name, _, attr = name.rpartition(".")
        owner = model.get_submodule(owner_name)
        old = getattr(owner, attr)
        setattr(owner, attr, torch.nn.Parameter(old.detach().reshape(1), requires_grad=old.requires_grad))
    if not names:
        return names

    def to_scalars(module, state_dict, prefix, local_metadata):
        for name in names:
            key = prefix + name
            if key in state_dict and state_dict[key].shape == (1,):
                state_dict[key] = state_dict[key].reshape(())

    def to_vectors(module, state_dict, prefix, *args):
        for name in names:
            key = prefix + name
            if key in state_dict and state_dict[key].ndim == 0:
                state_dict[key] = state_dict[key].reshape(1)

    model.register_state_dict_post_hook(to_scalars)
    model.register_load_state_dict_pre_hook(to_vectors)
    return names


def match_scalar_shapes(state: dict[str, torch.Tensor], model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Reshape one-element tensors of `state` between () and (1,) to the model's own shape (a ZeRO
    checkpoint records the [1]-shaped storage of a scalar parameter)."""
    own = model.state_dict()
    return {k: v.reshape(own[k].shape) if k in own and v.numel() == 1 == own[k].numel() else v
            for k, v in state.items()}
