"""Linear probe of a run's image features (`modules.core.linear_probe`, clip_benchmark's protocol).

At the end of a fit, opt-in (it trains ~20 small probes):
    python main.py fit --config configs/embedded/badnet.yaml --linear_probe.train.directory data/embedded/probe
    (or `linear_probe: {train: {directory: …, split: train}, test: {directory: …}}` in a config)
its accuracy goes into summary.json (`linear_probe`). On a finished run, by hand:
    python -m lightning_app.linear_probe runs/demo/attack [--train data/embedded/probe --test data/embedded/eval]
prints it and writes RUN/linear_probe.json (summary.json stays the fit's own record).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Optional

import torch
from lightning.pytorch import Callback

from datamodules.eval_config import EvalSetConfig
from datamodules.zeroshot import ZeroShotSet
from modules.core.base import eval_mode
from modules.core.linear_probe import LinearProbeConfig, image_features, linear_probe


def probe_model(encode_image, spec, config: LinearProbeConfig, device: torch.device | str = "cpu") -> dict:
    """Features of the train and test sets under `encode_image`, then the probe; with its seconds."""
    start = time.perf_counter()
    train = ZeroShotSet(config.train, spec, None)
    test = ZeroShotSet(config.test, spec, None)
    if train.classnames != test.classnames:
        raise ValueError(f"linear_probe: the train set {config.train.directory} and the test set "
                         f"{config.test.directory} have different classnames")
    train_x, train_y = image_features(encode_image, train, config.train.batch_size, device)
    test_x, test_y = image_features(encode_image, test, config.test.batch_size, device)
    result = linear_probe(train_x, train_y, test_x, test_y, config, classes=len(train.classnames))
    return {**result, "train_set": train.name, "test_set": test.name,
            "seconds": round(time.perf_counter() - start, 2)}


class LinearProbe(Callback):
    """Probes the trained model's image features at the end of training (`result`, for summary.json).

    Rank zero extracts the features and fits; under ZeRO-3 every rank first gathers the weights (a
    collective), and the others wait at a barrier."""

    def __init__(self, config: LinearProbeConfig):
        self.config = config
        self.result: Optional[dict] = None

    def on_train_end(self, trainer, pl_module) -> None:
        with pl_module.gathered_weights(), eval_mode(pl_module):
            if trainer.is_global_zero:
                self.result = probe_model(pl_module.encode_image, pl_module.input_spec(), self.config, pl_module.device)
        trainer.strategy.barrier("linear_probe")


def main(argv: list[str] | None = None) -> dict:
    from lightning_app.per_class import load_run_model

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--train", default="data/embedded/probe", help="classification set the probe is fit on")
    parser.add_argument("--train-split", default="train")
    parser.add_argument("--test", default="data/embedded/eval", help="classification set the probe is scored on")
    parser.add_argument("--test-split", default="test")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    model, spec = load_run_model(args.run_dir)
    config = LinearProbeConfig(train=EvalSetConfig(directory=args.train, split=args.train_split),
                               test=EvalSetConfig(directory=args.test, split=args.test_split))
    result = probe_model(lambda images: model.encode_image(images, normalize=True), spec, config)
    (args.run_dir / "linear_probe.json").write_text(json.dumps(result, indent=1, sort_keys=True))
    print(json.dumps(result, indent=1, sort_keys=True))
    return result


if __name__ == "__main__":
    main()
