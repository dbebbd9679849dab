"""Writes a real DeepSpeed ZeRO checkpoint of the tiny CLIP model, on CPU, for the conversion tests.

    python tests/helpers/make_zero_checkpoint.py STAGE OUT_DIR

The model is wrapped as Lightning wraps it (`_forward_module.model.*`), trained one step, saved with
tag "checkpoint" as Lightning's DeepSpeedStrategy does, and its consolidated fp32 weights are written
beside it (`expected.safetensors`) to compare the conversion against.
"""

import os
import sys
from pathlib import Path

import torch

os.environ.setdefault("DS_ACCELERATOR", "cpu")
os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=os.environ.get("MASTER_PORT", "29561"), RANK="0",
                  WORLD_SIZE="1", LOCAL_RANK="0")

import deepspeed  # noqa: E402
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from modules.core.model_loading import ModelConfig, build_model  # noqa: E402
from modules.core.scalar_parameters import store_scalars_as_vectors  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

REPO = Path(__file__).resolve().parents[2]  # noqa: E305


class Module(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.model, _ = build_model(ModelConfig(name=str(REPO / "configs/models/tiny-rn32.json")))
        store_scalars_as_vectors(self.model)  # as CLIPModule.setup does under DeepSpeed

    def forward(self, images, tokens):
        image = self.model.encode_image(images, normalize=True)
        text = self.model.encode_text(tokens, normalize=True)
        return -(image * text).sum()


class Wrapper(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self._forward_module = Module()

    def forward(self, *args):
        return self._forward_module(*args)


def main(stage: int, out: Path) -> None:
    torch.manual_seed(0)
    model = Wrapper()
    config = {"train_micro_batch_size_per_gpu": 4, "zero_optimization": {"stage": stage},
              "optimizer": {"type": "AdamW", "params": {"lr": 1e-2, "torch_adam": True}}}
    engine, *_ = deepspeed.initialize(model=model, model_parameters=model.parameters(), config=config)
    loss = engine(torch.randn(4, 3, 32, 32), torch.randint(1, 100, (4, 16)))
    engine.backward(loss)
    engine.step()
    engine.save_checkpoint(str(out / "last.ckpt"), tag="checkpoint", client_state={"global_step": 1})
    if stage == 3:
        expected = engine._zero3_consolidated_16bit_state_dict()
    else:
        expected = engine.module.state_dict()
    save_file({k: v.detach().contiguous() for k, v in expected.items()},
              str(out / "expected.safetensors"))


if __name__ == "__main__":
    main(int(sys.argv[1]), Path(sys.argv[2]))
