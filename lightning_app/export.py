"""Export a run's model to an open_clip `local-dir` folder:

    python -m lightning_app.export runs/demo/cleanclip --out exports/cleanclip

writes `open_clip_config.json` (model_cfg + preprocess_cfg) and `open_clip_model.safetensors`, which
`open_clip.create_model_and_transforms("local-dir:exports/cleanclip")` loads, and so does
clip_benchmark (`--model local-dir:exports/cleanclip`). The model is read from the run's
`config.yaml` and `checkpoints/last.ckpt` (or `--checkpoint`), without unpickling arbitrary objects.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Optional

import open_clip
from open_clip.model import get_model_preprocess_cfg
from safetensors.torch import save_file

from datamodules.run_dir import RunDir
from modules.core.model_loading import ModelConfig, build_model


def _model_cfg(name: str) -> dict:
    if name.endswith(".json"):
        return json.loads(Path(name).read_text())
    cfg = open_clip.get_model_config(name)
    if cfg is None:
        raise ValueError(f"no open_clip model config for {name!r}")
    return cfg


def export_run(run_dir: str | Path, out_dir: str | Path, checkpoint: Optional[str | Path] = None) -> Path:
    run_dir, out_dir = Path(run_dir), Path(out_dir)
    run = RunDir(run_dir)
    checkpoint = Path(checkpoint) if checkpoint is not None else run.checkpoint
    name = run.model_name()
    model, _ = build_model(ModelConfig(name=name, pretrained=str(checkpoint)))
    out_dir.mkdir(parents=True, exist_ok=True)
    model_cfg = dict(_model_cfg(name))
    if getattr(model, "logit_bias", None) is not None:  # a SigLIP-objective model: open_clip builds the bias from this
        model_cfg["init_logit_bias"] = float(model.logit_bias.detach().reshape(-1)[0])
    config = {"model_cfg": model_cfg, "preprocess_cfg": get_model_preprocess_cfg(model)}
    (out_dir / "open_clip_config.json").write_text(json.dumps(config, indent=2))
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(out_dir / "open_clip_model.safetensors"))
    return out_dir


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Export a run's model to an open_clip local-dir folder.")
    parser.add_argument("run_dir", help="run directory (holds config.yaml and checkpoints/)")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--checkpoint", default=None, help="checkpoint to export (default: checkpoints/last.ckpt)")
    args = parser.parse_args(argv)
    out = export_run(args.run_dir, args.out, args.checkpoint)
    print(f"exported to {out}; load with open_clip.create_model_and_transforms('local-dir:{out}')")


if __name__ == "__main__":
    main()
