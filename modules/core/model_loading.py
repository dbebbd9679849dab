"""Building open_clip models and loading their weights without unpickling arbitrary objects.

`ModelConfig.name` is any open_clip model name (RN50, ViT-B-32, …), a path to a model config JSON
(e.g. `configs/models/tiny-rn32.json`), or `local-dir:PATH` (an exported open_clip folder).
`ModelConfig.pretrained` is None (random init), an open_clip pretrained tag (downloads; needs
internet), or a local file: `.safetensors`, an open_clip `.pt/.bin`, or a Lightning `.ckpt` of ours.
Pickle files are read with `torch.load(weights_only=True)`, which refuses arbitrary objects.
"""

from __future__ import annotations

import pickle
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import open_clip
import torch
from open_clip.model import get_model_preprocess_cfg
from safetensors.torch import load_file

from datamodules.transforms import InputSpec
from modules.core.deepspeed_checkpoint import is_deepspeed_checkpoint, read_deepspeed_state_dict
from modules.core.scalar_parameters import match_scalar_shapes


@dataclass
class ModelConfig:
    """Which open_clip model to build and which weights to start from."""

    name: str = "RN50"
    """open_clip model name, a model config JSON path, or `local-dir:PATH`."""
    pretrained: Optional[str] = None
    """None (from scratch), an open_clip pretrained tag, or a local weight file (.safetensors/.pt/.bin/.ckpt)."""
    channels_last: bool = False
    """Use the channels_last memory format (faster convolutions on CPU and recent GPUs): the images always,
    the convolution weights too unless DeepSpeed owns their storage (`CLIPModule.setup`)."""
    batchnorm_momentum: Optional[float] = None
    """Override the momentum of BatchNorm running statistics (ResNet towers). A tiny model trained for a
    few thousand steps at a high learning rate changes faster than the default 0.1 tracks."""
    shrink: Optional[float] = None
    """Shrink and perturb the starting weights (Ash & Adams; a defense in Verma et al.): every parameter
    θ ← shrink·θ + perturb·θ_random, θ_random a fresh initialisation of the same model (seed
    `perturb_seed`); buffers (BatchNorm statistics) are kept. None: off; Verma et al.: 0.95."""
    perturb: float = 1e-4
    """Weight of the fresh initialisation added when `shrink` is set (Verma et al.: 1e-4)."""
    perturb_seed: int = 0
    """Seed of the fresh initialisation."""

    def __post_init__(self) -> None:
        if self.shrink is not None and not 0.0 < self.shrink <= 1.0:
            raise ValueError(f"model.shrink must be in (0, 1], got {self.shrink}")
        # jsonargparse hands `--model.init_args.model.pretrained null` on the command line over as a string.
        if isinstance(self.pretrained, str) and self.pretrained.strip().lower() in ("", "none", "null"):
            self.pretrained = None


class UnsafeCheckpointError(ValueError):
    pass


def _open_clip_name(name: str) -> str:
    if name.endswith(".json"):
        path = Path(name)
        if not path.exists():
            raise ValueError(f"model.name: model config {path} does not exist")
        open_clip.add_model_config(path)
        return path.stem
    if not name.startswith(("local-dir:", "hf-hub:")) and name not in open_clip.list_models():
        raise ValueError(f"model.name: {name!r} is not an open_clip model, a config JSON, or local-dir:PATH")
    return name


def is_torchscript_archive(path: Path) -> bool:
    """A zip whose archive holds TorchScript code (`code/` or `constants.pkl`), as torch.jit.save writes."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any("/code/" in name or name.endswith("/constants.pkl") for name in archive.namelist())


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read model weights from safetensors, or a pickle restricted to tensors and plain containers."""
    path = Path(path)
    if not path.exists():
        raise ValueError(f"model.pretrained: {path} does not exist")
    if path.suffix == ".safetensors":
        try:
            return load_file(str(path))
        except Exception as exn:  # SafetensorError for a bad header, OSError for an unreadable file
            raise ValueError(f"model.pretrained: {path} is not a readable safetensors file ({exn})") from exn
    if path.is_dir():
        if not is_deepspeed_checkpoint(path):
            raise ValueError(f"model.pretrained: {path} is a directory but not a DeepSpeed checkpoint; "
                             "for an open_clip folder use model.name local-dir:PATH")
        data = read_deepspeed_state_dict(path)
        return _strip_prefix(data)
    if is_torchscript_archive(path):
        raise UnsafeCheckpointError(
            f"{path} is a TorchScript archive (the format of OpenAI's CLIP .pt files): loading it runs the code it "
            "carries, so it is refused. Convert it once, on a machine and in an environment you trust, to "
            "safetensors: torch.jit.load(path, map_location='cpu').state_dict() saved with "
            "safetensors.torch.save_file; then set model.pretrained to the .safetensors file."
        )
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exn:  # torch raises UnpicklingError (or RuntimeError) for forbidden globals
        raise UnsafeCheckpointError(
            f"{path} cannot be loaded as plain weights (weights_only=True refused it: {exn}). "
            "Checkpoints are untrusted input: convert it to safetensors in a sandbox if you trust it."
        ) from exn
    if isinstance(data, dict) and "state_dict" in data:
        data = data["state_dict"]
    if not isinstance(data, dict) or not all(isinstance(v, torch.Tensor) for v in data.values()):
        raise ValueError(f"{path} does not hold a state dict of tensors")
    return _strip_prefix(data)


def _refusal(exn: Exception) -> str:
    """The line of torch's weights_only refusal that names what the file wanted unpickled."""
    lines = [line.strip() for line in str(exn).splitlines() if line.strip()]
    return next((line for line in lines if "GLOBAL" in line), lines[0] if lines else repr(exn))


def _strip_prefix(data: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The CLIP model's weights: a LightningModule of ours keeps them under `model.` (beside extras
    such as ABD's patch); DDP/DeepSpeed wrappers add `module.`."""
    if data and all(k.startswith("module.") for k in data):
        data = {k[len("module."):]: v for k, v in data.items()}
    if any(k.startswith("model.") for k in data):
        data = {k[len("model."):]: v for k, v in data.items() if k.startswith("model.")}
    return data


def _random_twin(name: str, seed: int) -> torch.nn.Module:
    """A freshly initialised model of the same architecture, drawn from `seed` (the global RNG is kept)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return open_clip.create_model(name, pretrained=None)


@torch.no_grad()
def shrink_and_perturb(model: torch.nn.Module, random: torch.nn.Module, shrink: float, perturb: float) -> None:
    """θ ← shrink·θ + perturb·θ_random for every parameter (the two models' parameters by name)."""
    fresh = dict(random.named_parameters())
    for name, param in model.named_parameters():
        if name in fresh:  # (a SigLIP model's logit_bias has no twin: kept)
            param.mul_(shrink).add_(fresh[name].to(param.dtype), alpha=perturb)


def build_model(config: ModelConfig) -> tuple[torch.nn.Module, InputSpec]:
    name = _open_clip_name(config.name)
    pretrained = config.pretrained
    local_file = pretrained is not None and (Path(pretrained).suffix in {".safetensors", ".pt", ".bin", ".pth", ".ckpt"}
                                             or Path(pretrained).exists())
    try:
        model = open_clip.create_model(name, pretrained=None if local_file else pretrained, weights_only=True)
    except pickle.UnpicklingError as exn:  # a local-dir: folder whose weights need objects unpickled
        raise UnsafeCheckpointError(f"model.name {config.name!r}: its weights cannot be loaded as plain weights "
                                    f"(weights_only=True refused them: {_refusal(exn)}). Checkpoints "
                                    "are untrusted input: convert it to safetensors in a sandbox if you trust it."
                                    ) from exn
    except (RuntimeError, OSError, EOFError) as exn:  # a cut or unreadable weight file in the folder
        raise ValueError(f"model.name {config.name!r}, model.pretrained {pretrained!r}: open_clip could not load "
                         f"the model's weights ({type(exn).__name__}: {exn})") from exn
    if local_file:
        state = read_state_dict(pretrained)
        if "logit_bias" in state and getattr(model, "logit_bias", None) is None:
            # a SigLIP-objective model (modules.pretraining.objectives): its learned bias comes with its weights
            model.logit_bias = torch.nn.Parameter(torch.zeros_like(state["logit_bias"]).reshape(1))
        state = match_scalar_shapes(state, model)
        expected = model.state_dict()
        mismatched = [f"{k} {tuple(v.shape)} (model: {tuple(expected[k].shape)})" for k, v in state.items()
                      if k in expected and v.shape != expected[k].shape]
        if mismatched:
            raise ValueError(f"model.pretrained: {pretrained} does not fit {config.name}: {len(mismatched)} tensors "
                             f"have other shapes, first {mismatched[0]}")
        missing, unexpected = model.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise ValueError(
                f"model.pretrained: {pretrained} does not match {config.name}: "
                f"missing {sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]}"
            )
    if config.shrink is not None:
        shrink_and_perturb(model, _random_twin(name, config.perturb_seed), config.shrink, config.perturb)
    if config.batchnorm_momentum is not None:
        for module in model.modules():
            if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                module.momentum = config.batchnorm_momentum
    cfg = get_model_preprocess_cfg(model)
    size = cfg["size"] if isinstance(cfg["size"], int) else cfg["size"][0]
    spec = InputSpec(image_size=size, mean=tuple(cfg["mean"]), std=tuple(cfg["std"]),
                     tokenizer=open_clip.get_tokenizer(config.name if config.name.startswith("local-dir:") else name))
    return model, spec
