"""Our retrieval recall@k against clip_benchmark's `zeroshot_retrieval` on the same exported model and set.

    pip install --no-deps --target /tmp/clip_benchmark clip_benchmark==1.6.2   # not a dependency of ours
    PYTHONPATH=/tmp/clip_benchmark python benchmarks/retrieval_vs_clip_benchmark.py exports/attack \\
        [--set data/embedded/retrieval]

Reads the set with clip_benchmark's own `build_wds_dataset` and the model's own open_clip transform for
theirs, with ours (`datamodules.retrieval.RetrievalSet`, `modules.core.retrieval_metrics.RetrievalRecall`)
for ours, in fp32 on the CPU, and prints both and their largest difference. clip_benchmark's
`text_retrieval_recall@k` is image→text (ours `i2t_r<k>`), its `image_retrieval_recall@k` text→image
(`t2i_r<k>`). They can differ only where scores tie (clip_benchmark's `topk` breaks ties arbitrarily, ours
against the query) or where the two image pipelines differ by rounding.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import open_clip
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repository's packages

from datamodules.eval_config import EvalSetConfig
from datamodules.retrieval import RetrievalSet
from modules.core.model_loading import ModelConfig, build_model
from modules.core.retrieval_metrics import RetrievalRecall


@torch.no_grad()
def ours(model_dir: str, set_dir: str) -> dict[str, float]:
    model, spec = build_model(ModelConfig(name=f"local-dir:{model_dir}"))
    model.eval()
    data = RetrievalSet(EvalSetConfig(directory=set_dir), spec, None)
    metric = RetrievalRecall()
    for batch in torch.utils.data.DataLoader(data, batch_size=250, collate_fn=data.collate):
        metric.update(model.encode_image(batch["image"]), batch["position"], model.encode_text(batch["text"]),
                      batch["text_position"])
    return {name: value.item() for name, value in metric.compute().items()}


def theirs(model_dir: str, set_dir: str) -> dict[str, float]:
    from clip_benchmark.datasets.builder import build_wds_dataset
    from clip_benchmark.metrics import zeroshot_retrieval

    model, _, transform = open_clip.create_model_and_transforms(f"local-dir:{model_dir}")
    model.eval()
    dataset = build_wds_dataset("wds/embedded_retrieval", transform=transform, split="test", data_dir=set_dir)
    loader = torch.utils.data.DataLoader(dataset.batched(250), batch_size=None)  # as clip_benchmark's cli reads wds
    metrics = zeroshot_retrieval.evaluate(model, loader, open_clip.get_tokenizer(f"local-dir:{model_dir}"), "cpu",
                                          amp=False, recall_k_list=[1, 5, 10])
    return {f"{'i2t' if name.startswith('text') else 't2i'}_r{name.rsplit('@', 1)[1]}": value
            for name, value in metrics.items()}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model_dir", help="an exported open_clip folder (python -m lightning_app.export RUN --out DIR)")
    parser.add_argument("--set", default="data/embedded/retrieval", help="a clip_benchmark retrieval set")
    args = parser.parse_args(argv)
    torch.set_num_threads(2)
    a, b = ours(args.model_dir, args.set), theirs(args.model_dir, args.set)
    print(f"{'metric':8} {'ours':>8} {'clip_benchmark':>15}")
    for name in sorted(b):
        print(f"{name:8} {a[name]:8.4f} {b[name]:15.4f}")
    print(f"largest difference: {max(abs(a[name] - b[name]) for name in b):.6f}")


if __name__ == "__main__":
    main()
