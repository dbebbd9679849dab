"""An exported model loads through open_clip alone (fresh process, no import of this project) and
gives the zero-shot CA our metric reported, within 0.5 points."""

import json
import subprocess
import sys
import textwrap

import torch
from torch.utils.data import DataLoader

from datamodules.eval_config import EvalSetConfig
from datamodules.zeroshot import ZeroShotSet
from lightning_app.cli import BackdoorCLI
from lightning_app.export import export_run
from modules.core.evaluation import zeroshot_classifier
from modules.core.model_loading import ModelConfig, build_model

OPEN_CLIP_ONLY_EVAL = textwrap.dedent("""
    import io, json, sys, tarfile
    import open_clip, torch
    from PIL import Image
    export_dir, eval_dir = sys.argv[1], sys.argv[2]
    assert not any(m.split(".")[0] in ("modules", "datamodules", "lightning_app") for m in sys.modules)
    model, _, preprocess = open_clip.create_model_and_transforms("local-dir:" + export_dir)
    tokenizer = open_clip.get_tokenizer("local-dir:" + export_dir)
    model.eval()
    classnames = open(eval_dir + "/classnames.txt").read().split()
    templates = [t.replace("{c}", "{}") for t in open(eval_dir + "/zeroshot_classification_templates.txt").read().splitlines() if t]
    with torch.no_grad():
        weights = []
        for name in classnames:
            emb = model.encode_text(tokenizer([t.format(name) for t in templates]), normalize=True).mean(0)
            weights.append(emb / emb.norm())
        weights = torch.stack(weights, 1)
        images, labels = {}, {}
        nshards = int(open(eval_dir + "/test/nshards.txt").read())
        for shard in range(nshards):
            with tarfile.open(f"{eval_dir}/test/{shard}.tar") as tar:
                for m in tar:
                    key, ext = m.name.split(".", 1)
                    data = tar.extractfile(m).read()
                    if ext == "cls":
                        labels[key] = int(data)
                    else:
                        images[key] = preprocess(Image.open(io.BytesIO(data)).convert("RGB"))
        keys = sorted(images)
        x = torch.stack([images[k] for k in keys])
        y = torch.tensor([labels[k] for k in keys])
        pred = (model.encode_image(x, normalize=True) @ weights).argmax(1)
    print(json.dumps({"ca_top1": (pred == y).float().mean().item(), "pred": dict(zip(keys, pred.tolist()))}))
""")


def test_exported_model_gives_our_ca_through_open_clip_alone(small_benchmark, tmp_path):
    run_dir = tmp_path / "run"
    BackdoorCLI(args=[
        "fit", "--config", "configs/embedded/badnet.yaml", "--trainer.default_root_dir", str(run_dir),
        "--trainer.max_epochs", "2", "--trainer.enable_progress_bar", "false",
        "--data.init_args.embedded", "null", "--data.init_args.train_shards", small_benchmark.pretrain_urls,
        "--data.init_args.eval.directory", small_benchmark.eval_dir, "--data.init_args.batch_size", "32",
        "--model.init_args.optimizer.warmup_steps", "5",
    ])
    ours = json.loads((run_dir / "summary.json").read_text())["ca_top1"]
    export_dir = export_run(run_dir, tmp_path / "export")
    assert (export_dir / "open_clip_model.safetensors").exists()
    out = subprocess.run([sys.executable, "-c", OPEN_CLIP_ONLY_EVAL, str(export_dir), small_benchmark.eval_dir],
                         capture_output=True, text=True, cwd=tmp_path, check=True)
    theirs = json.loads(out.stdout.strip().splitlines()[-1])
    assert abs(theirs["ca_top1"] - ours) <= 0.005, (ours, theirs["ca_top1"])
    # CA alone could agree by chance for a barely trained model: the per-image predictions must agree too
    ours_pred = _our_predictions(run_dir, small_benchmark.eval_dir)
    agree = sum(ours_pred[k] == p for k, p in theirs["pred"].items()) / len(ours_pred)
    assert len(set(ours_pred.values())) > 1 and agree >= 0.99, agree


def _our_predictions(run_dir, eval_dir):
    model, spec = build_model(ModelConfig("configs/models/tiny-rn32.json",
                                          pretrained=str(run_dir / "checkpoints" / "last.ckpt")))
    model.eval()
    eval_set = ZeroShotSet(EvalSetConfig(directory=eval_dir), spec, trigger=None)
    with torch.no_grad():
        weights = zeroshot_classifier(lambda t: model.encode_text(t, normalize=True), spec.tokenizer,
                                      eval_set.classnames, eval_set.templates, torch.device("cpu"))
        preds = {}
        for batch in DataLoader(eval_set, batch_size=100):
            logits = model.encode_image(batch["image"], normalize=True) @ weights
            preds.update(zip(batch["key"], logits.argmax(1).tolist()))
    return preds
